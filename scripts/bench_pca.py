#!/usr/bin/env python
"""PCA at the variance users ask for, on real images: streamclust against in-memory scikit-learn.

    python scripts/bench_pca.py [--cases cifar,faces64] [--fraction 0.99] [--n-faces 40000]
                                [--sk-faces 4000,8000] [--workdir DIR] [--out pca.json]

The data are **real** (``$STREAMCLUST_DATA``, default ``../shared/data``):

``cifar``
    CIFAR-10, all 60,000 photos, ingested by ``streamclust ingest --size 32`` (3,072 features).
``faces64``
    "real-like 64x64": the first ``--n-faces`` CIFAR-10 photos upscaled to 64x64 RGB
    (bicubic; 12,288 features), written as ``streamclust ingest`` writes a store.  Real
    photo statistics at the founding workload's shape.

Routes, each in its own child process, one after the other (the CPUs are left idle between):

(a) scikit-learn, the notebooks' route: ``images[:]`` as float64, then
    ``sklearn.decomposition.PCA(fraction)`` (its ``auto`` solver: the full SVD here).  For
    ``faces64`` the in-memory route needs ~4 GB per 10k images and its SVD time grows as
    ``4 n d m + 8 m^3`` (``m = min(n, d)``); it runs on the ``--sk-faces`` subsets and is *extrapolated* to
    ``--n-faces`` by that law (fitted on the largest subset), and the table says so.
(b) streamclust: ``StreamingPCA(fraction)`` (``method="auto"``) over the zarr store.

Peak RSS is each child's kernel high-water mark (``ru_maxrss`` via ``os.wait4``).  Quality:
the number of components and the largest difference of ``explained_variance_ratio_``
between the routes (on the same images: for ``faces64``, streamclust is also fitted on the
largest scikit-learn subset for that comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data"))
MiB = 2**20


# ---------------------------------------------------------------------------- data
def cifar_run(workdir: Path) -> Path:
    """CIFAR-10 ingested at 32x32 by streamclust's own ingest (not timed)."""
    run = workdir / "cifar"
    if not (run / ".streamclust" / "ingest.done").exists():
        subprocess.run([sys.executable, "-m", "streamclust", "ingest", str(DATA / "cifar10.zip"), str(run),
                        "--size", "32", "--quiet"], check=True, cwd=ROOT)
    return run


def faces64_store(workdir: Path, n: int, kind: str = "mosaic") -> Path:
    """``n`` real-photo 64x64 RGB images made from CIFAR-10, in a store like ingest's.

    ``"mosaic"``: each image is 2x2 CIFAR photos at their own resolution (seeded random
    choice): real photo statistics, and a spectrum as spread as real 64x64 face crops'
    (about 2,000 components for 99 %).  ``"upscaled"``: one photo upscaled (bicubic):
    smoother, about 450 components for 99 %.
    """
    import zarr
    from PIL import Image

    from streamclust.ingest.writer import image_compressors

    path = workdir / f"faces64-{kind}-{n}.zarr"
    if path.exists():
        return path
    src = zarr.open_array(str(cifar_run(workdir) / "images.zarr"), mode="r")[:]
    rng = np.random.default_rng(0)
    chunk = 1024
    arr = zarr.create_array(store=str(path), shape=(n, 64, 64, 3), chunks=(chunk, 64, 64, 3), dtype="uint8",
                            compressors=image_compressors(), fill_value=0)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        if kind == "mosaic":
            idx = rng.integers(0, src.shape[0], size=(hi - lo, 4))
            q = src[idx]  # (b, 4, 32, 32, 3)
            top = np.concatenate([q[:, 0], q[:, 1]], axis=2)
            bottom = np.concatenate([q[:, 2], q[:, 3]], axis=2)
            arr[lo:hi] = np.concatenate([top, bottom], axis=1)
        else:
            small = src[rng.integers(0, src.shape[0], size=hi - lo)]
            arr[lo:hi] = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.BICUBIC)) for im in small])
    return path


# ------------------------------------------------------------------------ children
def child(route: str, store: str, n: int, fraction: float, out: str) -> None:
    import zarr

    arr = zarr.open_array(store, mode="r")
    t0 = time.perf_counter()
    if route == "sklearn":
        from sklearn.decomposition import PCA

        X = arr[:n].reshape(n, -1).astype(np.float64)
        t_load = time.perf_counter() - t0
        pca = PCA(fraction).fit(X)
        method = pca._fit_svd_solver
    else:
        from streamclust.models import StreamingPCA

        t_load = 0.0
        data = arr if n == arr.shape[0] else arr[:n].reshape(n, -1)  # NumPy input must be 2-D
        pca = StreamingPCA(fraction).fit(data)
        method = pca.method_
    seconds = time.perf_counter() - t0
    np.save(out + ".ratios.npy", np.asarray(pca.explained_variance_ratio_, dtype=np.float64))
    Path(out).write_text(json.dumps({"route": route, "n": n, "seconds": seconds, "load_s": t_load,
                                     "method": method, "n_components": int(pca.n_components_),
                                     "reached": float(np.sum(pca.explained_variance_ratio_))}))


