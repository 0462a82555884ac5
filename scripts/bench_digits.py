"""Clustering quality on the digits demo: streamclust's pipeline vs in-memory scikit-learn.

Both routes see the same ingested images (scikit-learn's 8x8 digits written as PNGs and
ingested at 8x8 RGB), the same number of principal components, clusters and mixture
components, and the same seeds; scores are averaged over the seeds.

    python scripts/bench_digits.py [--seeds 5] [--pca 20] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from streamclust.config import FitConfig, IngestConfig
from streamclust.demo import make_digits_archive
from streamclust.ingest import ingest
from streamclust.pipeline.assign import assign_run
from streamclust.pipeline.evaluate import evaluate_run, read_labels, score_labels
from streamclust.pipeline.fit import fit_run
from streamclust.store import ok_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pca", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-digits-"))
    src = make_digits_archive(tmp / "digits.zip")
    run = tmp / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    labels = read_labels(str(src) + ".labels.csv")

    rows = ok_rows(run)
    import csv
    with open(run / "manifest.csv", newline="") as fh:
        member_of = {int(r["index"]): r["member"] for r in csv.DictReader(fh) if r["index"]}
    y = np.array([labels[member_of[int(i)]] for i in rows])
    X = zarr.open_array(run / "images.zarr")[:][rows].reshape(len(rows), -1).astype(np.float64)

    scores = {"streamclust": {"kmeans": [], "gmm": []}, "sklearn": {"kmeans": [], "gmm": []}}
    times = {"streamclust": 0.0, "sklearn": 0.0}
    for seed in range(args.seeds):
        t = time.perf_counter()
        fit_run(run, FitConfig(pca_components=args.pca, clusters=10, gmm_components=10, covariance="diag",
                               seed=seed), overwrite=True, progress=False)
        assign_run(run, progress=False)
        times["streamclust"] += time.perf_counter() - t
        res = evaluate_run(run, labels=str(src) + ".labels.csv")["methods"]
        for m in ("kmeans", "gmm"):
            scores["streamclust"][m].append(res[m])
        t = time.perf_counter()
        F = PCA(args.pca, random_state=seed).fit_transform(X)
        km = KMeans(10, n_init=1, random_state=seed).fit_predict(F)
        gm = GaussianMixture(10, covariance_type="diag", random_state=seed).fit(F).predict(F)
        times["sklearn"] += time.perf_counter() - t
        scores["sklearn"]["kmeans"].append(score_labels(y, km))
        scores["sklearn"]["gmm"].append(score_labels(y, gm))

    mean = {route: {m: {k: float(np.mean([s[k] for s in v])) for k in v[0]} for m, v in r.items()}
            for route, r in scores.items()}
    print(f"digits (1797 images, 8x8), PCA {args.pca}, k-means 10, GMM 10 diag; mean of {args.seeds} seeds\n")
    print("| method | route | ARI | NMI | homogeneity | completeness | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for m in ("kmeans", "gmm"):
        for route in ("streamclust", "sklearn"):
            r = mean[route][m]
            print(f"| {m} | {route} | {r['ari']:.3f} | {r['nmi']:.3f} | {r['homogeneity']:.3f} | "
                  f"{r['completeness']:.3f} | {r['accuracy']:.3f} |")
    for m in ("kmeans", "gmm"):
        print(f"\n{m}: ARI difference streamclust - sklearn = {mean['streamclust'][m]['ari'] - mean['sklearn'][m]['ari']:+.3f}")
    print(f"\nwall (fit+assign vs PCA+KMeans+GMM), all seeds: streamclust {times['streamclust']:.1f} s, "
          f"sklearn {times['sklearn']:.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"mean": mean, "per_seed": scores, "seconds": times}, indent=2))


if __name__ == "__main__":
    main()
