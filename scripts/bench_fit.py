#!/usr/bin/env python
"""Benchmark ``streamclust fit`` against the naive in-memory route, in one script run.

    python scripts/bench_fit.py [--sizes 20000,40000] [--stream-only 160000] [--repeat 3]
                                [--workdir DIR] [--keep] [--out results.json]
    python scripts/bench_fit.py --data cifar|mnist [--repeat 3] ...   # real images, the whole set

``--data cifar`` (CIFAR-10, 60,000 32x32 RGB photos) or ``--data mnist`` (20,000 28x28
digits) runs the same workload on real images from ``$STREAMCLUST_DATA`` (default
``../shared/data``): step 1 is then ``streamclust ingest ZIP RUN --size 32|28`` (not
timed), and the size is the whole set (``--sizes`` and ``--stream-only`` are ignored).

What it does
------------
1. Generates (seeded, not timed) one run directory per size: ``images.zarr`` (uint8
   ``(N, 64, 64, 3)``, the chunking and codec of ``streamclust ingest``), ``manifest.csv``,
   ``config.json`` and the ingest completion marker, written directly (no JPEG round
   trip).  The images are synthetic "faces": an ellipse face with shading, hair, eyes,
   mouth and nose on a gradient background, drawn from 24 seeded *identities* (skin,
   hair and eye colours, face shape, feature placement) with per-image jitter of
   position, size, lighting, background and sensor noise.  Image ``i`` depends only on
   the seed and ``i``, so every smaller store is a prefix of the larger ones.
2. For each size runs, each in its own child process (``python bench_fit.py --child ...``),
   ``--repeat`` times, alternating (a) and (b):

   (a) the naive route: ``images[:]`` as one float64 ``(N, 12288)`` array, then
       ``sklearn.decomposition.PCA(128)``, ``KMeans(50)`` and
       ``GaussianMixture(20, covariance_type="diag")`` on the PCA features
       (``random_state=0`` everywhere, scikit-learn defaults otherwise);
   (b) streamclust: ``fit_run(RUN, FitConfig(pca_components=128, clusters=50,
       gmm_components=20, covariance="diag", seed=0))`` (PCA on the pixels, the
       ``features.zarr`` stage, k-means, GMM; default batch sizes and memory budget);
   (c) not timed: the reference for the quality figures -- ``KMeans(50)`` and
       ``GaussianMixture(20, "diag")`` fitted by scikit-learn on streamclust's own
       ``features.zarr``, so that inertia and log-likelihood are compared on the same
       features.

   The sizes in ``--stream-only`` run (b) only: the naive route needs
   ``N * 12288 * 8`` bytes for the float64 matrix plus a centred copy inside ``PCA``
   (~31 GiB at 160k), more than the machine has.

   Peak RSS is the kernel's high-water mark of each child (``ru_maxrss`` from
   ``os.wait4`` on that child, i.e. the OS accounting of ``getrusage(RUSAGE_CHILDREN)``
   per child).  Wall times are per stage, measured inside the child
   (``time.perf_counter``); "total" is the sum of the stages, imports excluded (the
   child's whole wall time, imports included, is reported as ``child_wall_s``).  Of the
   repeats, the table shows the run with the median total time and the largest peak
   RSS of all of them; the JSON keeps every run's figures.  (The timings are only as
   steady as the machine: on a shared 2-core box another process holding a core can
   double a route's time, hence the repeats; before each run the script waits up to
   ``--idle-wait`` seconds for the CPUs to be idle, and it reports how many cores other
   processes kept busy during each run.)

Quality figures: PCA explained variance (sum of ``explained_variance_ratio_``);
k-means inertia of streamclust's model vs full ``KMeans`` on the same features; GMM
average log-likelihood (``score``) of streamclust's model vs ``GaussianMixture`` on
the same features.  Prints markdown tables; ``--out`` writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
SIDE = 64
PCA_K, KM_K, GMM_K, COV = 128, 50, 20, "diag"
SEED = 0

# ------------------------------------------------------------------------------ images
_SKIN = np.array([[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [255, 205, 148], [234, 192, 134]], dtype=np.float32)
_HAIR = np.array([[20, 15, 10], [60, 40, 20], [120, 80, 40], [200, 170, 90],
                  [90, 30, 10], [150, 150, 150], [30, 30, 30]], dtype=np.float32)
N_IDENTITIES = 24


def _identities(seed: int) -> dict[str, np.ndarray]:
    """Fixed per-identity traits (colours, face shape, feature placement)."""
    rng = np.random.default_rng([seed, 1])
    m = N_IDENTITIES
    return {
        "skin": _SKIN[rng.integers(len(_SKIN), size=m)] * rng.uniform(0.85, 1.1, (m, 3)).astype(np.float32),
        "hair": _HAIR[rng.integers(len(_HAIR), size=m)].astype(np.float32),
        "eye": rng.uniform(0, 90, (m, 3)).astype(np.float32),
        "rx": rng.uniform(0.24, 0.34, m), "aspect": rng.uniform(1.15, 1.4, m),
        "hairline": rng.uniform(0.2, 0.5, m), "ex": rng.uniform(0.32, 0.45, m),
        "ey": rng.uniform(0.1, 0.25, m), "eye_r": rng.uniform(0.09, 0.14, m),
        "mouth_w": rng.uniform(0.25, 0.45, m), "mouth_y": rng.uniform(0.4, 0.55, m),
        "bg": rng.uniform(30, 225, (m, 2, 3)).astype(np.float32),
    }


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 1), 0 outside, smooth edge of relative width ``edge``."""
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / np.float32(edge), -30, 30)))


