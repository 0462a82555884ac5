#!/usr/bin/env python
"""Time StreamingPCA fits and transforms on float32 input (issue 14: float32 attributes).

    python scripts/bench_float32_pca.py [--n 40000] [--d 256] [--repeat 3] [--out bench.json]

The data are synthetic: a rank-32 signal (decreasing scales, random orthonormal axes,
seed 0) plus isotropic noise and an offset, ``n x d``, cast to float32 once; the same
values in a zarr store (chunks of 4,096 rows, in memory) for the lazy transform.  Cases:

- ``covariance``: ``StreamingPCA(32, method="covariance", batch_size=4096).fit(X)``;
- ``randomized``: ``StreamingPCA(32, method="randomized", batch_size=4096, random_state=0)``
  (4 passes, float32 products);
- ``transform`` of the NumPy array and of the zarr store by the randomized model.

The median of ``--repeat`` runs is reported, in seconds: wall time and CPU time of this
process (the PCA's own thread pool, one thread per core).  Run it against another
checkout with ``PYTHONPATH=that/checkout`` to compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import zarr

from streamclust import StreamingPCA


def _time(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def data(n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(d, 32)))
    scales = np.geomspace(20.0, 1.0, 32)
    X = (rng.normal(size=(n, 32)) * scales) @ basis.T + 0.3 * rng.normal(size=(n, d)) + 5.0
    return X.astype(np.float32)


def bench(X: np.ndarray, repeat: int) -> dict:
    Z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(4096, X.shape[1]),
                          dtype=X.dtype)
    Z[:] = X
    out: dict[str, list[tuple[float, float]]] = {"covariance_fit": [], "randomized_fit": [],
                                                 "transform_numpy": [], "transform_zarr": []}
    for _ in range(repeat):
        cov = StreamingPCA(32, method="covariance", batch_size=4096)
        out["covariance_fit"].append(_time(lambda: cov.fit(X)))
        rnd = StreamingPCA(32, method="randomized", batch_size=4096, random_state=0)
        out["randomized_fit"].append(_time(lambda: rnd.fit(X)))
        out["transform_numpy"].append(_time(lambda: rnd.transform(X)))
        out["transform_zarr"].append(_time(lambda: rnd.transform(Z)))
    res = {f"{k}_wall": round(statistics.median(w for w, _ in v), 3) for k, v in out.items()}
    res.update({f"{k}_cpu": round(statistics.median(c for _, c in v), 3) for k, v in out.items()})
    res["components_dtype"] = str(rnd.components_.dtype)
    res["transform_zarr_dtype"] = str(rnd.transform(Z).dtype)
    res["explained_variance_ratio_sum"] = float(np.sum(cov.explained_variance_ratio_, dtype=np.float64))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    res = bench(data(args.n, args.d), args.repeat)
    print(json.dumps(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
