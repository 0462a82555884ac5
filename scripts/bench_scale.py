#!/usr/bin/env python
"""How streamclust's cost grows with N, the founding workload, and in-process vs dask.

    python scripts/bench_scale.py scale     [--sizes 10000,40000,160000,1000000] [--workdir DIR]
    python scripts/bench_scale.py founding  [--n 40000 | --data cifar] [--naive-budget 1200] [--workdir DIR]
    python scripts/bench_scale.py scheduler [--n 40000] [--workdir DIR]
    (each takes --out FILE.json; --keep leaves the generated data in --workdir)

``scale``
    Generates (seeded, not timed) a zip of N synthetic face-like 64x64 JPEGs (quality 95,
    the faces of ``bench_fit.py``: 24 identities with per-image jitter, image ``i``
    depending only on the seed and ``i``; the largest zip is made first and the smaller
    ones are its prefixes).  For each N, in child processes: ``streamclust ingest ZIP RUN
    --quiet`` (default workers = cores), then ``fit_run`` with PCA 128, k-means 50 and a
    20-component diagonal mixture (``bench_fit.py``'s settings).  Reported: ingest time,
    store size on disk, fit time per stage, and the driver's peak RSS per stage.  ``--only
    ingest`` (or ``fit``) runs one of the two.  The fitted
    exponent ``b`` of ``time = a * N**b`` (least squares on the logs) says how cost grows.

``founding``
    The founding workload on the N-image run of ``scale`` (made if missing): PCA to 99 %
    of the variance or 256 components, whichever is fewer, k-means with k = 100 and a GMM
    BIC sweep k = 10, 20, ..., 200 (diagonal covariances).  streamclust: ``fit_run``
    (PCA + features + k-means) then ``select_k_run`` (every k fed from one read of each
    chunk).  The naive route: the images as one float64 array, scikit-learn's
    ``PCA(256)`` (its "auto" solver picks the randomized one here) cut to 99 %, ``KMeans(100)``,
    then ``GaussianMixture(k, "diag")`` for each k, one after another.  ``--data cifar``
    runs it on real photos instead (CIFAR-10, all 60,000, from ``$STREAMCLUST_DATA``):
    PCA keeping 99 % (no cap: ``PCA(0.99)`` in the naive route), plus a 50-component
    diagonal mixture and 64 images sampled from it through the PCA.  When the naive
    sweep would pass ``--naive-budget`` seconds it stops, and the time of the ks it did
    not fit is extrapolated from a line through the fitted ones (time against k), and
    said so in the table.

``scheduler``
    The ``scale`` fit on the N-image run, in-process and with a ``LocalCluster`` of one
    single-threaded worker per core (``--scheduler local``): time ratio, and how far the
    two fits' models are apart.

Peak RSS is the OS's own accounting: the child's ``VmHWM`` (kernel high-water RSS) read
from ``/proc/self/status`` at each stage's end, after which the high-water mark is reset
(``echo 5 > /proc/self/clear_refs``), so each stage's figure is its own peak.  Ingest's
figure is the driver's (main process) ``ru_maxrss``; its decode workers are not counted.
Before each child the script waits for the CPUs to be idle (``bench_fit.wait_idle``) and
reports how many cores the whole machine kept busy while the child ran (ours included:
2.0 means saturated; a figure well above what the route itself uses means other work
disturbed the run).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fit  # noqa: E402  (face_batch, wait_idle)

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
SEED = 0
FIT = {"pca_components": 128, "clusters": 50, "gmm_components": 20, "covariance": "diag", "seed": SEED}
FOUNDING_KS = list(range(10, 201, 10))
FIT_STAGES = ["pca", "features", "kmeans", "gmm"]


# ------------------------------------------------------------------------------ data
def _encode_block(args: tuple[int, int]) -> list[bytes]:
    from PIL import Image

    lo, hi = args
    out = []
    for img in bench_fit.face_batch(lo, hi - lo, SEED):
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def _member(i: int) -> str:
    return f"faces/{i // 10000:03d}/face_{i:07d}.jpg"


def make_zip(path: Path, n: int) -> float:
    """A stored zip of ``n`` face JPEGs, encoded on every core; returns seconds."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    blocks = [(lo, min(lo + 1024, n)) for lo in range(0, n, 1024)]
    with mp.get_context("forkserver").Pool(os.cpu_count()) as pool, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for (lo, _), datas in zip(blocks, pool.imap(_encode_block, blocks, chunksize=4)):
            for i, data in enumerate(datas, lo):
                zf.writestr(_member(i), data)
    return time.perf_counter() - t0