def _draw_block(rng: np.random.Generator, ids: dict, B: int) -> dict[str, np.ndarray]:
    """Per-image parameters of one block of ``B`` images (identity traits + jitter)."""
    f32 = np.float32
    who = rng.integers(N_IDENTITIES, size=B)

    def col(key):
        return ids[key][who]

    def jit(key, lo, hi):
        return (ids[key][who] * rng.uniform(lo, hi, B)).astype(f32)

    p = {"bg": col("bg") * rng.uniform(0.8, 1.2, (B, 2, 3)).astype(f32),
         "ang": rng.uniform(0, 2 * np.pi, B).astype(f32),
         "cx": (0.5 + rng.normal(0, 0.04, B)).astype(f32), "cy": (0.5 + rng.normal(0, 0.04, B)).astype(f32),
         "rx": jit("rx", 0.95, 1.05)}
    p["ry"] = p["rx"] * jit("aspect", 0.97, 1.03)
    p["light"] = rng.uniform(0.8, 1.15, B).astype(f32)
    p["side_light"] = rng.uniform(-1, 1, B).astype(f32)
    p["hairline"] = jit("hairline", 0.9, 1.1)
    p["ex"], p["ey"], p["eye_r"] = jit("ex", 0.95, 1.05), jit("ey", 0.9, 1.1), jit("eye_r", 0.9, 1.1)
    p["mouth_y"], p["mouth_w"] = jit("mouth_y", 0.95, 1.05), jit("mouth_w", 0.85, 1.15)
    p["lip"] = rng.uniform(0.6, 1.1, B).astype(f32)
    p["sigma"] = rng.uniform(2, 6, B).astype(f32)
    p["skin"], p["hair"], p["eye"] = col("skin"), col("hair"), col("eye")
    p["noise_seed"] = rng.integers(2**63, size=B)
    return p


