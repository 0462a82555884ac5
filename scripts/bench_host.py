"""What a GPU waits for: the host's work per pass, measured without a GPU.

On a GPU the arithmetic of a pass is a few milliseconds; what the device waits for between
its kernels is the host: Python, NumPy work on the host (M-steps, building the next pass's
model), copies, and the launch of every PyTorch operation. This script measures that host
side on the PyTorch backend's CPU device, where each PyTorch operation runs in the calling
thread: a pass's wall time (runs as they are) less the time inside PyTorch operations
(runs under PyTorch's profiler, the sum of every operation's own time: the arithmetic,
which a GPU takes over) is what stays on the host (Python, NumPy, copies, and
the calls into PyTorch, whose kernel launches a GPU adds); the operations are counted
(each one a kernel launch on a GPU).

Real data: the first ``--images`` CIFAR-10 photos of ``$STREAMCLUST_DATA/cifar10.zip``
(default ``../shared/data``) reduced by an in-memory PCA to 99 % of their variance (the
founding workload's features, ~500 dimensions), of which ``--rows`` are fitted: few rows,
so that the arithmetic is small and the host's share shows. ``--work``: ``select-k``'s
candidates (diagonal mixtures k = 10, 20, ..., 200, shared passes), or ``fit``'s
``kmeans`` (100 clusters, Lloyd) or ``gmm`` (50 diagonal components); ``tol=0``, once
with ``--iter`` iterations and once with 2, so that the difference is ``--iter - 2``
passes alone (the initialisation's passes and k-means++ cancel out).

Usage::

    python scripts/bench_host.py --json host.json
    python scripts/bench_host.py --work kmeans --images 8192 --rows 8192
    python scripts/bench_host.py --seeding 200 --images 3200 --rows 3200
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def candidates(rows: int, n_iter: int) -> list:
    """The sweep's candidates, ``n_iter`` EM iterations each (``tol=0``), PyTorch on the CPU device."""
    from streamclust.pipeline.select_k import candidate_estimator

    ests = [candidate_estimator("gmm", k, max_iter=n_iter, batch_size=rows, backend="torch", device="cpu")
            for k in range(10, 201, 10)]
    for est in ests:
        est.set_params(tol=0.0)
    return ests


#: what is timed: select-k's shared passes, or one of ``fit``'s streamed stages
WORKS = ("select-k", "kmeans", "gmm")


