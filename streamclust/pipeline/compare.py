"""``streamclust compare``: one table comparing every fitted method of a run.

A row per fitted clustering method:

``method``
    ``kmeans`` (``model/kmeans.npz``), ``gmm`` (``model/gmm.npz``), ``agglomerative``
    (``model/agglomerative.npz``) — all three fitted on ``features.zarr`` (the PCA
    scores) — and ``tsne_kmeans`` (``model/tsne_kmeans.npz``: k-means of the t-SNE map
    ``model/tsne.npz``, itself fitted on the kernel PCA scores of ``model/kpca.npz`` when
    that file exists, else on the PCA scores).
``reduction``
    The pixel reduction the method's input derives from: ``pca`` or ``kpca``.
``recon_mae``
    Reconstruction error of that reduction: the mean absolute pixel error (pixel
    units, 0-255 for 8-bit images) over every ok image, streamed:
    ``pca.inverse_transform(pca.transform(x))``; for ``kpca`` (fitted on the PCA
    scores, with ``fit_inverse_transform=True``) ``pca.inverse_transform(kpca.inverse_transform(
    kpca.transform(pca.transform(x))))``.  Empty when the reduction has no inverse map.
``inertia``, ``log_likelihood``
    The within-cluster sum of squares in the method's own space (k-means,
    agglomerative, t-SNE k-means), or the mean log-likelihood per image of the mixture
    (streamed over the features).
``silhouette``
    Silhouette of the clustering in the PCA feature space, on a seeded sample of the
    fitted images (the same sample for every method, so the figures compare).
``ari``, ``nmi``, ``accuracy``
    With labels: adjusted Rand index, normalised mutual information and best-match
    accuracy (Hungarian matching; ``max(acc, 1 - acc)`` for two clusters and two classes)
    over the fitted images that have a label.
``fit_seconds``
    The stage's time from ``fit_summary.json``, when recorded.

The labels of a method are its model's ``labels_`` (one per fitted image, the rows of
``model/fit_rows.npy``), or, for the mixture, its predictions streamed over the features.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import zarr

from .._atomic import atomic_open, load_npz
from ..errors import RunDirError, UsageError
from ..ingest.manifest import read_manifest
from ..models._batches import RowSource
from ..store import RunLayout, ok_rows
from .evaluate import best_match_accuracy, labels_from_folders, read_labels

__all__ = ["compare_run", "format_compare", "load_any_model", "COMPARE_COLUMNS", "METHOD_FILES", "MODEL_FILES"]

#: clustering methods and the model file each is read from (``RUN_DIR/model/``)
METHOD_FILES = {
    "kmeans": "kmeans.npz",
    "gmm": "gmm.npz",
    "agglomerative": "agglomerative.npz",
    "tsne_kmeans": "tsne_kmeans.npz",
}
#: every model file compare reads
MODEL_FILES = ("pca.npz", *METHOD_FILES.values(), "kpca.npz", "tsne.npz")
COMPARE_COLUMNS = ("method", "reduction", "n_clusters", "recon_mae", "inertia", "log_likelihood", "silhouette",
                   "ari", "nmi", "accuracy", "fit_seconds")
#: rows read per batch when streaming images or features
_BATCH = 1024


def load_any_model(path: str | os.PathLike):
    """:func:`streamclust.models.io.load_model`, also for the kernel PCA, agglomerative and t-SNE models."""
    from ..models import io as model_io
    from ..models.agglomerative import StreamingAgglomerative
    from ..models.embed import StreamingTSNE
    from ..models.kpca import StreamingKernelPCA

    path = Path(path)
    if not path.exists():
        raise RunDirError(f"model file {str(path)!r} does not exist")
    arrays = load_npz(path)
    meta = json.loads(arrays.pop(model_io._META).tobytes().decode())
    registry = {**model_io._registry(),
                **{c.__name__: c for c in (StreamingKernelPCA, StreamingAgglomerative, StreamingTSNE)}}
    if meta["class"] not in registry:
        raise RunDirError(f"{path} holds an unknown model class {meta['class']!r}")
    cls = registry[meta["class"]]
    params = dict(meta["params"])
    for key in meta["array_params"]:
        params[key] = arrays.pop(f"param:{key}")
    est = cls(**{k: v for k, v in params.items() if k in cls().get_params(deep=False)})
    for key, value in arrays.items():
        setattr(est, key, value.item() if value.ndim == 0 else value)
    est._streamclust_extra = meta.get("extra", {})
    return est


# ---------------------------------------------------------------- reconstruction
def _reconstruction_errors(layout: RunLayout, pca, kpca) -> dict[str, float]:
    """Mean absolute pixel error of each reduction over every ok image (one streamed pass)."""
    images = zarr.open_array(str(layout.images), mode="r")
    n_pixels = int(np.prod(images.shape[1:]))
    # reconstruction of the pixels X from themselves and their PCA scores F (as features.zarr stores them)
    recon = {"pca": lambda X, F: pca.inverse_transform(F)}
    if kpca is not None and hasattr(kpca, "inverse_components_"):
        if kpca.n_features_in_ == pca.n_components_:  # kernel PCA of the PCA scores
            recon["kpca"] = lambda X, F: pca.inverse_transform(kpca.inverse_transform(kpca.transform(F)))
        elif kpca.n_features_in_ == n_pixels:  # kernel PCA of the pixels
            recon["kpca"] = lambda X, F: kpca.inverse_transform(kpca.transform(X))
    totals = dict.fromkeys(recon, 0.0)
    count = 0
    source = RowSource(images, ok_rows(layout.root, drop_duplicates=False))
    for _, X in source.iter_batches(max(_BATCH, int(images.chunks[0])), dtype=np.float64):
        F = pca.transform(X).astype(np.float32).astype(np.float64)
        for name, fn in recon.items():
            totals[name] += float(np.abs(fn(X, F) - X).sum(dtype=np.float64))
        count += X.size
    return {name: total / count if count else float("nan") for name, total in totals.items()}


# ------------------------------------------------------------------------ labels
def _true_labels(layout: RunLayout, fit_rows: np.ndarray, labels, from_folders: bool):
    """``(mask, y)``: which fitted images have a label, and their labels."""
    members = {int(r["index"]): r["member"] for r in read_manifest(layout.manifest) if r["status"] == "ok"}
    names = [members.get(int(i), "") for i in fit_rows]
    mapping = labels_from_folders(names) if from_folders else read_labels(labels)
    mask = np.array([m in mapping for m in names], dtype=bool)
    if not mask.any():
        raise UsageError("none of the run's images has a label; check the member names in the labels file")
    y = np.array([mapping[m] for m, k in zip(names, mask) if k])
    return mask, y


def _score(y, pred) -> dict[str, float]:
    from sklearn import metrics

    return {
        "ari": float(metrics.adjusted_rand_score(y, pred)),
        "nmi": float(metrics.normalized_mutual_info_score(y, pred)),
        "accuracy": best_match_accuracy(y, pred),
    }


# ------------------------------------------------------------------------ driver
def _method_models(layout: RunLayout, methods) -> dict:
    fitted = {name: layout.model_dir / f for name, f in METHOD_FILES.items() if (layout.model_dir / f).exists()}
    if methods is None:
        return fitted
    out = {}
    for name in methods:
        if name not in METHOD_FILES:
            raise UsageError(f"unknown method {name!r}; choose among {', '.join(METHOD_FILES)}")
        if name not in fitted:
            raise UsageError(
                f"method {name!r} was not fitted in {layout.root} (no model/{METHOD_FILES[name]}); fit it first"
            )
        out[name] = fitted[name]
    return out


def compare_run(
    run_dir: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    from_folders: bool = False,
    methods=None,
    sample: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Compare the fitted methods of ``run_dir``; writes ``RUN_DIR/compare.csv`` and returns its rows.

    Parameters
    ----------
    run_dir : path
        A run directory whose ``fit`` stage has completed.
    labels : path, default=None
        CSV ``member,label`` to score the clusterings against.
    from_folders : bool, default=False
        Take each image's label from its parent folder instead.
    methods : list of str, default=None
        Methods to compare (``kmeans``, ``gmm``, ``agglomerative``, ``tsne_kmeans``);
        ``None`` compares every fitted one.  A method that was not fitted is an error.
    sample : int, default=2000
        Images the silhouette is computed on.
    seed : int, default=0
        Seed of the silhouette sample.

    Returns
    -------
    list of dict
        One dict per method, keyed by :data:`COMPARE_COLUMNS` (``None`` where a figure
        does not apply).
    """
    from sklearn.metrics import silhouette_score

    layout = RunLayout.of(run_dir)
    layout.require("fit", f"streamclust fit {run_dir}")
    if labels is not None and from_folders:
        raise UsageError("give either --labels labels.csv or --labels-from-folders, not both")
    if int(sample) < 2:
        raise UsageError(f"--sample must be at least 2, got {sample}")
    models = _method_models(layout, methods)
    if not models:
        raise UsageError(f"no clustering method was fitted in {layout.root}")
    pca = load_any_model(layout.model_dir / "pca.npz")
    kpca_path, tsne_path = layout.model_dir / "kpca.npz", layout.model_dir / "tsne.npz"
    kpca = load_any_model(kpca_path) if kpca_path.exists() else None
    tsne = load_any_model(tsne_path) if tsne_path.exists() else None
    fit_rows = np.load(layout.model_dir / "fit_rows.npy", allow_pickle=False)
    n = int(fit_rows.size)
    features = zarr.open_array(str(layout.root / "features.zarr"), mode="r")
    seconds = {}
    if (layout.root / "fit_summary.json").exists():
        seconds = json.loads((layout.root / "fit_summary.json").read_text()).get("seconds", {})

    # predictions and the mixture's log-likelihood, streamed over the features
    preds: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    for name, path in models.items():
        model = load_any_model(path)
        if name == "gmm":
            m = model._streamclust_extra.get("pca_components") or features.shape[1]
            source = RowSource(features, columns=int(m) if int(m) < features.shape[1] else None)
            pred = np.empty(n, dtype=np.int64)
            total = 0.0
            for lo, F in source.iter_batches(max(_BATCH, int(features.chunks[0]))):
                pred[lo : lo + F.shape[0]] = model.predict(F)
                total += float(model.score_samples(F).sum())
            preds[name] = pred
            extra[name] = {"log_likelihood": total / n, "inertia": None}
        else:
            pred = np.asarray(model.labels_)
            if pred.shape != (n,):
                raise RunDirError(
                    f"model/{path.name} holds labels of {pred.shape[0]} images, but {n} images were fitted; "
                    "fit it again"
                )
            preds[name] = pred.astype(np.int64)
            extra[name] = {"inertia": float(model.inertia_), "log_likelihood": None}

    reduction = {"kmeans": "pca", "gmm": "pca", "agglomerative": "pca", "tsne_kmeans": "pca"}
    if tsne is not None and kpca is not None and tsne.n_features_in_ == kpca.n_components_:
        reduction["tsne_kmeans"] = "kpca"
    recon = _reconstruction_errors(layout, pca, kpca)

    # silhouette on one seeded sample of the fitted images, in PCA space
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(int(sample), n), replace=False))
    F_sample = RowSource(features, idx).read(0, idx.size)

    truth = _true_labels(layout, fit_rows, labels, from_folders) if (labels is not None or from_folders) else None
    rows = []
    for name in models:
        pred = preds[name]
        k = int(np.unique(pred).size)
        sub = pred[idx]
        n_sub = int(np.unique(sub).size)
        sil = float(silhouette_score(F_sample, sub)) if 2 <= n_sub < idx.size else None
        row = {
            "method": name,
            "reduction": reduction[name],
            "n_clusters": k,
            "recon_mae": recon.get(reduction[name]),
            "inertia": extra[name]["inertia"],
            "log_likelihood": extra[name]["log_likelihood"],
            "silhouette": sil,
            "ari": None,
            "nmi": None,
            "accuracy": None,
            "fit_seconds": seconds.get(name),
        }
        if truth is not None:
            mask, y = truth
            row.update(_score(y, pred[mask]))
        rows.append(row)
    _write_csv(layout.root / "compare.csv", rows)
    return rows


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COMPARE_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in COMPARE_COLUMNS])


def format_compare(rows: list[dict]) -> str:
    """The comparison as an aligned text table (``-`` where a figure does not apply)."""
    heads = {"method": "method", "reduction": "reduction", "n_clusters": "k", "recon_mae": "recon MAE",
             "inertia": "inertia", "log_likelihood": "log-lik", "silhouette": "silhouette", "ari": "ARI",
             "nmi": "NMI", "accuracy": "accuracy", "fit_seconds": "fit s"}
    cols = [c for c in COMPARE_COLUMNS if any(_cell(r.get(c)) for r in rows) or c in ("method", "n_clusters")]

    def fmt(c, v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if c in ("inertia", "log_likelihood") and isinstance(v, float):
            return f"{v:.5g}"
        if isinstance(v, float):
            return f"{v:.4f}" if c != "fit_seconds" else f"{v:.1f}"
        return str(v)

    table = [[heads[c] for c in cols]] + [[fmt(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = []
    for j, line in enumerate(table):
        cells = [v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