def _render(p: dict[str, np.ndarray]) -> np.ndarray:
    """Draw the faces whose parameters are ``p`` (a slice of a block), ``(b, 64, 64, 3)`` uint8."""
    f32 = np.float32
    yy, xx = (a[None] for a in np.mgrid[0:SIDE, 0:SIDE].astype(f32) / SIDE)
    v = {k: (a[:, None, None] if a.ndim == 1 else a) for k, a in p.items()}  # broadcast over pixels
    c = p["bg"]
    t = np.clip(0.5 + (xx - 0.5) * np.cos(v["ang"]) + (yy - 0.5) * np.sin(v["ang"]), 0, 1)[..., None]
    img = c[:, None, None, 0] * (1 - t) + c[:, None, None, 1] * t
    cx, cy, rx, ry = v["cx"], v["cy"], v["rx"], v["ry"]
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    light = v["light"][..., None]
    shade = (1.0 - 0.3 * d**2 + 0.15 * (xx - cx) * v["side_light"])[..., None]
    face = _soft(d, 0.015)[..., None]
    img = img * (1 - face) + np.clip(p["skin"][:, None, None] * light * shade, 0, 255) * face
    dh = np.sqrt(((xx - cx) / (rx * 1.08)) ** 2 + ((yy - cy + 0.1 * ry) / (ry * 1.02)) ** 2)
    top = cy - ry * v["hairline"]
    hair = (_soft(dh, 0.015) * _soft((yy - top) / 0.02 + 1, 1.0))[..., None]
    img = img * (1 - hair) + p["hair"][:, None, None] * light * hair
    ex, ey, eye_r = rx * v["ex"], cy - ry * v["ey"], rx * v["eye_r"]
    for sx in (-1, 1):
        de = np.sqrt(((xx - cx - sx * ex) / eye_r) ** 2 + ((yy - ey) / (eye_r * 0.7)) ** 2)
        m = _soft(de, 0.15)[..., None]
        img = img * (1 - m) + p["eye"][:, None, None] * m
    my = cy + ry * v["mouth_y"]
    dm = np.sqrt(((xx - cx) / (rx * v["mouth_w"])) ** 2 + ((yy - my) / (ry * 0.06)) ** 2)
    m = _soft(dm, 0.2)[..., None]
    img = img * (1 - m) + np.array([150, 40, 50], f32) * v["lip"][..., None] * m
    dn = np.sqrt(((xx - cx) / (rx * 0.08)) ** 2 + ((yy - cy - ry * 0.15) / (ry * 0.15)) ** 2)
    img *= 1 - 0.15 * _soft(dn, 0.3)[..., None]
    noise = np.random.default_rng(p["noise_seed"][0]).standard_normal(img.shape, dtype=f32)
    img += noise * v["sigma"][..., None]
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def face_batch(start: int, n: int, seed: int = SEED) -> np.ndarray:
    """Images ``start .. start + n`` of the seeded face collection, ``(n, 64, 64, 3)`` uint8.

    Depends only on ``seed`` and the indices: the parameters come from one generator per
    1024-image block, and each 64-image tile is rendered (noise included) on its own.
    """
    ids = _identities(seed)
    out = np.empty((n, SIDE, SIDE, 3), np.uint8)
    block, tile = 1024, 64
    for b0 in range(start - start % block, start + n, block):
        p = _draw_block(np.random.default_rng([seed, 2, b0 // block]), ids, block)
        for t0 in range(max(start, b0) - (max(start, b0) - b0) % tile, min(start + n, b0 + block), tile):
            imgs = _render({k: a[t0 - b0 : t0 - b0 + tile] for k, a in p.items()})
            lo, hi = max(start, t0), min(start + n, t0 + tile)
            out[lo - start : hi - start] = imgs[lo - t0 : hi - t0]
    return out


def make_run(run: Path, n: int, seed: int = SEED, prefix_of: Path | None = None) -> float:
    """A run directory holding ``n`` faces, as ``streamclust ingest`` would leave it.

    With ``prefix_of`` (a larger run directory made by this function with the same
    seed), the images are copied from its first ``n`` rows instead of drawn again
    (the same pixels: image ``i`` depends only on the seed and ``i``).
    """
    import zarr

    from streamclust._atomic import write_json
    from streamclust.config import IngestConfig
    from streamclust.ingest.manifest import COLUMNS, format_rows, header
    from streamclust.ingest.writer import IMAGE_CODEC, image_compressors
    from streamclust.store import RunLayout

    t0 = time.perf_counter()
    if run.exists():
        shutil.rmtree(run)
    layout = RunLayout.of(run)
    layout.state_dir.mkdir(parents=True)
    cfg = IngestConfig(source=f"synthetic-faces:seed={seed}:n={n}", size=SIDE, workers=1)
    chunk = cfg.resolved_chunk_size
    src = None if prefix_of is None else zarr.open_array(str(RunLayout.of(prefix_of).images), mode="r")
    arr = zarr.create_array(store=str(layout.images), shape=(n, SIDE, SIDE, 3), chunks=(chunk, SIDE, SIDE, 3),
                            dtype="uint8", compressors=image_compressors(), fill_value=0,
                            dimension_names=("image", "y", "x", "channel"))
    with open(layout.manifest, "wb") as fh:
        fh.write(header())
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            imgs = face_batch(lo, hi - lo, seed) if src is None else src[lo:hi]
            arr[lo:hi] = imgs
            rows = [{"position": i, "index": i, "member": f"faces/{i:07d}.png", "status": "ok",
                     "width": SIDE, "height": SIDE, "format": "PNG", "mode": "RGB", "bytes": SIDE * SIDE * 3,
                     "sha256": hashlib.sha256(imgs[i - lo].tobytes()).hexdigest()} for i in range(lo, hi)]
            fh.write(format_rows(rows))
    identity = cfg.identity()
    identity["source"] = {"path": cfg.source}
    write_json(layout.config, {"ingest": {**identity, "workers": cfg.workers}})
    write_json(layout.ingest_summary, {"members": n, "ok": n, "duplicates": 0, "skipped": {},
                                       "seconds": 0.0, "resumed_from": 0, "codec": IMAGE_CODEC,
                                       "columns": list(COLUMNS)})
    write_json(layout.marker("ingest"), {"ok": n, "members": n})
    return time.perf_counter() - t0


#: real sets: zip in $STREAMCLUST_DATA, side the images are ingested at, images in the set
REAL = {"cifar": ("cifar10.zip", 32, 60000), "mnist": ("mnist.zip", 28, 20000)}


def make_real_run(run: Path, data: str) -> float:
    """A run directory of a real set, made by ``streamclust ingest`` (its time is returned)."""
    name, side, _ = REAL[data]
    src = Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data")) / name
    if not src.exists():
        raise SystemExit(f"{src} is missing: set STREAMCLUST_DATA to the folder of the real image sets")
    t0 = time.perf_counter()
    if run.exists():
        shutil.rmtree(run)
    subprocess.run([sys.executable, "-m", "streamclust", "ingest", str(src), str(run), "--size", str(side),
                    "--quiet"], check=True, cwd=ROOT)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ children
def child_naive(run: Path) -> dict:
    import zarr
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    sec = {}
    t = time.perf_counter()
    images = zarr.open_array(str(run / "images.zarr"), mode="r")
    X = images[:].reshape(images.shape[0], -1).astype(np.float64)
    sec["load"] = time.perf_counter() - t
    t = time.perf_counter()
    pca = PCA(n_components=PCA_K, random_state=SEED)
    F = pca.fit_transform(X)
    sec["pca"] = time.perf_counter() - t
    del X
    t = time.perf_counter()
    km = KMeans(n_clusters=KM_K, random_state=SEED).fit(F)
    sec["kmeans"] = time.perf_counter() - t
    t = time.perf_counter()
    gm = GaussianMixture(n_components=GMM_K, covariance_type=COV, random_state=SEED).fit(F)
    sec["gmm"] = time.perf_counter() - t
    return {"seconds": sec, "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
            "kmeans_inertia": float(km.inertia_), "gmm_avg_loglik": float(gm.score(F)),
            "kmeans_n_iter": int(km.n_iter_), "gmm_n_iter": int(gm.n_iter_)}


def child_streamclust(run: Path) -> dict:
    from streamclust.config import FitConfig
    from streamclust.pipeline.fit import fit_run

    # start from an ingested-only run directory (not timed)
    for stale in (run / "model", run / "features.zarr"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in (run / ".streamclust").glob("fit*"):
        stale.unlink()
    (run / "fit_summary.json").unlink(missing_ok=True)
    t = time.perf_counter()
    summary = fit_run(run, FitConfig(pca_components=PCA_K, clusters=KM_K, gmm_components=GMM_K,
                                     covariance=COV, seed=SEED), overwrite=True, progress=False)
    total = time.perf_counter() - t
    sec = dict(summary.seconds)
    sec["other"] = total - sum(sec.values())
    return {"seconds": sec, "results": summary.results}


def child_reference(run: Path) -> dict:
    """Quality figures of streamclust's models, and scikit-learn's on the same features."""
    import zarr
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from streamclust.models.io import load_model

    F = zarr.open_array(str(run / "features.zarr"), mode="r")[:].astype(np.float64)
    pca = load_model(run / "model" / "pca.npz")
    km = load_model(run / "model" / "kmeans.npz")
    gmm = load_model(run / "model" / "gmm.npz")
    ref_km = KMeans(n_clusters=KM_K, random_state=SEED).fit(F)
    ref_gm = GaussianMixture(n_components=GMM_K, covariance_type=COV, random_state=SEED).fit(F)
    return {"pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
            "kmeans_inertia": float(km.inertia_), "kmeans_inertia_rescored": float(-km.score(F)),
            "ref_kmeans_inertia": float(ref_km.inertia_),
            "gmm_avg_loglik": float(gmm.score(F)), "ref_gmm_avg_loglik": float(ref_gm.score(F)),
            "kmeans_n_iter": int(km.n_iter_), "gmm_n_iter": int(gmm.n_iter_),
            "ref_kmeans_n_iter": int(ref_km.n_iter_), "ref_gmm_n_iter": int(ref_gm.n_iter_)}


CHILDREN = {"naive": child_naive, "streamclust": child_streamclust, "reference": child_reference}


IDLE = {"threshold": 25.0, "max_wait": 30.0}


def wait_idle() -> dict:
    """Wait (at most ``IDLE['max_wait']`` s) for the CPUs to be under ``IDLE['threshold']`` % busy."""
    import psutil

    t0 = time.perf_counter()
    busy = psutil.cpu_percent(interval=1.0)
    while busy >= IDLE["threshold"] and time.perf_counter() - t0 < IDLE["max_wait"]:
        busy = psutil.cpu_percent(interval=1.0)
    return {"busy_before_pct": busy, "waited_s": round(time.perf_counter() - t0, 1),
            "idle_before": bool(busy < IDLE["threshold"])}


def run_child(kind: str, run: Path, tmp: Path) -> dict:
    """Run one route in a fresh interpreter; its figures plus the OS's peak RSS of that child.

    Also records how many cores *other* processes kept busy while it ran (the machine's
    busy cores, from ``psutil.cpu_times``, less the child's own CPU time per second).
    """
    import psutil

    idle = wait_idle() if kind != "reference" else {}
    out = tmp / f"{kind}-{run.name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(run), str(out)]
    cpu0 = psutil.cpu_times()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    cpu1 = psutil.cpu_times()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child on {run} failed with exit code {proc.returncode}")
    res = json.loads(out.read_text())
    res.update(idle)
    res["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    res["child_wall_s"] = wall
    res["child_cpu_s"] = usage.ru_utime + usage.ru_stime
    idle_s = (cpu1.idle + getattr(cpu1, "iowait", 0.0)) - (cpu0.idle + getattr(cpu0, "iowait", 0.0))
    res["other_busy_cores"] = round(max(0.0, psutil.cpu_count() - idle_s / wall - res["child_cpu_s"] / wall), 2)
    res["total_s"] = sum(res["seconds"].values()) if "seconds" in res else None
    return res


# ------------------------------------------------------------------------------ report
def _f(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def _mem_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return float("nan")


def _by_size(results: dict):
    return sorted(results["sizes"].items(), key=lambda kv: int(kv[0]))


def report(results: dict) -> str:
    data = results.get("data", "synthetic")
    lines = [f"Data: {'synthetic faces' if data == 'synthetic' else 'real images, ' + data} "
             f"({'x'.join(map(str, results['workload']['image']))} per image).", "","| images | route | load / PCA / features / k-means / GMM (s), median run | total (s): median "
             "(fastest) | peak RSS (MiB) | time vs naive: median (fastest) | RSS vs naive |",
             "|---|---|---|---|---|---|---|"]
    for n, r in _by_size(results):
        nv, sc = r.get("naive"), r["streamclust"]
        fast = lambda d: d.get("fastest_total_s", d["total_s"])  # noqa: E731
        if nv:
            s = nv["seconds"]
            lines.append(f"| {int(n):,} | naive | {_f(s['load'])} / {_f(s['pca'])} / - / {_f(s['kmeans'])} / "
                         f"{_f(s['gmm'])} | {_f(nv['total_s'])} ({_f(fast(nv))}) | {_f(nv['peak_rss_mib'], 0)} "
                         "| 1.00x | 100% |")
        s = sc["seconds"]
        tr = (f"{sc['total_s'] / nv['total_s']:.2f}x ({fast(sc) / fast(nv):.2f}x)" if nv else "naive not run")
        rr = f"{100 * sc['peak_rss_mib'] / nv['peak_rss_mib']:.1f}%" if nv else "-"
        lines.append(f"| {int(n):,} | streamclust | - / {_f(s.get('pca'))} / {_f(s.get('features'))} / "
                     f"{_f(s.get('kmeans'))} / {_f(s.get('gmm'))} | {_f(sc['total_s'])} ({_f(fast(sc))}) | "
                     f"{_f(sc['peak_rss_mib'], 0)} | {tr} | {rr} |")
    lines += ["", "| images | PCA explained variance: streamclust / naive (ratio) | k-means inertia: streamclust / "
              "sklearn KMeans, same features (diff) | GMM avg log-lik: streamclust / sklearn GM, same features "
              "(diff) |", "|---|---|---|---|"]
    for n, r in _by_size(results):
        q, nv = r.get("reference"), r.get("naive")
        if not q or not nv:
            continue
        ev = q["pca_explained_variance"] / nv["pca_explained_variance"]
        dk = q["kmeans_inertia"] / q["ref_kmeans_inertia"] - 1
        dg = (q["gmm_avg_loglik"] - q["ref_gmm_avg_loglik"]) / abs(q["ref_gmm_avg_loglik"])
        lines.append(f"| {int(n):,} | {q['pca_explained_variance']:.5f} / {nv['pca_explained_variance']:.5f} "
                     f"({ev:.4f}) | {q['kmeans_inertia']:.5g} / {q['ref_kmeans_inertia']:.5g} ({100 * dk:+.2f}%) | "
                     f"{q['gmm_avg_loglik']:.2f} / {q['ref_gmm_avg_loglik']:.2f} ({100 * dg:+.3f}%) |")
    pixels = int(np.prod(results["workload"]["image"]))
    for n, r in _by_size(results):
        if not r.get("naive"):
            need, have = 2 * int(n) * pixels * 8 / 2**30, _mem_gib()
            why = "it cannot fit" if need > have else "--stream-only"
            lines += ["", f"Naive route not run at {int(n):,} images ({why}): its float64 matrix and the "
                      f"centred copy PCA makes need {need:,.1f} GiB; the machine has {have:,.1f} GiB."]
    busy = "; ".join(f"{int(n):,} {route} " + ", ".join(f"{b:.2f}" for b in r[route]["all_other_busy_cores"])
                     for n, r in _by_size(results) for route in ("naive", "streamclust") if r.get(route))
    lines += ["", f"Cores kept busy by other processes during each run (of 2; 0 = undisturbed): {busy}."]
    rss = [r["streamclust"]["peak_rss_mib"] for _, r in _by_size(results)]
    lines += ["", f"streamclust peak RSS from {min(rss):,.0f} to {max(rss):,.0f} MiB over "
              f"{', '.join(f'{int(n):,}' for n, _ in _by_size(results))} images "
              f"(max/min {max(rss) / min(rss):.3f})."]
    return "\n".join(lines)


def _summarise(runs: list[dict]) -> dict:
    """The run with the median total time (its figures), the fastest total, the largest peak RSS."""
    order = sorted(range(len(runs)), key=lambda i: runs[i]["total_s"])
    median = dict(runs[order[(len(runs) - 1) // 2]])
    median["fastest_total_s"] = runs[order[0]]["total_s"]
    median["fastest_seconds"] = runs[order[0]]["seconds"]
    median["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    median["all_total_s"] = [r["total_s"] for r in runs]
    median["all_peak_rss_mib"] = [r["peak_rss_mib"] for r in runs]
    median["all_other_busy_cores"] = [r["other_busy_cores"] for r in runs]
    median["runs"] = runs
    return median


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20000,40000", help="sizes run by both routes")
    ap.add_argument("--stream-only", default="160000", help="sizes run by streamclust only ('' for none)")
    ap.add_argument("--workdir", default=None, help="where the run directories go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--idle-wait", type=float, default=30.0,
                    help="before each timed run, wait up to this many seconds for the CPUs to be < 25%% busy")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each route per size in --sizes (median time, largest RSS reported)")
    ap.add_argument("--data", choices=["synthetic", *REAL], default="synthetic",
                    help="synthetic faces (default), or a real set from $STREAMCLUST_DATA, whole")
    ap.add_argument("--report", default=None, metavar="JSON", help="only print the tables of a saved --out file")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "RUN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    if args.child:
        kind, run, out = args.child
        res = CHILDREN[kind](Path(run))
        Path(out).write_text(json.dumps(res))
        return 0

    IDLE["max_wait"] = args.idle_wait
    sizes = [int(s) for s in args.sizes.split(",") if s]
    stream_only = [int(s) for s in args.stream_only.split(",") if s]
    if args.data != "synthetic":
        sizes, stream_only = [REAL[args.data][2]], []
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_fit_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {  # sizes in decreasing order of running; reported in increasing order
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "data": args.data,
        "workload": {"image": [SIDE, SIDE, 3], "pca_components": PCA_K, "kmeans_clusters": KM_K,
                     "gmm_components": GMM_K, "covariance": COV, "seed": SEED, "identities": N_IDENTITIES},
        "sizes": {},
    }
    try:
        base = None  # the largest store: the smaller ones are its prefixes
        for n in sorted(set(sizes) | set(stream_only), reverse=True):
            run = work / (f"faces_{n}" if args.data == "synthetic" else args.data)
            gen = make_run(run, n, prefix_of=base) if args.data == "synthetic" else make_real_run(run, args.data)
            print(f"[{n:,} images] store made in {gen:.1f} s (not measured)", file=sys.stderr, flush=True)
            if args.data != "synthetic":
                import zarr

                results["workload"]["image"] = list(zarr.open_array(str(run / "images.zarr"), mode="r").shape[1:])
            entry: dict = {"generation_s": gen}
            routes = ("streamclust", "naive") if n in sizes else ("streamclust",)
            runs: dict = {route: [] for route in routes}
            for i in range(args.repeat if n in sizes else 1):
                for route in routes:  # alternating, so that a busy spell hits both routes
                    res = run_child(route, run, work)
                    runs[route].append(res)
                    print(f"[{n:,}] {route} run {i + 1}: {res['total_s']:.1f} s, {res['peak_rss_mib']:,.0f} MiB",
                          file=sys.stderr, flush=True)
            for route in routes:
                entry[route] = _summarise(runs[route])
            if n in sizes:
                entry["reference"] = run_child("reference", run, work)
            results["sizes"][str(n)] = entry
            if base is None:
                base = run
            elif not args.keep:
                shutil.rmtree(run)
        if base is not None and not args.keep:
            shutil.rmtree(base)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    table = report(results)
    print(table)
    results["table"] = table
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