def prefix_zip(big: Path, path: Path, n: int) -> float:
    """The first ``n`` members of ``big`` (same bytes)."""
    t0 = time.perf_counter()
    with zipfile.ZipFile(big) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist()[:n]:
            dst.writestr(info.filename, src.read(info))
    return time.perf_counter() - t0


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ memory
def vm_hwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


class StagePeaks:
    """Per-stage peak RSS of this process: watches the stages' completion markers."""

    def __init__(self, markers: dict[str, Path]):
        self.markers = dict(markers)
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        reset_hwm()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pending = list(self.markers)
        while pending and not self._stop.wait(0.02):
            while pending and self.markers[pending[0]].exists():
                self.peaks[pending.pop(0)] = vm_hwm_mib()
                reset_hwm()

    def stop(self, last: str | None = None) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        for stage, marker in self.markers.items():  # a stage that ended after the last poll
            if stage not in self.peaks and marker.exists():
                self.peaks[stage] = vm_hwm_mib()
                reset_hwm()
        if last is not None:
            self.peaks[last] = vm_hwm_mib()
        return self.peaks


# ------------------------------------------------------------------------------ children
def _clear_fit(run: Path) -> None:
    for stale in (run / "model", run / "features.zarr", run / "select_k"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in (run / ".streamclust").glob("fit*"):
        stale.unlink()
    for stale in (run / ".streamclust").glob("select*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    (run / "fit_summary.json").unlink(missing_ok=True)


def child_ingest(zip_path: str, run: str) -> dict:
    import streamclust.cli

    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    rc = streamclust.cli.main(["ingest", zip_path, run, "--quiet"])
    wall = time.perf_counter() - t
    assert rc == 0
    ingested = json.loads((Path(run) / "ingest_summary.json").read_text())
    # VmHWM, not ru_maxrss: on Linux the latter keeps the parent's RSS at fork (the parent
    # holds the big zip's member list), the former starts again at exec
    return {"seconds": {"ingest": wall}, "peak_rss_mib": {"ingest": vm_hwm_mib()},
            "ok": ingested["ok"], "store_bytes": du(Path(run) / "images.zarr")}


def _fit(run: Path, cfg: dict, client=None) -> dict:
    from streamclust.config import FitConfig
    from streamclust.pipeline.fit import fit_run
    from streamclust.store import RunLayout

    _clear_fit(run)
    layout = RunLayout.of(run)
    stages = [s for s in FIT_STAGES if not (s == "gmm" and not cfg.get("gmm_components"))]
    peaks = StagePeaks({s: layout.marker(f"fit-{s}") for s in stages})
    t = time.perf_counter()
    summary = fit_run(run, FitConfig(**cfg), overwrite=True, progress=False, client=client)
    total = time.perf_counter() - t
    sec = dict(summary.seconds)
    sec["other"] = total - sum(sec.values())
    return {"seconds": sec, "peak_rss_mib": peaks.stop(), "results": summary.results}


def child_fit(run: str) -> dict:
    return _fit(Path(run), FIT)


def child_founding_stream(run: str, data: str = "synthetic") -> dict:
    from streamclust.pipeline.select_k import select_k_run
    from streamclust.models.io import load_model

    real = data != "synthetic"  # the real-data workload also fits a 50-component mixture and samples 64
    out = _fit(Path(run), {"pca_components": 0.99, "clusters": 100, "gmm_components": 50 if real else 0,
                           "seed": SEED})
    pca = load_model(Path(run) / "model" / "pca.npz")
    reset_hwm()
    t = time.perf_counter()
    res = select_k_run(run, FOUNDING_KS, method="gmm", covariance="diag", seed=SEED, overwrite=True, progress=False)
    out["seconds"]["select_k"] = time.perf_counter() - t
    out["peak_rss_mib"]["select_k"] = vm_hwm_mib()
    if real:
        from streamclust.pipeline.sample import sample_run

        reset_hwm()
        t = time.perf_counter()
        sample_run(run, 64, seed=SEED)
        out["seconds"]["sample"] = time.perf_counter() - t
        out["peak_rss_mib"]["sample"] = vm_hwm_mib()
    out["pca_components"] = int(pca.n_components_)
    out["picked"] = res["picked"]
    out["bic"] = {int(r["k"]): float(r["bic"]) for r in res["rows"] if r.get("bic") not in (None, "")}
    out["n_fit_rows"], out["n_heldout_rows"] = res["n_fit_rows"], res["n_heldout_rows"]
    out["not_converged"] = list(res["not_converged"])
    return out


def child_founding_naive(run: str, budget: str, data: str = "synthetic") -> dict:
    import zarr
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    budget_s = float(budget)
    sec, peaks = {}, {}
    reset_hwm()
    t = time.perf_counter()
    images = zarr.open_array(str(Path(run) / "images.zarr"), mode="r")
    X = images[:].reshape(images.shape[0], -1).astype(np.float64)
    sec["load"] = time.perf_counter() - t
    peaks["load"] = vm_hwm_mib()
    reset_hwm()
    t = time.perf_counter()
    real = data != "synthetic"
    if real:  # the notebook's route: PCA keeping 99 % of the variance
        pca = PCA(n_components=0.99, random_state=SEED).fit(X)
        k99 = int(pca.n_components_)
        F = pca.transform(X)
    else:
        pca = PCA(n_components=256, random_state=SEED).fit(X)
        k99 = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.99) + 1)
        k99 = min(k99, 256)
        F = pca.transform(X)[:, :k99]
    sec["pca"] = time.perf_counter() - t
    peaks["pca"] = vm_hwm_mib()
    del X
    reset_hwm()
    t = time.perf_counter()
    KMeans(n_clusters=100, random_state=SEED).fit(F)
    sec["kmeans"] = time.perf_counter() - t
    peaks["kmeans"] = vm_hwm_mib()
    gm50 = None
    if real:
        reset_hwm()
        t = time.perf_counter()
        gm50 = GaussianMixture(n_components=50, covariance_type="diag", random_state=SEED).fit(F)
        sec["gmm"] = time.perf_counter() - t
        peaks["gmm"] = vm_hwm_mib()
    reset_hwm()
    per_k, bic = {}, {}
    t_sweep = time.perf_counter()
    for k in FOUNDING_KS:
        t = time.perf_counter()
        gm = GaussianMixture(n_components=k, covariance_type="diag", random_state=SEED).fit(F)
        per_k[k] = time.perf_counter() - t
        bic[k] = float(gm.bic(F))
        elapsed = time.perf_counter() - t_sweep
        nxt = [kk for kk in FOUNDING_KS if kk > k]
        if nxt and len(per_k) >= 2:
            slope, icpt = np.polyfit(list(per_k), list(per_k.values()), 1)
            if elapsed + icpt + slope * nxt[0] > budget_s:
                break
    sec["select_k"] = time.perf_counter() - t_sweep
    peaks["select_k"] = vm_hwm_mib()
    if gm50 is not None:
        reset_hwm()
        t = time.perf_counter()
        pixels = pca.inverse_transform(gm50.sample(64)[0])  # faces drawn from the mixture, through the PCA
        np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        sec["sample"] = time.perf_counter() - t
        peaks["sample"] = vm_hwm_mib()
    missing = [k for k in FOUNDING_KS if k not in per_k]
    extrapolated = 0.0
    if missing:
        slope, icpt = np.polyfit(list(per_k), list(per_k.values()), 1)
        extrapolated = float(sum(max(icpt + slope * k, 0.0) for k in missing))
    return {"seconds": sec, "peak_rss_mib": peaks, "pca_components": k99, "per_k_s": per_k, "bic": bic,
            "missing_ks": missing, "extrapolated_select_k_s": extrapolated,
            "picked": {"bic": min(bic, key=bic.get)}}