def wait_idle(threshold: float = 25.0, max_wait: float = 60.0) -> float:
    import psutil

    t0 = time.perf_counter()
    busy = psutil.cpu_percent(interval=1.0)
    while busy >= threshold and time.perf_counter() - t0 < max_wait:
        busy = psutil.cpu_percent(interval=1.0)
    return busy


def run_child(route: str, store: Path, n: int, fraction: float, tmp: Path) -> dict:
    busy = wait_idle()
    out = tmp / f"{route}-{store.name}-{n}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", route, str(store), str(n), str(fraction), str(out)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{route} on {store} failed")
    res = json.loads(out.read_text())
    res.update(peak_rss_mib=usage.ru_maxrss / 1024, child_wall_s=time.perf_counter() - t,
               busy_before_pct=busy, ratios=np.load(str(out) + ".ratios.npy"))
    return res


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    k = min(a.size, b.size)
    return float(np.max(np.abs(a[:k] - b[:k])))


# ------------------------------------------------------------------------------ main
def bench_cifar(workdir: Path, fraction: float) -> dict:
    store = cifar_run(workdir) / "images.zarr"
    sk = run_child("sklearn", store, 60000, fraction, workdir)
    sc = run_child("streamclust", store, 60000, fraction, workdir)
    return {"case": "CIFAR-10, 60,000 x 32x32x3 (real)", "sklearn": sk, "streamclust": sc,
            "max_ratio_diff": _diff(sk["ratios"], sc["ratios"]), "extrapolated": False}


def bench_faces(workdir: Path, fraction: float, n: int, sk_sizes: list[int]) -> dict:
    big = faces64_store(workdir, n)
    sc = run_child("streamclust", big, n, fraction, workdir)
    subs = [run_child("sklearn", big, m, fraction, workdir) for m in sk_sizes]
    same = run_child("streamclust", big, sk_sizes[-1], fraction, workdir)
    d = 64 * 64 * 3
    m = sk_sizes[-1]
    law = lambda k: 4 * k * d * min(k, d) + 8 * min(k, d) ** 3  # noqa: E731 - the full SVD's cost, with vectors
    sk_time = subs[-1]["seconds"] * law(n) / law(m)
    sk_rss = subs[-1]["peak_rss_mib"] * n / m  # the float64 matrix and its copies grow with n
    return {"case": f"real-like faces: {n:,} CIFAR-10 photos upscaled to 64x64x3 (real photos)",
            "streamclust": sc, "sklearn_subsets": subs, "streamclust_on_largest_subset": same,
            "max_ratio_diff": _diff(subs[-1]["ratios"], same["ratios"]),
            "sklearn_extrapolated": {"seconds": sk_time, "peak_rss_mib": sk_rss, "from_n": m}, "extrapolated": True}


def report(results: list[dict], fraction: float) -> str:
    lines = [f"PCA({fraction}), real images; each route in its own process.\n",
             "| data | route | n | method | components | variance reached | s | peak RSS MiB |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        rows = [r["sklearn"]] if "sklearn" in r else r["sklearn_subsets"]
        rows = rows + [r["streamclust"]] + ([r["streamclust_on_largest_subset"]] if "streamclust_on_largest_subset" in r else [])
        for x in rows:
            lines.append(f"| {r['case']} | {x['route']} | {x['n']:,} | {x['method']} | {x['n_components']} | "
                         f"{x['reached']:.4f} | {x['seconds']:.1f} | {x['peak_rss_mib']:,.0f} |")
        sc = r["streamclust"]
        if r["extrapolated"]:
            ex = r["sklearn_extrapolated"]
            lines.append(f"| {r['case']} | sklearn, **extrapolated** from n={ex['from_n']:,} | {sc['n']:,} | full | - | - | "
                         f"{ex['seconds']:.0f} | {ex['peak_rss_mib']:,.0f} |")
            base_t, base_m = ex["seconds"], ex["peak_rss_mib"]
        else:
            base_t, base_m = r["sklearn"]["seconds"], r["sklearn"]["peak_rss_mib"]
        lines.append(f"\n{r['case']}: streamclust / scikit-learn = **{sc['seconds'] / base_t:.2f}x time, "
                     f"{sc['peak_rss_mib'] / base_m:.2f}x peak RSS**{' (against the extrapolation)' if r['extrapolated'] else ''}; "
                     f"largest |explained_variance_ratio_ difference| on the same images {r['max_ratio_diff']:.2e}\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1], argv[2], int(argv[3]), float(argv[4]), argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="cifar,faces64")
    ap.add_argument("--fraction", type=float, default=0.99)
    ap.add_argument("--n-faces", type=int, default=40000)
    ap.add_argument("--sk-faces", default="4000,8000")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not (DATA / "cifar10.zip").exists():
        print(f"skipped: {DATA / 'cifar10.zip'} not found (set STREAMCLUST_DATA)")
        return 0
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-pca-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for case in args.cases.split(","):
        if case == "cifar":
            results.append(bench_cifar(workdir, args.fraction))
        elif case == "faces64":
            results.append(bench_faces(workdir, args.fraction, args.n_faces, [int(x) for x in args.sk_faces.split(",")]))
        print(report(results[-1:], args.fraction), flush=True)
    if args.out:
        for r in results:
            for v in r.values():
                for x in (v if isinstance(v, list) else [v]):
                    if isinstance(x, dict):
                        x.pop("ratios", None)
        Path(args.out).write_text(json.dumps(results, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
