"""One batch of select-k's EM pass: the diagonal mixtures' E-steps together or one by one.

Real data: the first ``--images`` CIFAR-10 photos of ``$STREAMCLUST_DATA/cifar10.zip``
(default ``../shared/data``), as float64 pixels in [0, 1], reduced by an in-memory PCA to
99 % of their variance (the founding workload's features). Models: the founding sweep's
diagonal mixtures k = 10, 20, ..., 200 (2,100 components), each as EM's first iteration
gets it from its k-means initialisation: the cells of a short k-means (scikit-learn's,
10 iterations) as weights, means and diagonal covariances.

Two routes over the same pass (``--batches`` batches of ``--rows`` rows), timed in turn
in this one process (``--repeat`` rounds, medians), each giving every mixture its sums:

``together``
    the mixtures' accumulators under one ``CombinedAccumulator``: one
    :class:`streamclust.models._gmm_estep.DiagEStep` for all of them, what a shared pass
    does now.
``one by one``
    each mixture's own E-step (``GMMStatsAccumulator.update``: ``gmm_log_resp`` on the
    thread pool's row blocks, then ``GMMSuffStats.accumulate``): what the shared passes
    did before, and what a mixture fitted alone does (the baseline).

Usage::

    python scripts/bench_estep.py --repeat 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cifar_features(zip_path: Path, n: int) -> np.ndarray:
    from PIL import Image
    from sklearn.decomposition import PCA

    with zipfile.ZipFile(zip_path) as z:
        names = sorted(m for m in z.namelist() if m.endswith(".jpg"))[:: max(1, 60000 // n)][:n]
        X = np.stack([np.asarray(Image.open(io.BytesIO(z.read(m))).convert("RGB"), dtype=np.float64).ravel() / 255
                      for m in names])
    return PCA(0.99, svd_solver="full", random_state=0).fit_transform(X)


def kmeans_model(F: np.ndarray, k: int) -> tuple:
    """A diagonal mixture as EM's first iteration gets it: the cells of a short k-means."""
    from sklearn.cluster import KMeans

    labels = KMeans(k, n_init=1, max_iter=10, random_state=0).fit_predict(F)
    weights = np.bincount(labels, minlength=k) / len(F)
    means = np.stack([F[labels == j].mean(axis=0) if np.any(labels == j) else F.mean(axis=0) for j in range(k)])
    var = np.stack([F[labels == j].var(axis=0) if np.sum(labels == j) > 1 else F.var(axis=0) for j in range(k)])
    return np.maximum(weights, 1e-6) / np.maximum(weights, 1e-6).sum(), means, 1 / np.sqrt(var + 1e-6)


def report(out: dict, path: Path | None) -> None:
    """Print the figures as JSON, and write them to ``path`` when given."""
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        path.write_text(text)


def wait_for_idle(max_load: float = 0.5, timeout: float = 300) -> float:
    t0 = time.time()
    while os.getloadavg()[0] > max_load and time.time() - t0 < timeout:
        time.sleep(5)
    return os.getloadavg()[0]


def main(argv=None) -> int:
    from streamclust.engine.combined import CombinedAccumulator
    from streamclust.models._gmm_stats import GMMStatsAccumulator

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zip", type=Path, default=Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data"))
                   / "cifar10.zip")
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--rows", type=int, default=4096, help="rows of the batch (select-k's batch without a memory limit)")
    p.add_argument("--batches", type=int, default=9, help="batches a pass (select-k's 36,000 training rows: 9)")
    p.add_argument("--ks", default="10:200:10")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    F = cifar_features(args.zip, args.images)
    start, stop, step = (int(v) for v in args.ks.split(":"))
    ks = list(range(start, stop + 1, step))
    models = [kmeans_model(F, k) for k in ks]

    batches = [np.ascontiguousarray(F[(b * args.rows) % len(F):][: args.rows]) for b in range(args.batches)]

    def parts():
        return [GMMStatsAccumulator(w, m, pc, "diag") for w, m, pc in models]

    def together():  # a shared pass: the candidates' accumulators under one CombinedAccumulator
        ps = parts()
        acc = CombinedAccumulator(list(range(len(ps))), [str(k) for k in ks], ps, "pass")
        for b, X in enumerate(batches):
            acc.update(X, b * args.rows)
        acc.to_host()  # as the engine settles a pass: the joint step's sums split back into the parts
        return ps

    def one_by_one():  # each mixture's own E-step (GMMStatsAccumulator.update): what shared passes did before
        ps = parts()
        for b, X in enumerate(batches):
            for part in ps:
                part.update(X, b * args.rows)
        return ps

    routes = {"together": together, "one by one": one_by_one}
    results = {name: fn() for name, fn in routes.items()}  # warm-up, and the sums to compare
    ref = results["one by one"]
    agree = {name: max(float(np.max(np.abs(a.sxx - b.sxx)) / np.max(np.abs(b.sxx))) for a, b in zip(res, ref))
             for name, res in results.items()}
    load = wait_for_idle()
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(args.repeat):
        for name, fn in routes.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["one by one"])
    out = {
        "data": f"real: {args.images} CIFAR-10 photos, PCA to 99 % ({F.shape[1]} features)",
        "batch_rows": args.rows, "batches_a_pass": args.batches, "ks": ks, "components": sum(ks), "cores": len(os.sched_getaffinity(0)),
        "load_before": load, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "median_s_a_pass": {k: statistics.median(v) for k, v in times.items()},
        "ratio_to_one_by_one": {k: statistics.median(v) / base for k, v in times.items()},
        "largest_difference_of_sxx_relative_to_its_largest": agree,
    }
    report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