def child_ingest_sched(zip_path: str, run: str, mode: str) -> dict:
    """Ingest in-process (2 decode processes) or on a LocalCluster (2 workers, staged writes)."""
    from contextlib import nullcontext

    from streamclust.config import IngestConfig
    from streamclust.distributed import scheduler_client
    from streamclust.ingest import ingest

    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    ctx = scheduler_client("local") if mode == "local" else nullcontext(None)
    with ctx as client:
        start = time.perf_counter() - t
        t1 = time.perf_counter()
        ingest(IngestConfig(zip_path, size=64), run, progress=False, client=client)
        wall = time.perf_counter() - t1
    return {"seconds": {"ingest": wall, "cluster_start": start if mode == "local" else 0.0},
            "peak_rss_mib": {"ingest": vm_hwm_mib()}}


def child_sched(run: str, mode: str, save: str) -> dict:
    from contextlib import nullcontext

    from streamclust.distributed import scheduler_client

    t = time.perf_counter()
    ctx = scheduler_client("local") if mode == "local" else nullcontext(None)
    with ctx as client:
        start = time.perf_counter() - t
        out = _fit(Path(run), FIT, client=client)
    out["seconds"]["cluster_start"] = start if mode == "local" else 0.0
    shutil.rmtree(save, ignore_errors=True)
    shutil.copytree(Path(run) / "model", save)
    return out


