"""What the report reads from a run directory: small tables, and only the image rows it shows.

Nothing here reads the whole image store: pixels are fetched by row number
(:func:`read_rows`), PCA scores of a sample by position in ``features.zarr``
(:func:`read_features`), and the manifest is streamed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import zarr

from ..ingest.manifest import read_manifest
from ..integrity import verify_output
from ..store import RunLayout

__all__ = [
    "read_json",
    "read_rows",
    "read_features",
    "manifest_overview",
    "stratified_sample",
]

logger = logging.getLogger(__name__)


def read_json(path: Path) -> dict | None:
    """A JSON file as a dict, or ``None`` when it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return None
    return value if isinstance(value, dict) else None


def read_rows(images: zarr.Array, rows) -> np.ndarray:
    """Pixels of ``rows`` of ``images.zarr`` (in the given order; repeats allowed).

    Reads the sorted unique rows with an orthogonal selection, so only the chunks that
    hold them are decoded.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        return np.empty((0, *images.shape[1:]), dtype=images.dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    data = np.asarray(images.oindex[uniq])
    return data[inverse]


def read_features(layout: RunLayout, rows: np.ndarray, pca, images: zarr.Array) -> np.ndarray:
    """PCA scores (float64) of image ``rows``.

    Rows that were part of the fit are read from ``features.zarr`` (``k`` numbers per
    image); any other row (or a run without ``features.zarr``) is projected from its
    pixels.
    """
    rows = np.asarray(rows, dtype=np.int64)
    k = int(pca.n_components_)
    out = np.empty((rows.size, k), dtype=np.float64)
    if rows.size == 0:
        return out
    todo = np.ones(rows.size, dtype=bool)
    feat_path = layout.features
    rows_path = layout.fit_rows
    if feat_path.exists() and rows_path.exists():
        fit_rows = np.load(rows_path, allow_pickle=False)
        feats = verify_output(layout, "features")
        if fit_rows.ndim == 1 and feats.shape == (fit_rows.size, k) and fit_rows.size:
            order = np.argsort(fit_rows, kind="stable")
            pos = np.searchsorted(fit_rows, rows, sorter=order)
            pos = np.minimum(pos, fit_rows.size - 1)
            found = fit_rows[order[pos]] == rows
            if found.any():
                where = order[pos[found]]
                uniq, inverse = np.unique(where, return_inverse=True)
                out[found] = np.asarray(feats.oindex[uniq, :], dtype=np.float64)[inverse]
                todo &= ~found
    if todo.any():
        pixels = read_rows(images, rows[todo]).reshape(int(todo.sum()), -1).astype(np.float32)
        out[todo] = pca.transform(pixels).astype(np.float32)  # as stored in features.zarr
    return out


def manifest_overview(path: Path, max_examples: int = 3) -> dict:
    """Stream the manifest: members per status, and a few example members and reasons per skip."""
    counts: Counter = Counter()
    examples: dict[str, list[tuple[str, str]]] = {}
    duplicates = 0
    for row in read_manifest(path):
        status = row["status"]
        counts[status] += 1
        if status == "ok":
            duplicates += bool(row.get("duplicate_of"))
        else:
            ex = examples.setdefault(status, [])
            if len(ex) < max_examples:
                ex.append((row["member"], row.get("reason", "")))
    return {"counts": counts, "examples": examples, "duplicates": duplicates}


def stratified_sample(labels: np.ndarray, n_max: int, rng: np.random.Generator) -> np.ndarray:
    """Positions (sorted) of a sample of at most ``n_max`` items, stratified by ``labels``.

    Each label gets a share proportional to its size (largest remainders), and at least
    one item while the budget allows, so small clusters stay visible.
    """
    labels = np.asarray(labels)
    n = labels.size
    if n <= n_max:
        return np.arange(n)
    values, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    exact = sizes * (n_max / n)
    quota = np.maximum(np.floor(exact).astype(np.int64), 1)  # every stratum shows up
    # spread what is left by largest remainder, or take back from the largest strata
    left = n_max - int(quota.sum())
    rem = exact - np.floor(exact)
    for s in np.argsort(-rem, kind="stable"):
        if left <= 0:
            break
        if quota[s] < sizes[s]:
            quota[s] += 1
            left -= 1
    while left < 0:
        s = int(np.argmax(quota))
        quota[s] -= 1
        left += 1
    quota = np.minimum(quota, sizes)
    groups = np.split(np.argsort(inverse, kind="stable"), np.cumsum(sizes)[:-1])
    picked = [rng.choice(members, size=int(q), replace=False) for members, q in zip(groups, quota) if q > 0]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)
