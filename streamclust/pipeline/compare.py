"""``streamclust compare``: one table comparing every fitted method of one or more runs.

A run directory holds one fit, on the pixels or on an autoencoder's latents
(``fit --features latents``); :func:`compare_runs` puts the rows of several runs in one
table (say a pixels run and a latents run of the same images, see docs/cli.md).  A row
per fitted clustering method of a run:

``method``
    ``kmeans`` (``model/kmeans.npz``), ``gmm`` (``model/gmm.npz``), ``agglomerative``
    (``model/agglomerative.npz``) — all three fitted on ``features.zarr`` (the PCA
    scores) — and ``tsne_kmeans`` (``model/tsne_kmeans.npz``: k-means of the t-SNE map
    ``model/tsne.npz``, itself fitted on the kernel PCA scores of ``model/kpca.npz`` when
    that file exists, else on the PCA scores).
``features``
    What the run's models were fitted on (its saved ``fit`` settings): ``pixels``, or
    ``latents`` (the encoded autoencoder's latents, ``latents.zarr``).
``reduction``
    The reduction the method's input derives from: ``pca`` or ``kpca`` (of the pixels,
    or of the latents when ``features`` is ``latents``).
``recon_mae``
    Reconstruction error of that reduction: the mean absolute pixel error (pixel
    units, 0-255 for 8-bit images) over every ok image, streamed:
    ``pca.inverse_transform(pca.transform(x))``; for ``kpca`` (fitted on the PCA
    scores, with ``fit_inverse_transform=True``) ``pca.inverse_transform(kpca.inverse_transform(
    kpca.transform(pca.transform(x))))``.  Empty when the reduction has no inverse map.
    For a ``latents`` run the error is still in pixels, so the two kinds of run
    compare: ``x`` above is the image's latent vector (``latents.zarr``), and the
    reduction's reconstruction of it goes through the network's decoder,
    ``255 * decode(pca.inverse_transform(pca.transform(z)))``, unrounded, against the
    stored pixels; duplicates count as the image they repeat (they were encoded once).
    This includes the autoencoder's own error.  Empty, with a logged warning, when
    PyTorch is not installed.
``inertia``, ``log_likelihood``
    The within-cluster sum of squares in the method's own space (k-means,
    agglomerative, t-SNE k-means), or the mean log-likelihood per image of the mixture
    (streamed over the features).
``silhouette``
    Silhouette of the clustering in the run's PCA feature space (``features.zarr``), on
    a seeded sample of the fitted images (the same sample for every method, so the
    figures compare within a run; across runs of other ``features`` the spaces differ).
``ari``, ``nmi``, ``accuracy``
    With labels: adjusted Rand index, normalised mutual information and best-match
    accuracy (Hungarian matching; ``max(acc, 1 - acc)`` for two clusters and two classes)
    over the fitted images that have a label.
``fit_seconds``
    The stage's time from ``fit_summary.json``, when recorded.

The labels of a method are its model's ``labels_`` (one per fitted image, the rows of
``model/fit_rows.npy``), or, for the mixture, its predictions streamed over the features.

:func:`compare_runs` adds a leading ``run`` key (the directory's name) to every row
when it compares more than one run; ``compare.csv`` (written in each run) has no ``run``
column.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from .. import stages
from .._atomic import atomic_open
from ..config import load_run_config
from ..errors import RunDirError, UsageError
from ..ingest.manifest import read_manifest
from ..engine import RowSource
from ..integrity import verify_output
from ..models.io import load_model
from ..store import RunLayout, image_array, ok_rows
from .evaluate import best_match_accuracy, labels_from_folders, read_labels

__all__ = ["compare_run", "compare_runs", "compare_backend", "format_compare", "run_features", "COMPARE_COLUMNS",
           "METHODS"]

logger = logging.getLogger(__name__)

#: the clustering methods compared, each a model of :data:`streamclust.stages.MODEL_FILES`
METHODS = ("kmeans", "gmm", "agglomerative", "tsne_kmeans")
COMPARE_COLUMNS = ("method", "features", "reduction", "n_clusters", "recon_mae", "inertia", "log_likelihood",
                   "silhouette", "ari", "nmi", "accuracy", "fit_seconds")
#: rows read per batch when streaming images or features
_BATCH = 1024
#: latent rows passed through the decoder at a time
_DECODE_BATCH = 256


# ---------------------------------------------------------------- reconstruction
def _recon_maps(pca, kpca, n_in: int) -> dict:
    """``{reduction: fn(X, F)}``: each reduction's reconstruction of the rows ``X`` it was
    fitted on (pixels or latents, ``n_in`` columns) from ``X`` and their PCA scores ``F``."""
    recon = {"pca": lambda X, F: pca.inverse_transform(F)}
    if kpca is not None and hasattr(kpca, "inverse_components_"):
        if kpca.n_features_in_ == pca.n_components_:  # kernel PCA of the PCA scores
            recon["kpca"] = lambda X, F: pca.inverse_transform(kpca.inverse_transform(kpca.transform(F)))
        elif kpca.n_features_in_ == n_in:  # kernel PCA of the input rows themselves
            recon["kpca"] = lambda X, F: kpca.inverse_transform(kpca.transform(X))
    return recon


def _reconstruction_errors(layout: RunLayout, pca, kpca) -> dict[str, float]:
    """Mean absolute pixel error of each reduction of the pixels over every ok image (one streamed pass)."""
    images = image_array(layout.root)
    n_pixels = int(np.prod(images.shape[1:]))
    # reconstruction of the pixels X from themselves and their PCA scores F (as features.zarr stores them)
    recon = _recon_maps(pca, kpca, n_pixels)
    totals = dict.fromkeys(recon, 0.0)
    count = 0
    source = RowSource(images, ok_rows(layout.root, drop_duplicates=False))
    for _, X in source.iter_batches(max(_BATCH, int(images.chunks[0])), dtype=np.float64):
        F = pca.transform(X).astype(np.float32).astype(np.float64)
        for name, fn in recon.items():
            totals[name] += float(np.abs(fn(X, F) - X).sum(dtype=np.float64))
        count += X.size
    return {name: total / count if count else float("nan") for name, total in totals.items()}


def _multiplicity(layout: RunLayout, rows: np.ndarray) -> np.ndarray:
    """How many ok images each of ``rows`` (the de-duplicated ok rows) stands for: 1 + its duplicates."""
    counts = np.ones(rows.size, dtype=np.float64)
    for r in read_manifest(layout.manifest):
        if r["status"] == "ok" and r["duplicate_of"]:
            pos = int(np.searchsorted(rows, int(r["duplicate_of"])))
            if pos < rows.size and rows[pos] == int(r["duplicate_of"]):
                counts[pos] += 1
    return counts


def _latent_reconstruction_errors(layout: RunLayout, pca, kpca, device: str) -> dict[str, float]:
    """Mean absolute pixel error of each reduction of the latents, decoded by the trained network.

    Streams the de-duplicated ok images and their latents (``latents.zarr`` row ``i`` is
    image ``ok_rows(run)[i]``) together, each image weighted by the ok images it stands
    for.  ``{}`` (with a warning) when PyTorch is not installed.
    """
    from ..deep._torch import INSTALL_HINT, require_torch

    try:
        torch = require_torch()
    except UsageError:
        logger.warning("%s was fitted on latents: its recon_mae is left empty because PyTorch is not installed "
                       "(%s)", layout.root, INSTALL_HINT)
        return {}
    from ..deep.train import load_net, resolve_device

    root = layout.root
    layout.require("encode", f"streamclust encode {root}` and `streamclust fit {root} --features latents")
    model = (load_run_config(root).get("encode") or {}).get("model")
    if model is None:
        raise RunDirError(f"{root}/config.json does not say which network was encoded; "
                          f"run `streamclust encode {root} --overwrite`, then fit again")
    latents = verify_output(layout, "latents")
    rows = ok_rows(root)
    if latents.shape != (rows.size, int(pca.n_features_in_)):
        raise RunDirError(f"latents.zarr of {root} ({latents.shape[0]} x {latents.shape[1]}) does not match the "
                          f"fitted models ({rows.size} images x {pca.n_features_in_} latents); "
                          f"run `streamclust fit {root} --features latents --overwrite`")
    dev = resolve_device(device)
    net = load_net(root, model, dev)
    weights = _multiplicity(layout, rows)
    images = image_array(layout.root)
    recon = _recon_maps(pca, kpca, int(latents.shape[1]))
    totals = dict.fromkeys(recon, 0.0)
    bs = max(_BATCH, int(images.chunks[0]))
    pixels, codes = RowSource(images, rows), RowSource(latents)

    def decode(Z: np.ndarray) -> np.ndarray:  # latents (float64) to pixel rows (float64, 0-255)
        out = np.empty((Z.shape[0], int(np.prod(images.shape[1:]))), dtype=np.float64)
        with torch.no_grad():
            for lo in range(0, Z.shape[0], _DECODE_BATCH):
                z = torch.from_numpy(np.ascontiguousarray(Z[lo:lo + _DECODE_BATCH], dtype=np.float32)).to(dev)
                x = net.decode(z).permute(0, 2, 3, 1).reshape(z.shape[0], -1)  # channels last, as stored
                out[lo:lo + z.shape[0]] = x.to("cpu", torch.float64).numpy()
        return out * 255.0

    for (lo, X), (_, Z) in zip(pixels.iter_batches(bs, dtype=np.float64), codes.iter_batches(bs, dtype=np.float64)):
        F = pca.transform(Z).astype(np.float32).astype(np.float64)  # as features.zarr stores them
        w = weights[lo:lo + X.shape[0]]
        for name, fn in recon.items():
            totals[name] += float(w @ np.abs(decode(fn(Z, F)) - X).sum(axis=1))
    count = float(weights.sum()) * int(np.prod(images.shape[1:]))
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
    fitted = {name: layout.model(name) for name in METHODS if layout.model(name).exists()}
    if methods is None:
        return fitted
    out = {}
    for name in methods:
        if name not in METHODS:
            raise UsageError(f"unknown method {name!r}; choose among {', '.join(METHODS)}")
        if name not in fitted:
            raise UsageError(
                f"method {name!r} was not fitted in {layout.root} "
                f"(no {layout.model(name).relative_to(layout.root)}); fit it first"
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
    device: str = "auto",
    backend: str = "auto",
    precision: str = "float64",
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
    device : str, default="auto"
        Where the passes run with the PyTorch backend (``auto``, ``cpu``, ``cuda``,
        ``cuda:N``), and the decoder for a run fitted on latents (which also takes
        ``mps``; the passes then run on the CPU).
    backend : {"auto", "numpy", "torch"}, default="auto"
        Where the PCA scores and the mixture's likelihoods are computed
        (:func:`~streamclust.pipeline.fit.stage_backend`).
    precision : {"float64", "float32"}, default="float64"
        The precision of the mixture's products on the PyTorch backend.

    Returns
    -------
    list of dict
        One dict per method, keyed by :data:`COMPARE_COLUMNS` (``None`` where a figure
        does not apply).
    """
    from sklearn.metrics import silhouette_score

    from .fit import on_backend

    where = compare_backend(backend, device, precision)
    layout = RunLayout.of(run_dir)
    layout.require("fit")
    if labels is not None and from_folders:
        raise UsageError("give either --labels labels.csv or --labels-from-folders, not both")
    if int(sample) < 2:
        raise UsageError(f"--sample must be at least 2, got {sample}")
    models = _method_models(layout, methods)
    if not models:
        raise UsageError(f"no clustering method was fitted in {layout.root}")
    feature_kind = run_features(layout.root)
    logger.log(logging.DEBUG if where.is_numpy else logging.INFO, "comparing the methods of %s with %s", layout.root,
               where.describe())
    pca = on_backend(load_model(layout.model("pca")), where, precision=False)
    kpca_path, tsne_path = layout.model("kpca"), layout.model("tsne")
    kpca = load_model(kpca_path) if kpca_path.exists() else None
    tsne = load_model(tsne_path) if tsne_path.exists() else None
    fit_rows = np.load(layout.fit_rows, allow_pickle=False)
    n = int(fit_rows.size)
    features = verify_output(layout, "features")
    seconds = {}
    if layout.fit_summary.exists():
        seconds = json.loads(layout.fit_summary.read_text()).get("seconds", {})

    # predictions and the mixture's log-likelihood, streamed over the features
    preds: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    for name, path in models.items():
        model = on_backend(load_model(path), where)
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
    if feature_kind == "latents":
        recon = _latent_reconstruction_errors(layout, pca, kpca, device)
    else:
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
            "features": feature_kind,
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
    _write_csv(layout.compare_csv, rows)
    stages.complete(layout, "compare")
    return rows


