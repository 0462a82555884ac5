"""``streamclust fit``: PCA on the pixels, then k-means and a Gaussian mixture in PCA space.

Stages, each resumable and marked done when its output is written:

1. ``pca``: :class:`StreamingPCA` over the ok, non-duplicate rows of ``images.zarr``
   → ``model/pca.npz``.
2. ``features``: the PCA scores of those rows → ``features.zarr`` (float32, ``(n, k)``),
   written chunk by chunk, so the later passes read ``k`` numbers per image, not pixels.
3. ``kmeans``: :class:`StreamingKMeans` on the features → ``model/kmeans.npz``.
4. ``gmm``: :class:`StreamingGaussianMixture` on the leading ``gmm_pca_components``
   features → ``model/gmm.npz``.

A model stage checkpoints its plan (model state, pass, row, random seed) every
``CHECKPOINT_SECONDS`` and at the end of each pass; a killed fit re-run with the same
command resumes there and ends with the same model files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .._atomic import write_bytes, write_json
from ..config import FitConfig, load_run_config
from ..errors import ConfigMismatchError, UsageError
from ..models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA
from ..models._base import fit_streaming
from ..models._batches import RowSource
from ..models._passes import Checkpointer, fingerprint
from ..models.io import load_model, save_model
from ..store import RunLayout, ok_rows
from .memory import batch_rows
from .progress import PassBars

__all__ = ["fit_run", "FitSummary", "CHECKPOINT_SECONDS", "DEFAULT_PCA_COMPONENTS"]

logger = logging.getLogger(__name__)

CHECKPOINT_SECONDS = float(os.environ.get("STREAMCLUST_CHECKPOINT_SECONDS", "20"))
DEFAULT_PCA_COMPONENTS = 256
STAGES = ("pca", "features", "kmeans", "gmm")


@dataclass
class FitSummary:
    run_dir: str
    n_images: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_stages: list[str] = field(default_factory=list)
    results: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        if not self.seconds:
            return f"fit already complete in {self.run_dir}: nothing to do."
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        res = ", ".join(f"{k}={v:.6g}" for k, v in self.results.items())
        return f"fitted {self.n_images} images in {self.run_dir} ({parts}). {res}"


def _reset_fit(layout: RunLayout) -> None:
    for child in (layout.model_dir, layout.root / "features.zarr"):
        if child.exists():
            shutil.rmtree(child)
    for stage in (*STAGES, "fit"):
        layout.marker(f"fit-{stage}" if stage != "fit" else "fit").unlink(missing_ok=True)
    for ck in layout.state_dir.glob("fit-*"):
        ck.unlink()


def _check_config(layout: RunLayout, config: FitConfig, overwrite: bool) -> None:
    run_cfg = load_run_config(layout.root)
    saved = run_cfg.get("fit")
    identity = config.identity()
    if saved is not None:
        saved_identity = {k: v for k, v in saved.items() if k not in FitConfig.NON_IDENTITY}
        if saved_identity != identity:
            if not overwrite:
                diff = sorted(k for k in set(saved_identity) | set(identity)
                              if saved_identity.get(k) != identity.get(k))
                raise ConfigMismatchError(
                    f"{layout.root} was fitted with other settings ({', '.join(diff)} differ); "
                    "pass --overwrite to fit again"
                )
            _reset_fit(layout)
        elif overwrite:
            _reset_fit(layout)
    elif overwrite:
        _reset_fit(layout)
    run_cfg["fit"] = config.to_dict()
    write_json(layout.config, run_cfg)


def _progress(stage: str, enabled: bool | None):
    return PassBars(stage, enabled)


def fit_run(
    run_dir: str | os.PathLike,
    config: FitConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> FitSummary:
    """Fit PCA, k-means and the mixture on an ingested run directory; resumes.

    Parameters
    ----------
    run_dir : path
        A run directory whose ingestion has completed.
    config : FitConfig, default=None
        ``None`` reuses the saved fit settings of this run (or the defaults).
    overwrite : bool, default=False
        Discard an earlier fit with other settings instead of refusing.
    progress : bool or None, default=None
        Progress bars; ``None`` shows them only on a terminal.
    """
    layout = RunLayout.of(run_dir)
    layout.require("ingest", f"streamclust ingest SOURCE {run_dir}")
    if config is None:
        saved = load_run_config(layout.root).get("fit")
        config = FitConfig.from_dict(saved) if saved else FitConfig()
    images = zarr.open_array(str(layout.images), mode="r")
    rows = ok_rows(layout.root, drop_duplicates=config.drop_duplicates)
    if rows.size < 2:
        raise UsageError(
            f"{layout.root} has {rows.size} usable image(s); fitting needs at least 2 "
            "(see manifest.csv for why members were skipped)"
        )
    _check_config(layout, config, overwrite)
    summary = FitSummary(str(layout.root), n_images=int(rows.size))
    if layout.is_done("fit"):
        return summary
    layout.model_dir.mkdir(parents=True, exist_ok=True)
    data_key = fingerprint([load_run_config(layout.root).get("ingest"), int(rows.size)])
    n_pixels = int(np.prod(images.shape[1:]))
    chunk_bytes = int(np.prod(images.chunks)) * images.dtype.itemsize

    # -- 1. PCA on pixels -------------------------------------------------------------
    pca_path = layout.model_dir / "pca.npz"
    k_req = config.pca_components
    if k_req is None:
        k_req = min(DEFAULT_PCA_COMPONENTS, int(rows.size), n_pixels)
    if not layout.is_done("fit-pca"):
        t0 = time.perf_counter()
        k_sketch = (k_req if isinstance(k_req, int) else DEFAULT_PCA_COMPONENTS) + 10
        bs = batch_rows("PCA", fixed=4 * n_pixels * k_sketch * 8 + 2 * chunk_bytes,
                        per_row=n_pixels * 13 + k_sketch * 8, limit=config.memory_limit,
                        requested=config.batch_size)
        pca = StreamingPCA(n_components=k_req, method=config.pca_method, batch_size=bs,
                           random_state=config.seed)
        _fit_stage(layout, "pca", pca, images, rows, data_key, config, progress)
        save_model(pca, pca_path)
        layout.marker("fit-pca").write_text("done\n")
        summary.seconds["pca"] = time.perf_counter() - t0
    pca = load_model(pca_path)
    summary.results["pca_explained_variance"] = float(np.sum(pca.explained_variance_ratio_))

    # -- 2. features --------------------------------------------------------------------
    feat_path = layout.root / "features.zarr"
    if not layout.is_done("fit-features"):
        t0 = time.perf_counter()
        _write_features(layout, pca, images, rows, config, progress)
        summary.seconds["features"] = time.perf_counter() - t0
    features = zarr.open_array(str(feat_path), mode="r")
    n_feat = features.shape[1]

    # -- 3. k-means ---------------------------------------------------------------------
    if config.clusters:
        if config.clusters > rows.size:
            raise UsageError(f"--clusters {config.clusters} is more than the {rows.size} usable images; lower it")
        if not layout.is_done("fit-kmeans"):
            t0 = time.perf_counter()
            k = config.clusters
            bs = batch_rows("k-means", fixed=4 * k * n_feat * 8, per_row=n_feat * 16 + k * 24,
                            limit=config.memory_limit, requested=config.batch_size, preferred=4096)
            km = StreamingKMeans(n_clusters=k, method=config.kmeans_method, batch_size=bs,
                                 max_iter=config.max_iter, random_state=config.seed)
            _fit_stage(layout, "kmeans", km, features, None, data_key, config, progress)
            save_model(km, layout.model_dir / "kmeans.npz")
            layout.marker("fit-kmeans").write_text("done\n")
            summary.seconds["kmeans"] = time.perf_counter() - t0
        km = load_model(layout.model_dir / "kmeans.npz")
        summary.results["kmeans_inertia"] = float(km.inertia_)
    else:
        summary.skipped_stages.append("kmeans")

    # -- 4. Gaussian mixture --------------------------------------------------------------
    if config.gmm_components:
        m = config.gmm_pca_components or n_feat
        if m > n_feat:
            raise UsageError(f"--gmm-pca-components {m} exceeds the {n_feat} PCA components; lower it")
        if config.gmm_components > rows.size:
            raise UsageError(f"--gmm-components {config.gmm_components} is more than the {rows.size} usable images")
        if not layout.is_done("fit-gmm"):
            t0 = time.perf_counter()
            g = config.gmm_components
            cov = m * m if config.covariance in ("full", "tied") else m
            fixed = 6 * g * cov * 8 if config.covariance == "full" else 6 * m * m * 8 + 6 * g * m * 8
            bs = batch_rows("the Gaussian mixture", fixed=fixed, per_row=g * m * 16 + g * 32 + m * 16,
                            limit=config.memory_limit, requested=config.batch_size, preferred=4096)
            gmm = StreamingGaussianMixture(n_components=g, covariance_type=config.covariance,
                                           max_iter=config.max_iter, batch_size=bs,
                                           random_state=config.seed)
            source = RowSource(features, columns=m if m < n_feat else None)
            _fit_stage(layout, "gmm", gmm, source, None, data_key, config, progress)
            save_model(gmm, layout.model_dir / "gmm.npz", extra={"pca_components": m})
            layout.marker("fit-gmm").write_text("done\n")
            summary.seconds["gmm"] = time.perf_counter() - t0
        gmm = load_model(layout.model_dir / "gmm.npz")
        summary.results["gmm_lower_bound"] = float(gmm.lower_bound_)
    else:
        summary.skipped_stages.append("gmm")

    write_json(layout.root / "fit_summary.json", {
        "n_images": summary.n_images, "seconds": {k: round(v, 3) for k, v in summary.seconds.items()},
        "results": summary.results,
    })
    layout.marker("fit").write_text("done\n")
    return summary


def _fit_stage(layout, stage, estimator, X, rows, data_key, config, progress) -> None:
    params = {k: v for k, v in estimator.get_params().items() if k != "batch_size"}
    ck = Checkpointer(layout.state_dir / f"fit-{stage}.ckpt.npz",
                      key=fingerprint([stage, params, data_key]), every_seconds=CHECKPOINT_SECONDS)
    logger.info("fitting %s", stage)
    with _progress(stage, progress) as bars:
        fit_streaming(estimator, X, rows=rows, checkpoint=ck, progress=bars)
    ck.clear()


def _write_features(layout: RunLayout, pca, images, rows: np.ndarray, config: FitConfig, progress) -> None:
    """PCA scores of the fitted rows, chunk by chunk; resumable at chunk granularity."""
    path = layout.root / "features.zarr"
    state_path = layout.state_dir / "fit-features.json"
    k = int(pca.n_components_)
    chunk = int(images.chunks[0])
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is None or not path.exists():
        feats = zarr.create_array(store=str(path), shape=(rows.size, k), chunks=(chunk, k),
                                  dtype="float32", fill_value=0.0, overwrite=True,
                                  dimension_names=("image", "component"))
        state = {"rows_done": 0}
        write_json(state_path, state)
    else:
        feats = zarr.open_array(str(path), mode="r+")
    source = RowSource(images, rows)
    bars = _progress("features", progress)
    try:
        for start in range(state["rows_done"], rows.size, chunk):
            stop = min(start + chunk, rows.size)
            X = source.read(start, stop, dtype=np.float32)
            feats[start:stop] = pca.transform(X).astype(np.float32)
            state["rows_done"] = stop
            write_json(state_path, state)
            bars("PCA scores", stop, rows.size)
    finally:
        bars.close()
    buf = io.BytesIO()
    np.save(buf, rows)
    write_bytes(layout.model_dir / "fit_rows.npy", buf.getvalue())
    layout.marker("fit-features").write_text("done\n")
