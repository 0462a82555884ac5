#!/usr/bin/env python
"""Clustering and PCA quality on real images: streamclust against in-memory scikit-learn.

    python scripts/bench_quality.py [--seeds 5] [--pca 50] [--workdir DIR] [--out quality.json]

The data are **real** (``$STREAMCLUST_DATA``, default ``../shared/data``), whole sets:

- **MNIST**, all 20,000 digits, ingested at 28x28 by ``streamclust ingest``.  streamclust:
  ``fit`` (PCA ``--pca`` components, k-means 10, a 10-component diagonal mixture, seed s)
  then ``assign`` and ``evaluate`` against the labels.  scikit-learn: ``KMeans(10,
  n_init=1)`` and ``GaussianMixture(10, "diag")`` with the same seed, in memory, **on the
  same features** (streamclust's ``features.zarr``).  ARI, NMI and best-match accuracy,
  mean over the seeds.
- **ORL faces**, all 400 (40 people), at 64x64: the top-10 eigenfaces of ``fit``'s PCA
  against ``PCA(svd_solver="full")`` on the same pixels (|cosine| per component).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data"))


def ingest(zip_name: str, run: Path, size: int) -> Path:
    if not (run / ".streamclust" / "ingest.done").exists():
        subprocess.run([sys.executable, "-m", "streamclust", "ingest", str(DATA / zip_name), str(run),
                        "--size", str(size), "--quiet"], check=True, cwd=ROOT)
    return run


def labels_of(run: Path, labels_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    from streamclust.store import ok_rows

    rows = ok_rows(run)
    with open(run / "manifest.csv", newline="") as fh:
        member_of = {int(r["index"]): r["member"] for r in csv.DictReader(fh) if r["index"]}
    with open(labels_csv, newline="") as fh:
        label = {r["member"]: r["label"] for r in csv.DictReader(fh)}
    return rows, np.array([label[member_of[int(i)]] for i in rows])


def mnist(work: Path, seeds: int, n_pca: int) -> dict:
    import zarr
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from streamclust.config import FitConfig
    from streamclust.pipeline.assign import assign_run
    from streamclust.pipeline.evaluate import evaluate_run, score_labels
    from streamclust.pipeline.fit import fit_run

    run = ingest("mnist.zip", work / "mnist", 28)
    _, y = labels_of(run, DATA / "mnist_labels.csv")
    scores = {"streamclust": {"kmeans": [], "gmm": []}, "sklearn": {"kmeans": [], "gmm": []}}
    seconds = {"streamclust": 0.0, "sklearn": 0.0}
    for seed in range(seeds):
        t = time.perf_counter()
        fit_run(run, FitConfig(pca_components=n_pca, clusters=10, gmm_components=10, covariance="diag", seed=seed),
                overwrite=True, progress=False)
        assign_run(run, progress=False)
        seconds["streamclust"] += time.perf_counter() - t
        res = evaluate_run(run, labels=DATA / "mnist_labels.csv")["methods"]
        for m in ("kmeans", "gmm"):
            scores["streamclust"][m].append(res[m])
        F = zarr.open_array(str(run / "features.zarr"), mode="r")[:].astype(np.float64)
        t = time.perf_counter()
        km = KMeans(10, n_init=1, random_state=seed).fit_predict(F)
        gm = GaussianMixture(10, covariance_type="diag", random_state=seed).fit(F).predict(F)
        seconds["sklearn"] += time.perf_counter() - t
        scores["sklearn"]["kmeans"].append(score_labels(y, km))
        scores["sklearn"]["gmm"].append(score_labels(y, gm))
    mean = {route: {m: {k: float(np.mean([s[k] for s in v])) for k in v[0]} for m, v in r.items()}
            for route, r in scores.items()}
    return {"n": int(y.size), "pca": n_pca, "seeds": seeds, "mean": mean, "per_seed": scores, "seconds": seconds}


def orl(work: Path) -> dict:
    import zarr
    from sklearn.decomposition import PCA

    from streamclust.config import FitConfig
    from streamclust.models.io import load_model
    from streamclust.pipeline.fit import fit_run

    run = ingest("orl_faces.zip", work / "orl", 64)
    rows, _ = labels_of(run, DATA / "orl_faces_labels.csv")
    fit_run(run, FitConfig(pca_components=0.95, clusters=40, gmm_components=10, seed=0), overwrite=True,
            progress=False)
    pca = load_model(run / "model" / "pca.npz")
    X = zarr.open_array(str(run / "images.zarr"), mode="r")[:][rows].reshape(rows.size, -1).astype(np.float64)
    ref = PCA(pca.n_components_, svd_solver="full").fit(X)
    cos = np.abs(np.sum(pca.components_[:10] * ref.components_[:10], axis=1))
    return {"n": int(rows.size), "method": str(pca.method_), "n_components": int(pca.n_components_),
            "cosines_top10": cos.tolist(),
            "max_ratio_diff": float(np.max(np.abs(pca.explained_variance_ratio_ - ref.explained_variance_ratio_)))}


def report(res: dict) -> str:
    m = res["mnist"]
    L = [f"MNIST (real), all {m['n']:,} digits at 28x28, PCA {m['pca']}, k-means 10, GMM 10 diag; "
         f"mean of {m['seeds']} seeds; scikit-learn on streamclust's features\n",
         "| method | route | ARI | NMI | accuracy |", "|---|---|---:|---:|---:|"]
    for meth in ("kmeans", "gmm"):
        for route in ("streamclust", "sklearn"):
            r = m["mean"][route][meth]
            L.append(f"| {meth} | {route} | {r['ari']:.3f} | {r['nmi']:.3f} | {r['accuracy']:.3f} |")
    for meth in ("kmeans", "gmm"):
        d = m["mean"]["streamclust"][meth]["ari"] - m["mean"]["sklearn"][meth]["ari"]
        L.append(f"\n{meth}: ARI streamclust - scikit-learn = {d:+.3f}")
    o = res["orl"]
    L.append(f"\nORL faces (real), {o['n']} at 64x64: {o['method']} PCA, {o['n_components']} components for 0.95; "
             f"top-10 eigenfaces |cos| vs PCA(full): min {min(o['cosines_top10']):.6f}; "
             f"largest ratio difference {o['max_ratio_diff']:.2e}")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pca", type=int, default=50)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not (DATA / "mnist.zip").exists():
        print(f"skipped: {DATA / 'mnist.zip'} not found (set STREAMCLUST_DATA)")
        return 0
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    res = {"mnist": mnist(work, a.seeds, a.pca), "orl": orl(work)}
    print(report(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