def run(work: str, X: np.ndarray, n_iter: int) -> int:
    """Fit ``work`` on ``X`` for ``n_iter`` iterations (PyTorch, CPU device): the passes made.

    ``kmeans``: ``fit``'s k-means (100 clusters, Lloyd, from the first 100 rows); ``gmm``: its mixture (50 diagonal
    components, one start); both in batches of half the rows (a GPU's batches hold ~30,000
    rows: a pass of the founding workload is two of them); ``tol=0``.
    """
    if work == "select-k":
        from streamclust.pipeline.select_k import fit_candidates

        return fit_candidates(candidates(len(X), n_iter), X).passes
    from streamclust.models import StreamingGaussianMixture, StreamingKMeans

    where = dict(batch_size=max(1, len(X) // 2), backend="torch", device="cpu", random_state=0, tol=0.0)
    if work == "kmeans":
        # seeded by given centres: the seeding's in-memory Lloyd takes max_iter iterations too,
        # which would not cancel out
        est = StreamingKMeans(n_clusters=100, method="lloyd", max_iter=n_iter, init=X[:100], n_init=1, **where)
    else:
        est = StreamingGaussianMixture(n_components=50, covariance_type="diag", max_iter=n_iter, **where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0: it is not meant to converge
        est.fit(X)
    return int(est.n_iter_)  # the passes that differ between two runs are iterations


def sweep(X: np.ndarray, n_iter: int, timed: bool, work: str = "select-k") -> dict:
    """Fit ``work`` on ``X`` (PyTorch, CPU device) for ``n_iter`` iterations: the wall time,
    and with ``timed`` the time inside PyTorch operations and their number (the profiler's
    own overhead makes that run's wall longer: its wall time is not used)."""
    import torch

    torch.set_num_threads(1)  # the arithmetic is not what is measured
    t0 = time.perf_counter()
    if not timed:
        passes = run(work, X, n_iter)
        return {"passes": passes, "wall_s": time.perf_counter() - t0}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        passes = run(work, X, n_iter)
    return {"passes": passes, "wall_s": time.perf_counter() - t0,
            "torch_s": sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6}  # every operation's own time


def count_operations(fn) -> tuple[int, int]:
    """The PyTorch operations ``fn()`` dispatches (as the caller launches them; those PyTorch
    runs inside them are not counted): all, and those that are not views (slices, transposes:
    no kernel on a GPU), each a kernel launch on a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            Count.kernels += not func.is_view
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n, Count.kernels


def seeding(X: np.ndarray, k: int, repeat: int) -> dict:
    """k-means++ of ``k`` seeds on ``X``: milliseconds a seed (best of ``repeat``) by
    scikit-learn, by streamclust's on NumPy and on PyTorch's CPU device (one thread), and
    the PyTorch operations a seed dispatches; the same on ``X``'s first 4 columns, where the
    arithmetic is next to nothing and what is left is the dispatching of the operations."""
    import torch
    from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus

    from streamclust.models._seeding import kmeans_plusplus

    torch.set_num_threads(1)

    def best(f, A) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            f(A, k, random_state=0)
            times.append(time.perf_counter() - t0)
        return 1000 * min(times) / k

    out = {}
    for cols in (X.shape[1], 4):
        A = np.ascontiguousarray(X[:, :cols])
        out[f"{cols} features"] = {"scikit-learn": best(sklearn_kmeans_plusplus, A), "numpy": best(kmeans_plusplus, A),
                                   "pytorch_cpu_device": best(kmeans_plusplus, torch.as_tensor(A))}
    seeded = count_operations(lambda: kmeans_plusplus(torch.as_tensor(X), k, random_state=0))
    out["pytorch_operations_a_seed"] = seeded[0] / k
    return out


_WORK_SAYS = {
    "select-k": "select-k candidates k = 10..200 diagonal (2,100 components), shared passes",
    "kmeans": "fit's k-means: 100 clusters, Lloyd passes, batches of half the rows",
    "gmm": "fit's mixture: 50 diagonal components, one start, batches of half the rows",
}


def main(argv=None) -> int:
    from bench_estep import cifar_features, report, wait_for_idle

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zip", type=Path, default=Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data"))
                   / "cifar10.zip")
    p.add_argument("--work", choices=WORKS, default="select-k")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--iter", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--seeding", type=int, default=0, metavar="K",
                   help="instead: time k-means++ of K seeds on the --rows rows (ms a seed)")
    args = p.parse_args(argv)

    X = np.ascontiguousarray(cifar_features(args.zip, args.images)[: args.rows])
    load = wait_for_idle()
    if args.seeding:
        report({"data": f"real: {args.rows} of {args.images} CIFAR-10 photos, PCA to 99 % ({X.shape[1]} features)",
                "work": f"k-means++ of {args.seeding} seeds, one thread", "load_before": load,
                "ms_a_seed": seeding(X, args.seeding, args.repeat)}, args.json)
        return 0
    work = args.work
    sweep(X, 2, False, work)  # warm-up: imports, first allocations (not counted)
    plain = {n: [sweep(X, n, False, work) for _ in range(args.repeat)] for n in (2, args.iter)}
    timed = {n: [sweep(X, n, True, work) for _ in range(args.repeat)] for n in (2, args.iter)}
    passes = plain[args.iter][0]["passes"] - plain[2][0]["passes"]
    if passes <= 0:
        raise SystemExit(f"{work} converged within 2 iterations on {args.rows} rows: more --rows")

    def per_pass(runs: dict, field: str) -> float:
        lo = float(np.median([r[field] for r in runs[2]]))
        hi = float(np.median([r[field] for r in runs[args.iter]]))
        return (hi - lo) / passes

    wall, in_torch = 1000 * per_pass(plain, "wall_s"), 1000 * per_pass(timed, "torch_s")
    counted = [count_operations(lambda n=n: run(work, X, n)) for n in (args.iter, 2)]
    out = {
        "data": f"real: {args.rows} of {args.images} CIFAR-10 photos, PCA to 99 % ({X.shape[1]} features)",
        "work": f"{_WORK_SAYS[work]}, PyTorch on the CPU device, one thread",
        "passes": passes, "load_before": load, "repeat": args.repeat,
        "ms_a_pass": {"wall": wall, "in_pytorch_operations": in_torch, "host_outside_pytorch": wall - in_torch},
        "pytorch_operations_a_pass": dict(zip(("all", "not views"), ((a - b) / passes for a, b in zip(*counted)))),
    }
    report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