CHILDREN = {"ingest": child_ingest, "fit": child_fit, "founding-stream": child_founding_stream,
            "founding-naive": child_founding_naive, "sched": child_sched, "ingest-sched": child_ingest_sched}


def run_child(kind: str, *args: str, tmp: Path) -> dict:
    """One child process; its figures, plus the busy cores of other processes meanwhile."""
    import psutil

    idle = bench_fit.wait_idle()
    out = tmp / f"child-{kind}-{os.getpid()}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(out), *map(str, args)]
    cpu0 = psutil.cpu_times()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    cpu1 = psutil.cpu_times()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {kind} {args} failed (exit {os.waitstatus_to_exitcode(status)})")
    res = json.loads(out.read_text())
    out.unlink()
    idle_s = (cpu1.idle + getattr(cpu1, "iowait", 0.0)) - (cpu0.idle + getattr(cpu0, "iowait", 0.0))
    res.update(idle, child_wall_s=wall, child_cpu_s=usage.ru_utime + usage.ru_stime,
               busy_cores=round(psutil.cpu_count() - idle_s / wall, 2))  # the whole machine, ours included
    print(f"  {kind} {' '.join(map(str, args))[-60:]}: {wall:.1f} s", file=sys.stderr, flush=True)
    return res


# ------------------------------------------------------------------------------ parts
def exponent(ns: list[int], ts: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def part_scale(sizes: list[int], work: Path, keep: bool, only: str | None = None) -> dict:
    sizes = sorted(sizes)
    big = work / f"faces-{sizes[-1]}.zip"
    rows = []
    gen = {}
    if not big.exists():
        gen[sizes[-1]] = make_zip(big, sizes[-1])
        print(f"generated {big} in {gen[sizes[-1]]:.0f} s", file=sys.stderr, flush=True)
    for n in sizes:
        zp = big if n == sizes[-1] else work / f"faces-{n}.zip"
        if not zp.exists():
            prefix_zip(big, zp, n)
        run = work / f"run-{n}"
        ing = run_child("ingest", zp, run, tmp=work) if only in (None, "ingest") else None
        fit = run_child("fit", run, tmp=work) if only in (None, "fit") else None
        rows.append({"n": n, "zip_bytes": zp.stat().st_size, "ingest": ing, "fit": fit})
        if not keep and n != 40000:
            shutil.rmtree(run)
            if zp != big:
                zp.unlink()
    if not keep:
        big.unlink()
    ns = [r["n"] for r in rows]
    exps = {}
    if only in (None, "ingest"):
        exps["ingest"] = exponent(ns, [r["ingest"]["seconds"]["ingest"] for r in rows])
    if only in (None, "fit"):
        exps["fit"] = exponent(ns, [sum(r["fit"]["seconds"].values()) for r in rows])
        for s in FIT_STAGES:
            exps[s] = exponent(ns, [r["fit"]["seconds"][s] for r in rows])
    return {"rows": rows, "exponents": exps}


def _founding_run(work: Path, n: int, data: str = "synthetic") -> Path:
    if data == "cifar":  # real photos: CIFAR-10, all 60,000, ingested at 32x32
        run = work / "run-cifar"
        if not (run / ".streamclust" / "ingest.done").exists():
            src = Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data")) / "cifar10.zip"
            subprocess.run([sys.executable, "-m", "streamclust", "ingest", str(src), str(run), "--size", "32",
                            "--quiet"], check=True, cwd=ROOT)
        return run
    run = work / f"run-{n}"
    if not (run / ".streamclust" / "ingest.done").exists():
        zp = work / f"faces-{n}.zip"
        if not zp.exists():
            make_zip(zp, n)
        run_child("ingest", zp, run, tmp=work)
    return run


def part_founding(n: int, work: Path, budget: float, data: str = "synthetic") -> dict:
    run = _founding_run(work, n, data)
    if data == "cifar":
        n = 60000
    return {"n": n, "data": data, "streamclust": run_child("founding-stream", run, data, tmp=work),
            "naive": run_child("founding-naive", run, budget, data, tmp=work)}


def part_scheduler(n: int, work: Path) -> dict:
    from streamclust.models.io import load_model

    run = _founding_run(work, n)
    inproc = run_child("sched", run, "inproc", work / "models-inproc", tmp=work)
    local = run_child("sched", run, "local", work / "models-local", tmp=work)
    a = {m: load_model(work / "models-inproc" / f"{m}.npz") for m in ("pca", "kmeans", "gmm")}
    b = {m: load_model(work / "models-local" / f"{m}.npz") for m in ("pca", "kmeans", "gmm")}
    signs = np.sign(np.sum(a["pca"].components_ * b["pca"].components_, axis=1))
    diff = {
        "pca_components": float(np.max(np.abs(a["pca"].components_ - signs[:, None] * b["pca"].components_))),
        "pca_explained_variance": float(np.max(np.abs(a["pca"].explained_variance_ - b["pca"].explained_variance_)
                                               / a["pca"].explained_variance_)),
        "kmeans_centers_rel": float(np.max(np.abs(a["kmeans"].cluster_centers_ - b["kmeans"].cluster_centers_))
                                    / np.max(np.abs(a["kmeans"].cluster_centers_))),
        "kmeans_inertia_rel": float(abs(a["kmeans"].inertia_ - b["kmeans"].inertia_) / a["kmeans"].inertia_),
        "gmm_means_rel": float(np.max(np.abs(a["gmm"].means_ - b["gmm"].means_)) / np.max(np.abs(a["gmm"].means_))),
        "gmm_weights": float(np.max(np.abs(a["gmm"].weights_ - b["gmm"].weights_))),
        "gmm_lower_bound_rel": float(abs(a["gmm"].lower_bound_ - b["gmm"].lower_bound_) / abs(a["gmm"].lower_bound_)),
        "same_kmeans_iterations": int(a["kmeans"].n_iter_) == int(b["kmeans"].n_iter_),
        "same_gmm_iterations": int(a["gmm"].n_iter_) == int(b["gmm"].n_iter_),
    }
    # ingestion: in-process decode processes vs workers writing through the staging array
    zp = work / f"faces-{n}.zip"
    if not zp.exists():
        make_zip(zp, n)
    ing = {mode: run_child("ingest-sched", zp, work / f"ingest-{mode}", mode, tmp=work) for mode in ("inproc", "local")}
    same_manifest = (work / "ingest-inproc" / "manifest.csv").read_bytes() == \
        (work / "ingest-local" / "manifest.csv").read_bytes()
    import zarr

    same_images = all(
        np.array_equal(zarr.open_array(work / "ingest-inproc" / "images.zarr")[lo:lo + 8192],
                       zarr.open_array(work / "ingest-local" / "images.zarr")[lo:lo + 8192])
        for lo in range(0, n, 8192))
    for mode in ("inproc", "local"):
        shutil.rmtree(work / f"ingest-{mode}")
    return {"n": n, "inproc": inproc, "local": local, "max_abs_diff": diff,
            "ingest": {**ing, "same_manifest": same_manifest, "same_images": same_images}}


# ------------------------------------------------------------------------------ report
def _total(r: dict) -> float:
    return sum(v for k, v in r["seconds"].items() if k != "cluster_start")


def report(part: str, res: dict) -> str:
    L = []
    if part == "scale":
        L += ["| N | zip MiB | store MiB | ingest s | images/s | ingest RSS MiB | "
              + " | ".join(f"{s} s" for s in FIT_STAGES) + " | fit s | "
              + " | ".join(f"{s} RSS MiB" for s in FIT_STAGES) + " | busy cores, ours included (ingest / fit) |",
              "|" + "---:|" * (8 + 2 * len(FIT_STAGES))]
        nan = {"seconds": {s: float("nan") for s in ["ingest", *FIT_STAGES]}, "store_bytes": float("nan"),
               "peak_rss_mib": {}, "busy_cores": float("nan")}
        for r in res["rows"]:
            i, f = r["ingest"] or nan, r["fit"] or nan
            L.append(f"| {r['n']:,} | {r['zip_bytes'] / MiB:,.0f} | {i['store_bytes'] / MiB:,.0f} "
                     f"| {i['seconds']['ingest']:.1f} | {r['n'] / i['seconds']['ingest']:,.0f} "
                     f"| {i['peak_rss_mib'].get('ingest', float('nan')):.0f} | "
                     + " | ".join(f"{f['seconds'][s]:.1f}" for s in FIT_STAGES) + f" | {_total(f):.1f} | "
                     + " | ".join(f"{f['peak_rss_mib'].get(s, float('nan')):.0f}" for s in FIT_STAGES)
                     + f" | {i['busy_cores']:.2f} / {f['busy_cores']:.2f} |")
        e = res["exponents"]
        L += ["", "Fitted exponent b of time = a N^b: " + ", ".join(f"{k} {v:.2f}" for k, v in e.items()) + "."]
    elif part == "founding":
        s, nv = res["streamclust"], res["naive"]
        kind = "real: CIFAR-10" if res.get("data") == "cifar" else "synthetic faces"
        L += [f"N = {res['n']:,} ({kind}); PCA components kept: streamclust {s['pca_components']}, "
              f"naive {nv['pca_components']}.",
              "", "| route | load s | PCA s | features s | k-means s | GMM 50 s | BIC sweep s | sample 64 s | total s | peak RSS MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        ss = s["seconds"]
        g = lambda d, k: f"{d[k]:.1f}" if k in d else "-"  # noqa: E731
        L.append(f"| streamclust | - | {ss['pca']:.1f} | {ss['features']:.1f} | {ss['kmeans']:.1f} | {g(ss, 'gmm')} "
                 f"| {ss['select_k']:.1f} | {g(ss, 'sample')} | {_total(s):.1f} | {max(s['peak_rss_mib'].values()):.0f} |")
        ns_ = nv["seconds"]
        sweep = ns_["select_k"] + nv["extrapolated_select_k_s"]
        tot = sum(ns_.values()) + nv["extrapolated_select_k_s"]
        star = " (extrapolated)" if nv["missing_ks"] else ""
        L.append(f"| naive in-memory | {ns_['load']:.1f} | {ns_['pca']:.1f} | - | {ns_['kmeans']:.1f} | {g(ns_, 'gmm')} "
                 f"| {sweep:.1f}{star} | {g(ns_, 'sample')} | {tot:.1f}{star} | {max(nv['peak_rss_mib'].values()):.0f} |")
        L += ["", f"ratio streamclust / naive: **{_total(s) / tot:.2f}x** time, "
                  f"{max(s['peak_rss_mib'].values()) / max(nv['peak_rss_mib'].values()):.2f}x peak RSS.",
              f"BIC picks k = {s['picked'].get('bic')} (streamclust, on {s['n_fit_rows']:,} rows, "
              f"{s['n_heldout_rows']:,} held out) and k = {nv['picked']['bic']} (naive, all rows)"
              + (f"; the naive sweep stopped before k = {nv['missing_ks'][0]} (budget)" if nv["missing_ks"] else "") + "."]
    else:
        a, b = res["inproc"], res["local"]
        L += ["| route | " + " | ".join(f"{s} s" for s in FIT_STAGES) + " | fit s | cluster start s | driver peak RSS MiB |",
              "|---|" + "---:|" * (len(FIT_STAGES) + 3)]
        for name, r in (("in-process", a), ("--scheduler local (2 workers)", b)):
            L.append(f"| {name} | " + " | ".join(f"{r['seconds'][s]:.1f}" for s in FIT_STAGES)
                     + f" | {_total(r):.1f} | {r['seconds']['cluster_start']:.1f} | {max(r['peak_rss_mib'].values()):.0f} |")
        ig = res.get("ingest")
        if ig:
            ti, tl = ig["inproc"]["seconds"]["ingest"], ig["local"]["seconds"]["ingest"]
            L += ["", f"ingest of the same {res['n']:,} images: in-process {ti:.1f} s "
                      f"(driver {ig['inproc']['peak_rss_mib']['ingest']:.0f} MiB), --scheduler local {tl:.1f} s "
                      f"(driver {ig['local']['peak_rss_mib']['ingest']:.0f} MiB): {tl / ti:.2f}x; same manifest: "
                      f"{ig['same_manifest']}, same images: {ig['same_images']}."]
        L += ["", f"ratio local / in-process: **{_total(b) / _total(a):.2f}x** (fit stages; the cluster's start excluded).",
              "largest differences (components: absolute, after sign alignment; the rest relative to the largest value): " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in res["max_abs_diff"].items())]
    return "\n".join(L)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, out, *args = argv[1:]
        res = CHILDREN[kind](*args)
        Path(out).write_text(json.dumps(res, default=float))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["scale", "founding", "scheduler"])
    ap.add_argument("--sizes", default="10000,40000,160000,1000000")
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--naive-budget", type=float, default=1200.0)
    ap.add_argument("--data", choices=["synthetic", "cifar"], default="synthetic",
                    help="founding: synthetic faces (N of them) or CIFAR-10, all 60,000 real photos")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", choices=["ingest", "fit"], default=None, help="scale: run only this step")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    work = Path(a.workdir or "/tmp/streamclust-bench-scale")
    work.mkdir(parents=True, exist_ok=True)
    if a.part == "scale":
        res = part_scale([int(s) for s in a.sizes.split(",")], work, a.keep, a.only)
    elif a.part == "founding":
        res = part_founding(a.n, work, a.naive_budget, a.data)
    else:
        res = part_scheduler(a.n, work)
    res["meta"] = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
                   "cores": os.cpu_count()}
    text = report(a.part, res)
    print(text)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