def compare_backend(backend: str, device: str, precision: str):
    """The backend of the passes: ``device`` as :func:`~streamclust.pipeline.fit.stage_backend`
    takes it (``mps``, which only the decoder uses, is the CPU for the passes)."""
    from .fit import stage_backend

    return stage_backend(backend, "cpu" if str(device) == "mps" else device, precision)


def run_features(run_dir: str | os.PathLike) -> str:
    """What the fit of ``run_dir`` was on: ``"pixels"`` or ``"latents"`` (its saved ``fit`` settings)."""
    return (load_run_config(run_dir).get("fit") or {}).get("features", "pixels")


def _run_names(run_dirs) -> list[str]:
    """Each directory's name; the path as given where two names coincide."""
    names = [Path(d).resolve().name or str(d) for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs)]


def compare_runs(run_dirs, **kwargs) -> list[dict]:
    """:func:`compare_run` on each of ``run_dirs``; their rows in one list.

    Parameters
    ----------
    run_dirs : list of path
        Run directories whose ``fit`` stage has completed, e.g. a pixels run and a
        latents run of the same images.  Each one's ``compare.csv`` is written.
    **kwargs
        Passed to :func:`compare_run` for every run (labels, methods, sample, seed, device,
        backend, precision); the backend is checked before any run is compared.

    Returns
    -------
    list of dict
        The rows of every run in the order given; with more than one run each row also
        has a ``run`` key, the directory's name (its path as given where two names
        coincide), shown first by :func:`format_compare`.
    """
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UsageError("give at least one run directory")
    compare_backend(kwargs.get("backend", "auto"), kwargs.get("device", "auto"), kwargs.get("precision", "float64"))
    for d in run_dirs:  # every run must be ready before any is compared
        RunLayout.of(d).require("fit")
    names = _run_names(run_dirs)
    rows = []
    for name, d in zip(names, run_dirs):
        for row in compare_run(d, **kwargs):
            rows.append({"run": name, **row} if len(run_dirs) > 1 else row)
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
    """The comparison as an aligned text table (``-`` where a figure does not apply).

    A leading ``run`` column is shown when the rows carry a ``run`` key (see :func:`compare_runs`).
    """
    heads = {"run": "run", "method": "method", "features": "features", "reduction": "reduction", "n_clusters": "k",
             "recon_mae": "recon MAE", "inertia": "inertia", "log_likelihood": "log-lik", "silhouette": "silhouette",
             "ari": "ARI", "nmi": "NMI", "accuracy": "accuracy", "fit_seconds": "fit s"}
    text_cols = ("run", "method", "features", "reduction")
    shown = ("run", *COMPARE_COLUMNS) if any("run" in r for r in rows) else COMPARE_COLUMNS
    cols = [c for c in shown if any(_cell(r.get(c)) for r in rows) or c in ("method", "n_clusters")]

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
        cells = [v.ljust(w) if c in text_cols else v.rjust(w) for c, v, w in zip(cols, line, widths)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
