"""What a GPU waits for: the host's work per pass of select-k, measured without a GPU.

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
so that the arithmetic is small and the host's share shows. Work: select-k's candidates
(diagonal mixtures k = 10, 20, ..., 200, shared passes, ``tol=0``), once with ``--iter``
EM iterations and once with 2, so that the difference is ``--iter - 2`` EM passes alone
(the initialisation's passes and k-means++ cancel out).

Usage::

    python scripts/bench_host.py --json host.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

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


def sweep(X: np.ndarray, n_iter: int, timed: bool) -> dict:
    """Fit the sweep's candidates on ``X`` (PyTorch, CPU device) for ``n_iter`` EM iterations:
    the wall time, and with ``timed`` the time inside PyTorch operations and their number
    (the profiler's own overhead makes that run's wall longer: its wall time is not used)."""
    import torch

    from streamclust.pipeline.select_k import fit_candidates

    ests = candidates(len(X), n_iter)

    torch.set_num_threads(1)  # the arithmetic is not what is measured
    t0 = time.perf_counter()
    if not timed:
        res = fit_candidates(ests, X)
        return {"passes": res.passes, "wall_s": time.perf_counter() - t0}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        res = fit_candidates(ests, X)
    return {"passes": res.passes, "wall_s": time.perf_counter() - t0,
            "torch_s": sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6}  # every operation's own time


def count_operations(X: np.ndarray, n_iter: int) -> tuple[int, int]:
    """The PyTorch operations the sweep dispatches (as the caller launches them; those PyTorch
    runs inside them are not counted): all, and those that are not views (slices, transposes:
    no kernel on a GPU), each a kernel launch on a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from streamclust.pipeline.select_k import fit_candidates

    class Count(TorchDispatchMode):
        n = kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            Count.kernels += not func.is_view
            return func(*args, **(kwargs or {}))

    ests = candidates(len(X), n_iter)
    with Count():
        fit_candidates(ests, X)
    return Count.n, Count.kernels


def main(argv=None) -> int:
    from bench_estep import cifar_features, report, wait_for_idle

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zip", type=Path, default=Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data"))
                   / "cifar10.zip")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--iter", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    X = np.ascontiguousarray(cifar_features(args.zip, args.images)[: args.rows])
    load = wait_for_idle()
    sweep(X, 2, False)  # warm-up: imports, first allocations (not counted)
    plain = {n: [sweep(X, n, False) for _ in range(args.repeat)] for n in (2, args.iter)}
    timed = {n: [sweep(X, n, True) for _ in range(args.repeat)] for n in (2, args.iter)}
    em = plain[args.iter][0]["passes"] - plain[2][0]["passes"]

    def per_pass(runs: dict, field: str) -> float:
        lo = float(np.median([r[field] for r in runs[2]]))
        hi = float(np.median([r[field] for r in runs[args.iter]]))
        return (hi - lo) / em

    wall, in_torch = 1000 * per_pass(plain, "wall_s"), 1000 * per_pass(timed, "torch_s")
    out = {
        "data": f"real: {args.rows} of {args.images} CIFAR-10 photos, PCA to 99 % ({X.shape[1]} features)",
        "work": "select-k candidates k = 10..200 diagonal (2,100 components), PyTorch on the CPU device, one thread",
        "em_passes": em, "load_before": load, "repeat": args.repeat,
        "ms_a_pass": {"wall": wall, "in_pytorch_operations": in_torch, "host_outside_pytorch": wall - in_torch},
        "pytorch_operations_a_pass": dict(zip(("all", "not views"), (
            (a - b) / em for a, b in zip(count_operations(X, args.iter), count_operations(X, 2))))),
    }
    report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
