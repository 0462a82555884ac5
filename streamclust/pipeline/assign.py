"""``streamclust assign``: the cluster and mixture component of every ok image, streamed.

Writes ``RUN_DIR/assignments.csv`` with one row per ok image (duplicates included),
sorted by ``index``: ``index, member, duplicate_of, cluster, distance, component,
log_likelihood``.  ``distance`` is the Euclidean distance to the k-means centroid in PCA
space; ``log_likelihood`` is the mixture's log density of the image's PCA scores (low
values are outliers).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

import numpy as np

from .. import stages
from .._atomic import atomic_open
from ..config import load_run_config
from ..ingest.manifest import read_manifest
from ..engine import RowSource
from ..models.io import load_model
from ..integrity import verify_output
from ..store import RunLayout, image_array
from .progress import PassBars

__all__ = ["assign_run", "ASSIGN_COLUMNS", "read_assignments", "load_fitted"]

logger = logging.getLogger(__name__)

ASSIGN_COLUMNS = ("index", "member", "duplicate_of", "cluster", "distance", "component", "log_likelihood")


def load_fitted(run_dir, backend=None) -> dict:
    """The fitted models of a run: ``{"pca": ..., "kmeans": ... or None, "gmm": ... or None}``.

    With ``backend`` (a :class:`~streamclust.engine.Backend`) their inference passes run
    there (the k-means and mixture products in its precision; the PCA keeps its own).
    """
    from .fit import on_backend

    layout = RunLayout.of(run_dir)
    layout.require("fit")
    out = {"pca": load_model(layout.model("pca"))}
    for name in ("kmeans", "gmm"):
        path = layout.model(name)
        out[name] = load_model(path) if path.exists() else None
    if backend is not None:
        on_backend(out["pca"], backend, precision=False)
        on_backend(out["kmeans"], backend)
        on_backend(out["gmm"], backend)
    out["gmm_columns"] = (out["gmm"]._streamclust_extra.get("pca_components") if out["gmm"] is not None else None)
    return out


def assign_rows(models: dict, X: np.ndarray) -> dict:
    """Pure: the assignment columns for a batch of pixel rows ``X`` (n, pixels)."""
    pca, km, gmm, m = models["pca"], models["kmeans"], models["gmm"], models["gmm_columns"]
    F = pca.transform(X).astype(np.float32).astype(np.float64)  # as stored in features.zarr
    n = F.shape[0]
    blank = [""] * n
    out = {"cluster": blank, "distance": blank, "component": blank, "log_likelihood": blank}
    if km is not None:
        d = km.transform(F)
        out["cluster"] = np.argmin(d, axis=1)
        out["distance"] = d[np.arange(n), out["cluster"]]
    if gmm is not None:
        G = F[:, :m] if m else F
        out["component"] = gmm.predict(G)
        out["log_likelihood"] = gmm.score_samples(G)
    return out


def _assign_block(models: dict, source: RowSource, lo: int, hi: int, batch_size: int) -> list:
    return [(start, assign_rows(models, source.read(start, min(start + batch_size, hi), dtype=np.float32)))
            for start in range(lo, hi, batch_size)]


def _assigned_blocks(models: dict, source: RowSource, batch_size: int, client):
    """``(start, columns)`` in row order; on a dask cluster, one task per block of rows."""
    if client is None:
        for start, X in source.iter_batches(batch_size, dtype=np.float32):
            yield start, assign_rows(models, X)
        return
    from collections import deque

    from ..distributed import block_ranges, put

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    models_f, source_f = put(client, models), put(client, source)
    inflight: deque = deque()
    for lo, hi in block_ranges(source.n_samples, batch_size, source.chunk_rows, min_blocks=2 * n_workers):
        inflight.append(client.submit(_assign_block, models_f, source_f, lo, hi, batch_size, pure=False))
        if len(inflight) >= 2 * n_workers:
            yield from inflight.popleft().result()
    while inflight:
        yield from inflight.popleft().result()


def assign_run(run_dir: str | os.PathLike, *, batch_size: int | None = None, progress: bool | None = None,
               client=None, backend: str = "auto", device: str = "auto", precision: str = "float64") -> Path:
    """Assign every ok image of ``run_dir``; returns the path of ``assignments.csv``.

    With a dask.distributed ``client`` the blocks of rows are assigned by tasks and written
    here in order, so the file is the same.  ``backend``, ``device`` and ``precision`` say
    where the PCA scores, distances and likelihoods are computed
    (:func:`~streamclust.pipeline.fit.stage_backend`; NumPy on a dask cluster).
    """
    from .fit import stage_backend

    where = stage_backend(backend, device, precision, client)  # refused here, before anything is written
    layout = RunLayout.of(run_dir)
    models = load_fitted(run_dir, where)
    logger.log(logging.DEBUG if where.is_numpy else logging.INFO, "assigning with %s", where.describe())
    rows, members, dups = [], [], []
    for r in read_manifest(layout.manifest):
        if r["status"] == "ok":
            rows.append(int(r["index"]))
            members.append(r["member"])
            dups.append(r["duplicate_of"])
    order = np.argsort(rows)
    rows = np.asarray(rows, dtype=np.int64)[order]
    members = [members[i] for i in order]
    dups = [dups[i] for i in order]
    images = image_array(layout.root)
    bs = batch_size or int(images.chunks[0])
    source = RowSource(images, rows)
    t0 = time.perf_counter()
    features = (load_run_config(layout.root).get("fit") or {}).get("features", "pixels")
    if features == "latents":
        return _assign_latents(layout, models, rows, members, dups, bs, client, progress, t0)
    path = layout.assignments
    bars = PassBars("assign", progress)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ASSIGN_COLUMNS)
        for start, cols in _assigned_blocks(models, source, bs, client):
            n = len(cols["cluster"])
            for i in range(n):
                j = start + i
                writer.writerow([rows[j], members[j], dups[j], cols["cluster"][i], _num(cols["distance"][i]),
                                 cols["component"][i], _num(cols["log_likelihood"][i])])
            bars("assigning", start + n, source.n_samples)
    bars.close()
    stages.complete(layout, "assign", rows=int(rows.size), seconds=round(time.perf_counter() - t0, 3))
    return path


def _assign_latents(layout, models, rows, members, dups, bs, client, progress, t0) -> Path:
    """Models fitted on autoencoder latents: assign every fitted image from ``latents.zarr``;
    a duplicate gets the values of the image it repeats (identical bytes, identical latents)."""
    lat = verify_output(layout, "latents")
    fit_rows = np.load(layout.fit_rows, allow_pickle=False)
    cols: dict[str, list] = {c: [] for c in ("cluster", "distance", "component", "log_likelihood")}
    bars = PassBars("assign", progress)
    source = RowSource(lat)
    for start, block in _assigned_blocks(models, source, bs, client):
        for c in cols:
            cols[c].extend(list(block[c]))
        bars("assigning (latents)", start + len(block["cluster"]), source.n_samples)
    bars.close()
    key = np.array([int(d) if d else r for r, d in zip(rows, dups)], dtype=np.int64)
    pos = np.searchsorted(fit_rows, key)
    path = layout.assignments
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ASSIGN_COLUMNS)
        for j, p in enumerate(pos):
            writer.writerow([rows[j], members[j], dups[j], cols["cluster"][p], _num(cols["distance"][p]),
                             cols["component"][p], _num(cols["log_likelihood"][p])])
    stages.complete(layout, "assign", rows=int(len(rows)), seconds=round(time.perf_counter() - t0, 3))
    return path


def _num(x) -> str:
    return "" if x == "" else f"{float(x):.6g}"


def read_assignments(run_dir) -> dict[str, np.ndarray]:
    """``assignments.csv`` as arrays (``cluster``/``component`` are -1 where absent)."""
    layout = RunLayout.of(run_dir)
    layout.require("assign")
    path = layout.assignments
    cols = {c: [] for c in ASSIGN_COLUMNS}
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            for c in ASSIGN_COLUMNS:
                cols[c].append(r[c])
    out = {
        "index": np.asarray(cols["index"], dtype=np.int64),
        "member": np.asarray(cols["member"], dtype=object),
        "duplicate_of": np.asarray([int(v) if v else -1 for v in cols["duplicate_of"]], dtype=np.int64),
    }
    for c in ("cluster", "component"):
        out[c] = np.asarray([int(v) if v else -1 for v in cols[c]], dtype=np.int64)
    for c in ("distance", "log_likelihood"):
        out[c] = np.asarray([float(v) if v else np.nan for v in cols[c]], dtype=np.float64)
    return out
