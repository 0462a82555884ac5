"""Time a select-k sweep with shared passes against the same candidates fitted one after another.

Synthetic data: ``--rows`` x ``--features`` float32 in a zarr store (chunks of 1024 rows, as
``fit`` writes features.zarr), drawn from 15 overlapping Gaussian blobs.  Default candidates
k = 2, 4, ..., 20 (GMM, diagonal covariance, seed 0, batch 4096, max_iter 100).

    python scripts/bench_select_k.py [--rows 20000] [--features 32] [--ks 2:20:2] [--cov diag]
        [--method gmm|kmeans] [--blas-threads N] [--threads 2] [--repeat 1]

Modes: the ks fitted one after another (``fit_streaming`` each); shared passes
(``fit_candidates``, one combined plan); and, for ``--threads N > 1``, shared passes with each
batch's candidate updates spread over a pool of N threads (an experiment kept here only: it
did not help on 2 cores, so select-k updates the candidates in turn).  Prints wall time (best
of ``--repeat``), batch reads, passes, and whether every shared-pass candidate equals its
separate fit exactly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from streamclust.engine import CombinedAccumulator, RowSource, fit_streaming
from streamclust.pipeline.select_k import candidate_estimator, fit_candidates, parse_k_range


def make_store(path, n, d, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.5, size=(15, d))
    X = centres[rng.integers(0, 15, n)] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=d)
    z = zarr.create_array(store=str(path), shape=(n, d), chunks=(1024, d), dtype="float32")
    z[:] = X.astype(np.float32)
    return zarr.open_array(str(path), mode="r")


@contextmanager
def threaded_updates(n_threads: int):
    """Spread each batch's candidate updates over a thread pool (numpy releases the GIL in BLAS)."""
    original = CombinedAccumulator.update
    pool = ThreadPoolExecutor(n_threads)

    def update(self, X, offset):
        X = X.view()
        X.flags.writeable = False
        for fut in [pool.submit(part.update, X, offset) for part in self.parts]:
            fut.result()

    CombinedAccumulator.update = update
    try:
        yield
    finally:
        CombinedAccumulator.update = original
        pool.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--ks", default="2:20:2")
    ap.add_argument("--cov", default="diag")
    ap.add_argument("--method", default="gmm", choices=("gmm", "kmeans"))
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--blas-threads", type=int, default=None, help="limit BLAS threads (default: leave as is)")
    ap.add_argument("--threads", type=int, default=2, help="pool size of the threaded experiment (1: skip it)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    ks = parse_k_range(args.ks)
    kw = dict(covariance=args.cov, seed=0, max_iter=100, batch_size=args.batch)
    attrs = ("means_", "covariances_", "weights_") if args.method == "gmm" else ("cluster_centers_", "labels_")

    def counter():
        reads = [0]
        return reads, lambda *a: reads.__setitem__(0, reads[0] + 1)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a candidate's non-convergence is not the point here
        src = RowSource(make_store(f"{tmp}/features.zarr", args.rows, args.features))
        limits = threadpool_limits(args.blas_threads, user_api="blas") if args.blas_threads else None
        try:
            t = time.perf_counter()
            for _ in src.iter_batches(args.batch):
                pass
            print(f"{args.rows} x {args.features} float32 zarr (chunks of 1024 rows), {args.method} "
                  f"{args.cov if args.method == 'gmm' else 'lloyd'}, ks={ks}, batch {args.batch}, "
                  f"BLAS threads {args.blas_threads or 'default'}; one read pass {time.perf_counter() - t:.3f} s")
            best_sep = np.inf
            for _ in range(args.repeat):
                (reads, progress), sep = counter(), []
                t = time.perf_counter()
                for k in ks:
                    sep.append(fit_streaming(candidate_estimator(args.method, k, **kw), src, progress=progress))
                best_sep = min(best_sep, time.perf_counter() - t)
            print(f"  one after another      : {best_sep:7.2f} s, {reads[0]:5d} batch reads")
            modes = [("shared passes", None)] + ([(f"shared, {args.threads} threads", args.threads)]
                                                 if args.threads > 1 else [])
            for label, n_threads in modes:
                best = np.inf
                for _ in range(args.repeat):
                    (reads, progress), ests = counter(), [candidate_estimator(args.method, k, **kw) for k in ks]
                    t = time.perf_counter()
                    if n_threads:
                        with threaded_updates(n_threads):
                            fits = fit_candidates(ests, src, progress=progress)
                    else:
                        fits = fit_candidates(ests, src, progress=progress)
                    best = min(best, time.perf_counter() - t)
                exact = all(np.array_equal(getattr(a, n), getattr(b, n)) for a, b in zip(ests, sep) for n in attrs)
                print(f"  {label:23s}: {best:7.2f} s, {reads[0]:5d} batch reads, {fits.passes} passes, "
                      f"x{best_sep / best:.2f} vs one after another, exact={exact}")
        finally:
            if limits is not None:
                limits.restore_original_limits()


if __name__ == "__main__":
    main()
