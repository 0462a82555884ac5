"""The founding workload at 99 % of the variance on a GPU, against two CPU cores (issue 17).

Real images: a zip of CIFAR-10 JPEGs (``$STREAMCLUST_DATA/cifar10.zip`` by default, or
``--zip``), ingested at 32 px and, for the 64x64 case, at 64 px (real photos upscaled).

Parts (each timed in this one run, results in ``--json``; a part is skipped, and says so,
when the run is past ``--deadline`` seconds):

``gpu-<size>``
    The whole founding workload with the PyTorch backend on the GPU (float64): ``fit``
    (PCA at 99 %, k-means 100, a 50-component diagonal mixture), ``select-k`` (diagonal
    mixtures k = 10, 20, ..., 200, shared passes), ``sample`` 64.  Per stage: seconds,
    images/s (``n / s``) and rows streamed per second (rows x passes / s), the share of
    the stage the device was busy (NVML utilisation sampled every 50 ms) and the share the
    passes waited for the store (the feed's own accounting).
``same-work``
    The same stages on the first ``--subset`` rows with ``max_iter`` capped at 3 (so the
    2-core CPU finishes in a minute), once on the GPU and once with NumPy in a child
    process pinned to 2 cores with 2 BLAS threads: the per-stage ratio of two measured
    runs of identical work, and the GPU result against the CPU one (largest relative
    difference of the models, labels equal, BIC pick).  ``float32`` products on the GPU
    are compared too.

In the same run the 2-core time of the whole workload is only **estimated**: each stage's
full GPU time times that stage's measured CPU/GPU ratio on the capped work (said in the
output). ``--cpu-reference`` measures it instead, without a GPU: the whole workload (no cap)
with NumPy in a child pinned to 2 cores (tens of minutes; on a 2-core machine like the
founding user's, for the ratio against a GPU run of the same sizes).

Usage (from the repository root, on a machine with a GPU)::

    python scripts/bench_gpu.py --json gpu.json
    python scripts/bench_gpu.py --zip cifar40k.zip --sizes 32,64 --json gpu.json --deadline 420
    python scripts/bench_gpu.py --cpu-reference --zip cifar40k.zip --sizes 32,64 --json cpu2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 0
KS = "10:200:10"
FIT = {"pca_components": 0.99, "clusters": 100, "gmm_components": 50, "covariance": "diag", "seed": SEED}
CAPPED_ITER = 3
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


# --------------------------------------------------------------------------- watching
class StageLog(logging.Handler):
    """Collects the feed records (rows streamed, waits) and the start of each fit stage."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.events: list[tuple[float, str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        stats = getattr(record, "feed_stats", None)
        if stats is not None:
            self.events.append((record.created, "feed", (stats, record.seconds)))
        elif record.name.endswith("pipeline.fit") and record.getMessage().startswith("fitting "):
            self.events.append((record.created, "stage", record.getMessage().split()[1]))


class Utilisation:
    """NVML utilisation of the GPU sampled every 50 ms in a thread."""

    def __init__(self, device: str):
        import torch

        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._device = torch.device(device)
        try:
            if self._device.type != "cuda":
                raise RuntimeError("not a GPU")
            torch.cuda.utilization(self._device)
            self.ok = True
        except Exception as exc:  # no NVML: the busy share is left out, said so
            log(f"GPU utilisation not readable ({exc}); the busy share is left out")
            self.ok = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import torch

        while self.ok and not self._stop.is_set():
            self.samples.append((time.time(), int(torch.cuda.utilization(self._device))))
            time.sleep(0.05)

    def mean(self, t0: float, t1: float) -> float | None:
        vals = [u for t, u in self.samples if t0 <= t <= t1]
        return float(np.mean(vals)) if vals else None

    def stop(self) -> None:
        self._stop.set()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the runs
def ingest(zip_path: Path, run: Path, size: int) -> float:
    if (run / ".streamclust" / "ingest.done").exists():
        return 0.0
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "streamclust", "ingest", str(zip_path), str(run), "--size", str(size),
                    "--quiet"], check=True, cwd=ROOT)
    return time.perf_counter() - t


