#!/usr/bin/env python
"""Time StreamingKMeans and StreamingGaussianMixture fits on float32 (and float64) input.

    python scripts/bench_float32.py [--n 40000] [--d 128] [--repeat 3] [--out bench.json]

The data are synthetic: ``make_blobs`` (60 centres, seed 0) in ``d`` dimensions, cast to
float32 once (the float64 runs use the same values).  Each fit runs a fixed number of
passes (``tol=0``), so that the figures compare the cost of a pass and not a different
number of iterations:

- k-means: ``StreamingKMeans(50, method="lloyd", max_iter=20, tol=0)`` (seeding pass,
  20 Lloyd passes, labelling pass), then ``predict`` and ``transform``;
- GMM: ``StreamingGaussianMixture(20, covariance_type="diag", max_iter=20, tol=0)``
  (``init_params="kmeans"``), then ``predict_proba``.

BLAS is limited to one thread, as the ``fit`` pipeline does.  The median of ``--repeat``
runs is reported, in seconds: wall time and CPU time of this process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from streamclust import StreamingGaussianMixture, StreamingKMeans


def _time(fn) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``fn()``; with one BLAS thread the CPU time is the work
    done, less disturbed than the wall time when other processes share the cores."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench(X: np.ndarray, repeat: int) -> dict:
    out: dict[str, list[tuple[float, float]]] = {"kmeans_fit": [], "kmeans_predict_transform": [], "gmm_fit": [],
                                   "gmm_predict_proba": []}
    for _ in range(repeat):
        km = StreamingKMeans(50, method="lloyd", max_iter=20, tol=0.0, batch_size=8192, random_state=0)
        out["kmeans_fit"].append(_time(lambda: km.fit(X)))
        out["kmeans_predict_transform"].append(_time(lambda: (km.predict(X), km.transform(X))))
        gm = StreamingGaussianMixture(20, covariance_type="diag", max_iter=20, tol=0.0, batch_size=8192,
                                      random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            out["gmm_fit"].append(_time(lambda: gm.fit(X)))
        out["gmm_predict_proba"].append(_time(lambda: gm.predict_proba(X)))
    res = {f"{k}_wall": round(statistics.median(w for w, _ in v), 3) for k, v in out.items()}
    res.update({f"{k}_cpu": round(statistics.median(c for _, c in v), 3) for k, v in out.items()})
    res["kmeans_centers_dtype"] = str(km.cluster_centers_.dtype)
    res["gmm_means_dtype"] = str(gm.means_.dtype)
    res["kmeans_inertia"] = float(km.inertia_)
    res["gmm_lower_bound"] = float(gm.lower_bound_)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    X, _ = make_blobs(n_samples=args.n, n_features=args.d, centers=60, cluster_std=4.0, random_state=0)
    X32 = X.astype(np.float32)
    results = {}
    with threadpool_limits(1):
        for name, data in (("float32", X32), ("float64", X32.astype(np.float64))):
            results[name] = bench(data, args.repeat)
            print(name, json.dumps(results[name]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
