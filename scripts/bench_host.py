"""What a GPU waits for: the host's work per pass of select-k, measured without a GPU.

On a GPU the arithmetic of a pass is a few milliseconds; what the device waits for between
its kernels is the host: Python, NumPy work on the host (M-steps, building the next pass's
model), copies, and the launch of every PyTorch operation. This script measures that host
side on the PyTorch backend's CPU device, where each PyTorch operation runs in the calling
thread: every operation is timed as it is dispatched (a ``TorchDispatchMode``), which
splits a pass's time into the time inside PyTorch operations (the arithmetic, which a GPU
takes over, and the operations' own overhead) and the rest (what stays on the host), and
counts the operations (each one a kernel launch on a GPU).

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
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def sweep(X: np.ndarray, n_iter: int) -> dict:
    """Fit the sweep's candidates on ``X`` (PyTorch, CPU device) for ``n_iter`` EM iterations:
    the wall time, the time inside PyTorch operations and their number."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from streamclust.pipeline.select_k import candidate_estimator, fit_candidates

    ests = [candidate_estimator("gmm", k, max_iter=n_iter, batch_size=len(X), backend="torch", device="cpu")
            for k in range(10, 201, 10)]
    for est in ests:
        est.set_params(tol=0.0)

    class Timed(TorchDispatchMode):
        """Every PyTorch operation, timed (each runs in this thread on the CPU device)."""

        n, seconds = 0, 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            Timed.seconds += time.perf_counter() - t
            Timed.n += 1
            return out

    torch.set_num_threads(1)  # the arithmetic is not what is measured
    t0 = time.perf_counter()
    with Timed():
        res = fit_candidates(ests, X)
    return {"passes": res.passes, "wall_s": time.perf_counter() - t0, "torch_s": Timed.seconds, "ops": Timed.n}


def main(argv=None) -> int:
    from bench_estep import cifar_features, wait_for_idle

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
    runs = {n: [sweep(X, n) for _ in range(args.repeat)] for n in (2, args.iter)}
    em = runs[args.iter][0]["passes"] - runs[2][0]["passes"]

    def per_pass(field: str) -> float:
        lo = float(np.median([r[field] for r in runs[2]]))
        hi = float(np.median([r[field] for r in runs[args.iter]]))
        return (hi - lo) / em

    wall, in_torch = 1000 * per_pass("wall_s"), 1000 * per_pass("torch_s")
    out = {
        "data": f"real: {args.rows} of {args.images} CIFAR-10 photos, PCA to 99 % ({X.shape[1]} features)",
        "work": "select-k candidates k = 10..200 diagonal (2,100 components), PyTorch on the CPU device, one thread",
        "em_passes": em, "load_before": load, "repeat": args.repeat,
        "ms_a_pass": {"wall": wall, "in_pytorch_operations": in_torch, "host_outside_pytorch": wall - in_torch},
        "pytorch_operations_a_pass": per_pass("ops"),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