def subset_zip(src: Path, dst: Path, n: int) -> Path:
    """Every k-th member of ``src`` (the classes stay balanced), ``n`` in all."""
    with zipfile.ZipFile(src) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        step = max(1, len(members) // n)
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as out:
            for m in members[::step][:n]:
                out.writestr(m.filename, z.read(m))
    return dst


def workload(run: Path, where: dict, max_iter: int = 100) -> dict:
    """fit + select-k + sample on ``run`` with ``where`` (backend, device, precision); seconds per stage,
    and per stage the rows streamed and the waits for the store (from the feed's records)."""
    watch = StageLog()
    root = logging.getLogger("streamclust")
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        out = _workload(run, where, max_iter)
    finally:
        root.removeHandler(watch)
    per = attribute(watch.events, out["t"]["fit"], out["t"]["select_k"])
    for stage, d in per.items():
        wall = out["wall"].get(stage)
        d["rows_per_s"] = d["rows"] / wall if wall else None
        d["images_per_s"] = out["n"] / wall if wall else None
        d["wait_share"] = d["wait_s"] / d["drive_s"] if d["drive_s"] else None
    out["per_stage"] = per
    return out


def _workload(run: Path, where: dict, max_iter: int) -> dict:
    from streamclust.config import FitConfig
    from streamclust.models.io import load_model
    from streamclust.pipeline.fit import fit_run
    from streamclust.pipeline.sample import sample_run
    from streamclust.pipeline.select_k import select_k_run

    out: dict = {"wall": {}, "t": {}}
    t = time.perf_counter()
    w0 = time.time()
    summary = fit_run(run, FitConfig(**FIT, max_iter=max_iter, **where), overwrite=True, progress=False)
    out["wall"].update({k: float(v) for k, v in summary.seconds.items()})
    out["t"]["fit"] = (w0, time.time())
    w0 = time.time()
    t = time.perf_counter()
    res = select_k_run(run, KS, method="gmm", covariance="diag", seed=SEED, max_iter=max_iter, overwrite=True,
                       progress=False, **where)
    out["wall"]["select_k"] = time.perf_counter() - t
    out["t"]["select_k"] = (w0, time.time())
    t = time.perf_counter()
    sample_run(run, 64, seed=SEED, **where)
    out["wall"]["sample"] = time.perf_counter() - t
    pca = load_model(run / "model" / "pca.npz")
    out["pca_components"] = int(pca.n_components_)
    out["n"] = int(summary.n_images)
    out["picked"] = res["picked"]
    out["bic"] = {int(r["k"]): float(r["bic"]) for r in res["rows"] if r.get("bic") not in (None, "")}
    out["not_converged"] = list(res["not_converged"])
    out["total"] = float(sum(out["wall"].values()))
    return out


def attribute(events: list, t_fit: tuple, t_sk: tuple) -> dict:
    """Rows streamed and store waits per stage, from the feed records in time order."""
    per: dict[str, dict] = {}
    stage = None
    for created, kind, payload in events:
        if kind == "stage":
            stage = payload
            continue
        if t_sk[0] <= created <= t_sk[1] + 1:
            name = "select_k"
        elif t_fit[0] <= created <= t_fit[1] + 1 and stage:
            name = stage
        else:
            continue
        stats, seconds = payload
        d = per.setdefault(name, {"rows": 0, "wait_s": 0.0, "drive_s": 0.0, "cached": 0, "batches": 0})
        d["rows"] += stats.rows
        d["wait_s"] += stats.wait_s
        d["drive_s"] += seconds
        d["cached"] += stats.cached
        d["batches"] += stats.batches
    return per


def compare_models(a: Path, b: Path) -> dict:
    """Largest relative differences between two runs' models, label agreement, BIC pick."""
    from streamclust.models.io import load_model

    def rel(x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-300))

    out = {}
    pa, pb = load_model(a / "model" / "pca.npz"), load_model(b / "model" / "pca.npz")
    out["pca_components"] = [int(pa.n_components_), int(pb.n_components_)]
    if pa.n_components_ == pb.n_components_:
        out["pca_explained_variance_rel"] = rel(pa.explained_variance_, pb.explained_variance_)
    ka, kb = load_model(a / "model" / "kmeans.npz"), load_model(b / "model" / "kmeans.npz")
    if ka.cluster_centers_.shape == kb.cluster_centers_.shape:
        out["kmeans_centres_rel"] = rel(ka.cluster_centers_, kb.cluster_centers_)
    ga, gb = load_model(a / "model" / "gmm.npz"), load_model(b / "model" / "gmm.npz")
    if ga.means_.shape == gb.means_.shape:
        out["gmm_means_rel"] = rel(ga.means_, gb.means_)
        out["gmm_covariances_rel"] = rel(ga.covariances_, gb.covariances_)
        out["gmm_lower_bound"] = [float(ga.lower_bound_), float(gb.lower_bound_)]
    # labels of both runs' models on the first run's features, predicted with NumPy
    import zarr

    feats = zarr.open_array(str(a / "features.zarr"), mode="r")
    for name, (ma, mb) in {"kmeans": (ka, kb), "gmm": (ga, gb)}.items():
        if ma.n_features_in_ == mb.n_features_in_ == feats.shape[1]:
            la = ma.set_params(backend="numpy").predict(feats)
            lb = mb.set_params(backend="numpy").predict(feats)
            out[f"{name}_labels_equal"] = float(np.mean(la == lb))
    return out


def guarded(fn, *args):
    """``fn(*args)``, or what went wrong (a failed comparison is a result, not the end of the run)."""
    try:
        return fn(*args)
    except Exception as exc:
        log(f"{fn.__name__} failed: {type(exc).__name__}: {str(exc)[:300]}")
        return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def child_cpu(run: str, max_iter: str) -> None:
    """The capped workload with NumPy, in a process pinned to 2 cores."""
    res = workload(Path(run), {"backend": "numpy", "device": "cpu", "precision": "float64"}, int(max_iter))
    res["peak_rss_mib"] = peak_rss_mib()
    res["cores"] = len(os.sched_getaffinity(0))
    print("RESULT " + json.dumps(res, default=str), flush=True)


def run_cpu(run: Path, max_iter: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2",
               CUDA_VISIBLE_DEVICES="")
    cores = sorted(os.sched_getaffinity(0))[:2]
    proc = subprocess.run([sys.executable, __file__, "--child", str(run), str(max_iter)], cwd=ROOT, env=env,
                          capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the CPU child failed:\n{proc.stderr[-3000:]}")


def cpu_reference(args) -> int:
    """The whole founding workload, as the GPU parts run it, with NumPy in a child pinned to 2 cores."""
    results: dict = {"device": "cpu, NumPy, 2 cores, 2 BLAS threads", "zip": str(args.zip),
                     "data": "real (CIFAR-10 JPEGs)", "cpu_count": os.cpu_count(), "parts": {}}
    args.work.mkdir(parents=True, exist_ok=True)
    if args.limit:
        args.zip = subset_zip(args.zip, args.work / f"limit-{args.limit}.zip", args.limit)
    for size in [int(s) for s in args.sizes.split(",")]:
        run = args.work / f"run-{size}"
        t_ing = ingest(args.zip, run, size)
        res = run_cpu(run, 100)
        res["ingest_s"] = t_ing
        results["parts"][f"cpu2-{size}"] = res
        log(f"cpu2-{size}: {json.dumps({k: round(v, 2) for k, v in res['wall'].items()})} total "
            f"{res['total']:.1f} s, {res['pca_components']} components, picked {res['picked']}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))
    return 0


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zip", type=Path, default=Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data"))
                   / "cifar10.zip")
    p.add_argument("--sizes", default="32,64", help="image sides to ingest at (default 32,64)")
    p.add_argument("--subset", type=int, default=8000, help="rows of the same-work comparison (default 8000)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_gpu"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--limit", type=int, default=None, help="use only this many images of the zip (a quick check)")
    p.add_argument("--profile", type=Path, default=None,
                   help="write a cProfile of the first size's select-k (where the host's time goes) to this file")
    p.add_argument("--deadline", type=float, default=450.0, help="skip parts started after this many seconds")
    p.add_argument("--cpu-reference", action="store_true",
                   help="run the whole workload (no cap) with NumPy on 2 cores instead, no GPU needed: the "
                        "measured 2-core side of the comparison (tens of minutes)")
    p.add_argument("--child", nargs=2, metavar=("RUN", "MAX_ITER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_cpu(*args.child)
        return 0
    if args.cpu_reference:
        return cpu_reference(args)

    import torch

    from streamclust.engine.backend import resolve_backend

    backend = resolve_backend("torch", args.device)
    gpu = {"backend": "torch", "device": backend.device, "precision": "float64"}
    util = Utilisation(backend.device)
    results: dict = {"device": backend.describe(), "zip": str(args.zip), "data": "real (CIFAR-10 JPEGs)",
                     "cpu_count": os.cpu_count(), "torch": torch.__version__, "parts": {}}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))

    args.work.mkdir(parents=True, exist_ok=True)
    if args.limit:
        args.zip = subset_zip(args.zip, args.work / f"limit-{args.limit}.zip", args.limit)
    for size in [int(s) for s in args.sizes.split(",")]:
        name = f"gpu-{size}"
        if time.perf_counter() - T0 > args.deadline:
            results["parts"][name] = {"skipped": f"past the {args.deadline:.0f} s deadline"}
            continue
        run = args.work / f"run-{size}"
        t_ing = ingest(args.zip, run, size)
        log(f"{name}: ingested in {t_ing:.1f} s")
        if backend.on_gpu:
            torch.cuda.reset_peak_memory_stats()
        if args.profile and size == int(args.sizes.split(",")[0]):
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                res = workload(run, gpu)
            with open(args.profile, "w") as fh:
                stats = pstats.Stats(prof, stream=fh).sort_stats("tottime")
                stats.print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
            res["profiled"] = True  # its times include the profiler's overhead
        else:
            res = workload(run, gpu)
        res["ingest_s"] = t_ing
        res["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if backend.on_gpu else None
        res["host_peak_rss_mib"] = peak_rss_mib()
        if util.ok:
            res["busy"] = {"fit": util.mean(*res["t"]["fit"]), "select_k": util.mean(*res["t"]["select_k"])}
        results["parts"][name] = res
        log(f"{name}: {json.dumps({k: round(v, 2) for k, v in res['wall'].items()})} total {res['total']:.1f} s, "
            f"{res['pca_components']} components, busy {res.get('busy')}")
        save()

    # same work, both measured: GPU and 2 CPU cores on a subset with max_iter capped
    if time.perf_counter() - T0 > args.deadline:
        results["parts"]["same-work"] = {"skipped": f"past the {args.deadline:.0f} s deadline"}
    else:
        size = int(args.sizes.split(",")[0])
        base = args.work / f"run-sub-{size}"
        t_ing = ingest(subset_zip(args.zip, args.work / "subset.zip", args.subset), base, size)
        runs = {}
        for label in ("gpu", "cpu", "gpu32"):
            runs[label] = args.work / f"run-sub-{size}-{label}"
            shutil.rmtree(runs[label], ignore_errors=True)
            shutil.copytree(base, runs[label])
        same = {"rows": args.subset, "size": size, "max_iter": CAPPED_ITER, "ingest_s": t_ing}
        same["gpu"] = workload(runs["gpu"], gpu, CAPPED_ITER)
        log(f"same-work gpu: {same['gpu']['total']:.1f} s")
        save()
        same["cpu"] = run_cpu(runs["cpu"], CAPPED_ITER)
        log(f"same-work cpu (2 cores): {same['cpu']['total']:.1f} s")
        same["ratio"] = {k: same["cpu"]["wall"][k] / v for k, v in same["gpu"]["wall"].items()
                         if v > 0 and k in same["cpu"]["wall"]}
        same["gpu_vs_cpu"] = guarded(compare_models, runs["cpu"], runs["gpu"])
        log(f"same-work gpu against cpu: {same['gpu_vs_cpu']}")
        same["gpu32"] = guarded(workload, runs["gpu32"], dict(gpu, precision="float32"), CAPPED_ITER)
        if "error" not in same["gpu32"]:
            same["gpu32_vs_cpu"] = guarded(compare_models, runs["cpu"], runs["gpu32"])
        log(f"same-work float32: {same.get('gpu32_vs_cpu', same['gpu32'])}")
        results["parts"]["same-work"] = same
        # the 2-core estimate of the full GPU run of that size: its stages times the measured ratios
        for name, part in results["parts"].items():
            if "wall" in part and name == f"gpu-{size}":
                part["cpu2_estimate_s"] = {k: v * same["ratio"].get(k, float("nan")) for k, v in part["wall"].items()}
        log(f"same-work ratios {json.dumps({k: round(v, 1) for k, v in same['ratio'].items()})}")
        # and from the CPU's measured rows streamed per second: the full runs' rows at that rate
        cpu_rate = {k: d["rows_per_s"] for k, d in same["cpu"]["per_stage"].items() if d.get("rows_per_s")}
        for name, part in results["parts"].items():  # the rates hold for the size they were measured at
            if "per_stage" in part and name == f"gpu-{size}":
                part["cpu2_rate_estimate_s"] = {k: d["rows"] / cpu_rate[k] for k, d in part["per_stage"].items()
                                                if k in cpu_rate}
    util.stop()
    results["elapsed_s"] = time.perf_counter() - T0
    save()
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
