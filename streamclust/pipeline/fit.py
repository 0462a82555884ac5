"""``streamclust fit``: PCA on the pixels, then k-means and a Gaussian mixture in PCA space.

Stages, each resumable and marked done when its output is written:

1. ``pca``: :class:`StreamingPCA` over the ok, non-duplicate rows of ``images.zarr``
   → ``model/pca.npz``.  Its last pass also keeps every row's projection on the final
   sketch basis (``.streamclust/pca-sketch.zarr``, float64, removed after stage 2).
2. ``features``: the PCA scores of those rows → ``features.zarr`` (float32, ``(n, k)``,
   uncompressed, chunks of ``FEATURE_CHUNK_ROWS`` rows), written chunk by chunk, so the
   later passes read ``k`` numbers per image, not pixels.  The scores come from the
   kept projections (a small product per row), or from the pixels when there are none.
3. ``kmeans``: :class:`StreamingKMeans` on the features → ``model/kmeans.npz``.
4. ``gmm``: :class:`StreamingGaussianMixture` on the leading ``gmm_pca_components``
   features → ``model/gmm.npz``.  Stages 3 and 4 run with single-threaded BLAS.

A model stage checkpoints its plan (model state, pass, row, random seed) every
``CHECKPOINT_SECONDS`` and at the end of each pass; a killed fit re-run with the same
command resumes there and ends with the same model files.  The passes run on the backend
resolved once at the start (:func:`stage_backend`: ``--backend``, ``--device``,
``--precision``); backend and device are in neither the fit's settings identity nor the
checkpoint keys, and model files do not record them (a loaded model says ``auto``), so a
fit checkpointed on a GPU resumes on a CPU and its models load anywhere.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from .._atomic import load_npz, save_npz, write_bytes, write_json
from ..config import FitConfig, load_run_config
from ..errors import ConfigMismatchError, UsageError
from ..models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA
from ..engine.backend import PLACEMENT_PARAMS
from ..engine import Backend, Checkpointer, RowSource, fingerprint, fit_streaming, resolve_backend
from ..models._parallel import blocks as split_blocks, map_blocks
from ..models.io import load_model, save_model
from .. import stages
from ..store import RunLayout, image_array, images_location, ok_rows
from ..integrity import array_record, checksum_codecs, fit_damage, verify_images, verify_output
from .memory import batch_rows, host_room, mixture_memory_check, mixture_stage_bytes
from .pca_choice import DEFAULT_PCA_COMPONENTS, choose_pca, variance_note
from .estimate import gmm_phases, kmeans_phases
from .progress import PassBars

__all__ = ["fit_run", "reset_fit", "FitSummary", "CHECKPOINT_SECONDS", "DEFAULT_PCA_COMPONENTS", "stage_backend",
           "on_backend", "checkpoint_key", "NOT_IN_CHECKPOINT_KEY"]

logger = logging.getLogger(__name__)

CHECKPOINT_SECONDS = float(os.environ.get("STREAMCLUST_CHECKPOINT_SECONDS", "20"))
STAGES = ("pca", "features", "kmeans", "gmm", "agglomerative", "kpca", "tsne", "embedding", "tsne_kmeans")
#: rows per chunk of ``features.zarr`` (stored uncompressed: float32 scores hardly compress,
#: and the k-means and mixture passes read it tens of times); the model stages read
#: whole chunks per batch
FEATURE_CHUNK_ROWS = 8192
#: estimator parameters that do not change what a fit is, left out of its checkpoint key: a
#: fit checkpointed with one batch size, backend or device resumes with another
NOT_IN_CHECKPOINT_KEY = ("batch_size",) + PLACEMENT_PARAMS


def stage_backend(backend: str = "auto", device: str = "auto", precision: str = "float64",
                  client=None) -> Backend:
    """The :class:`~streamclust.engine.Backend` a command's passes run with, resolved once at its start.

    :func:`~streamclust.engine.resolve_backend` of the user's choices; with a dask
    ``client`` (``--scheduler``) the workers run NumPy, so ``auto`` is NumPy there and
    ``backend="torch"`` or a GPU device is refused.  Raises
    :class:`~streamclust.engine.BackendError` (one line: what is wrong, and the fix)
    before anything is written.
    """
    return resolve_backend(backend, device, precision, distributed=client is not None)


def on_backend(estimator, backend: Backend, *, precision: bool = True):
    """A loaded ``estimator`` set to run its inference passes on ``backend`` (when it has the
    parameters; ``precision`` too unless False, for the PCA whose ``dtype`` is its precision)."""
    if estimator is None:
        return None
    params = estimator.get_params(deep=False)
    wanted = {"backend": backend.name, "device": backend.device}
    if precision:
        wanted["precision"] = backend.precision
    estimator.set_params(**{k: v for k, v in wanted.items() if k in params})
    return estimator


@dataclass
class FitSummary:
    run_dir: str
    n_images: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_stages: list[str] = field(default_factory=list)
    results: dict[str, float] = field(default_factory=dict)
    #: the PCA delivered: method, requested (count or fraction), reached, n_components, limited_by
    pca: dict = field(default_factory=dict)
    #: plain-words notes on what differs from what was asked (e.g. a variance fraction not reached)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        notes = "".join(f" {n}." for n in self.notes)
        if not self.seconds:
            return f"fit already complete in {self.run_dir}: nothing to do.{notes}"
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        res = ", ".join(f"{k}={v:.6g}" for k, v in self.results.items())
        return f"fitted {self.n_images} images in {self.run_dir} ({parts}). {res}{notes}"


def _reset_fit(layout: RunLayout) -> None:
    """The fit, its sub-stages' markers and checkpoints, and everything downstream of it
    (derived from :data:`streamclust.stages.STAGES`), markers first."""
    stages.invalidate(layout, "fit", include_self=True)


def reset_fit(run_dir: str | os.PathLike) -> bool:
    """Discard the fit of ``run_dir``, complete or partial, and everything computed from it.

    The models, ``features.zarr``, ``embedding.zarr``, the fit's checkpoints and markers,
    and the outputs of every stage downstream of the fit (assignments, evaluation,
    select-k, samples, comparison, report: :func:`streamclust.stages.downstream`) are
    removed, completion markers first; the fit settings stay in ``config.json``, so
    ``streamclust fit`` with the same settings fits again.

    Parameters
    ----------
    run_dir : path
        A run directory.

    Returns
    -------
    bool
        Whether there was anything of a fit to discard.
    """
    layout = RunLayout.of(run_dir)
    found = stages.found_any(layout, "fit")
    if found:
        _reset_fit(layout)
    return found


def _setting(value) -> str:
    """A setting as the refusal names it: ``0.99``, ``diag``, ``kmeans,gmm``, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _check_config(layout: RunLayout, config: FitConfig, overwrite: bool) -> None:
    run_cfg = load_run_config(layout.root)
    saved = run_cfg.get("fit")
    identity = config.identity()
    if saved is not None:
        saved_identity = FitConfig.from_dict(saved).identity()  # defaults for fields added since
        if saved_identity != identity:
            if not overwrite:
                diff = sorted(k for k in set(saved_identity) | set(identity)
                              if saved_identity.get(k) != identity.get(k))
                said = "; ".join(f"{k.replace('_', '-')} {_setting(saved_identity.get(k))} then, "
                                 f"{_setting(identity.get(k))} now" for k in diff)
                raise ConfigMismatchError(
                    f"{layout.root} was fitted with other settings ({said}); leave those flags out to resume "
                    "or reuse it (a setting not given is the run's own), or pass --overwrite to fit again with these"
                )
            _reset_fit(layout)
    elif overwrite:
        _reset_fit(layout)
    run_cfg["fit"] = config.to_dict()
    write_json(layout.config, run_cfg)


def _verify_inputs(layout: RunLayout) -> None:
    """``fit --overwrite``: the images and manifest checked whole (every chunk's CRC) before
    anything of the earlier fit goes; a fit whose own outputs are damaged is discarded, so
    that ``fit --overwrite`` rebuilds it even with the same settings."""
    verify_images(layout, images_location(layout.root), checksums=True)
    damage = fit_damage(layout)
    if damage is not None:
        logger.warning("the fit is damaged (%s): fitting again", str(damage).split("; rebuild with")[0])
        _reset_fit(layout)


def fit_run(
    run_dir: str | os.PathLike,
    config: FitConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    client=None,
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
    client : distributed.Client, default=None
        Run the exact passes on a dask cluster (see :mod:`streamclust.distributed`).
    """
    layout = RunLayout.of(run_dir)
    layout.require("ingest")
    if config is None:  # the saved settings; where the passes run is this machine's choice
        saved = load_run_config(layout.root).get("fit")
        config = replace(FitConfig.from_dict(saved), backend="auto", device="auto") if saved else FitConfig()
    # where the passes run, resolved once: a backend or device that cannot be used here is refused first
    backend = stage_backend(config.backend, config.device, config.precision, client)
    images = image_array(layout.root)
    rows = ok_rows(layout.root, drop_duplicates=config.drop_duplicates)
    data, data_rows = images, rows  # what the PCA reads: pixels, or an autoencoder's latents
    if config.features == "latents":
        layout.require("encode")
        data, data_rows = verify_output(layout, "latents"), None
        if data.shape[0] != rows.size:
            raise UsageError(f"latents.zarr has {data.shape[0]} rows for {rows.size} images; "
                             f"run `streamclust encode {run_dir} --overwrite`")
    if rows.size < 2:
        raise UsageError(
            f"{layout.root} has {rows.size} usable image(s); fitting needs at least 2 "
            "(see manifest.csv for why members were skipped)"
        )
    n_pixels = int(np.prod(data.shape[1:]))
    chunk_bytes = int(np.prod(data.chunks)) * data.dtype.itemsize
    # everything checked before anything is written: a refused request leaves the run as it was
    choice = choose_pca(config, int(rows.size), n_pixels, int(data.chunks[0]), chunk_bytes)
    if config.gmm_components and "gmm" in config.cluster and isinstance(choice.n_components, int):
        mixture_memory_check("the Gaussian mixture", [config.gmm_components],
                             min(config.gmm_pca_components or choice.n_components, choice.n_components),
                             config.covariance, config.memory_limit)
    if config.clusters and "kmeans" in config.cluster and config.clusters > rows.size:
        raise UsageError(f"--clusters {config.clusters} is more than the {rows.size} usable images; lower it")
    if config.gmm_components and "gmm" in config.cluster and config.gmm_components > rows.size:
        raise UsageError(f"--gmm-components {config.gmm_components} is more than the {rows.size} usable images")
    if overwrite:  # nothing good is discarded before the inputs are verified, every chunk's checksum too
        _verify_inputs(layout)
    _check_config(layout, config, overwrite)
    for stray in [*layout.state_dir.rglob("*.partial"), *layout.model_dir.glob("*.partial"),
                  *layout.features.rglob("*.partial"), *layout.root.glob("*.partial")]:
        stray.unlink(missing_ok=True)  # temp files of atomic writes that a kill interrupted
    summary = FitSummary(str(layout.root), n_images=int(rows.size))
    if stages.status(layout, "fit") == stages.STALE:  # its input was redone since: fit again
        logger.info("the fit of %s is stale (%s was redone since): fitting again", layout.root,
                    stages.stale_because(layout, "fit"))
        _reset_fit(layout)
    if layout.is_done("fit"):
        _pca_outcome(summary, choice, load_model(layout.model("pca")))
        return summary
    layout.model_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = load_run_config(layout.root)
    data_key = fingerprint([run_cfg.get("ingest"), int(rows.size), config.features,
                            run_cfg.get("encode") if config.features == "latents" else None])

    # -- 1. PCA on pixels -------------------------------------------------------------
    pca_path = layout.model("pca")
    if not layout.is_done("fit-pca"):
        t0 = time.perf_counter()
        logger.info("%s", choice.describe(int(rows.size), n_pixels))
        bs = choice.batch_size
        pca = StreamingPCA(n_components=choice.n_components, method=choice.method, batch_size=bs,
                           max_components=choice.max_components, random_state=config.seed,
                           backend=backend.name, device=backend.device)
        sketch = _SketchScores(layout, int(rows.size), chunk_rows=bs)
        if choice.method == "randomized" and client is None:
            if not (layout.state_dir / "fit-pca.ckpt.npz").exists():
                sketch.clear()  # a fresh PCA fit: no projections of another fit may remain
            pca._projection_sink = sketch
        with warnings.catch_warnings():  # a shortfall is said in the summary (variance_note), not twice
            warnings.filterwarnings("ignore", message="asked for .* of the variance", category=UserWarning)
            _fit_stage(layout, "pca", pca, data, data_rows, data_key, config, progress, client,
                       room=choice.host_room)
        if hasattr(pca, "_sketch_basis"):
            sketch.save_basis(pca._sketch_basis, pca._sketch_shift)
        save_model(pca, pca_path)
        stages.complete(layout, "fit-pca")
        summary.seconds["pca"] = time.perf_counter() - t0
    pca = load_model(pca_path)
    _pca_outcome(summary, choice, pca)

    # -- 2. features --------------------------------------------------------------------
    if not layout.is_done("fit-features"):
        t0 = time.perf_counter()
        _write_features(layout, pca, data, rows, config, progress, _SketchScores(layout, int(rows.size)),
                        data_rows=data_rows)
        summary.seconds["features"] = time.perf_counter() - t0
    features = verify_output(layout, "features")  # checked against what fit-features recorded
    n_feat = features.shape[1]

    # -- 3. k-means ---------------------------------------------------------------------
    if config.clusters and "kmeans" in config.cluster:
        if config.clusters > rows.size:
            raise UsageError(f"--clusters {config.clusters} is more than the {rows.size} usable images; lower it")
        if not layout.is_done("fit-kmeans"):
            t0 = time.perf_counter()
            k = config.clusters
            fixed, per_row = 4 * k * n_feat * 8, n_feat * 16 + k * 24
            bs = batch_rows("k-means", fixed=fixed, per_row=per_row,
                            limit=config.memory_limit, requested=config.batch_size,
                            preferred=FEATURE_CHUNK_ROWS)
            room = host_room(config.memory_limit, fixed=fixed, per_row=per_row, rows=bs)
            km = StreamingKMeans(n_clusters=k, method=config.kmeans_method, batch_size=bs,
                                 max_iter=config.max_iter, random_state=config.seed,
                                 backend=backend.name, device=backend.device, precision=backend.precision)
            with _small_products():
                phases = kmeans_phases(features, features.shape[0], k, config.max_iter, config.kmeans_method,
                                       backend=backend)
                _fit_stage(layout, "kmeans", km, features, None, data_key, config, progress, client, phases,
                           room=room)
            save_model(km, layout.model("kmeans"))
            stages.complete(layout, "fit-kmeans")
            summary.seconds["kmeans"] = time.perf_counter() - t0
        km = load_model(layout.model("kmeans"))
        summary.results["kmeans_inertia"] = float(km.inertia_)
    else:
        summary.skipped_stages.append("kmeans")

    # -- 4. Gaussian mixture --------------------------------------------------------------
    if config.gmm_components and "gmm" in config.cluster:
        m = config.gmm_pca_components or n_feat
        if m > n_feat:
            raise UsageError(f"--gmm-pca-components {m} exceeds the {n_feat} PCA components; lower it")
        if config.gmm_components > rows.size:
            raise UsageError(f"--gmm-components {config.gmm_components} is more than the {rows.size} usable images")
        if not layout.is_done("fit-gmm"):
            mixture_memory_check("the Gaussian mixture", [config.gmm_components], m, config.covariance,
                                 config.memory_limit)
            t0 = time.perf_counter()
            g = config.gmm_components
            fixed, per_row = mixture_stage_bytes([g], m, config.covariance, numpy=backend.is_numpy)
            bs = batch_rows("the Gaussian mixture", fixed=fixed, per_row=per_row,
                            limit=config.memory_limit, requested=config.batch_size,
                            preferred=FEATURE_CHUNK_ROWS)
            room = host_room(config.memory_limit, fixed=fixed, per_row=per_row, rows=bs)
            gmm = StreamingGaussianMixture(n_components=g, covariance_type=config.covariance,
                                           max_iter=config.max_iter, batch_size=bs,
                                           random_state=config.seed, backend=backend.name,
                                           device=backend.device, precision=backend.precision)
            source = RowSource(features, columns=m if m < n_feat else None)
            with _small_products():
                phases = gmm_phases(features, features.shape[0], g, config.covariance, config.max_iter, columns=m,
                                    backend=backend)
                _fit_stage(layout, "gmm", gmm, source, None, data_key, config, progress, client, phases,
                           room=room)
            save_model(gmm, layout.model("gmm"), extra={"pca_components": m})
            stages.complete(layout, "fit-gmm")
            summary.seconds["gmm"] = time.perf_counter() - t0
        gmm = load_model(layout.model("gmm"))
        summary.results["gmm_lower_bound"] = float(gmm.lower_bound_)
    else:
        summary.skipped_stages.append("gmm")

    # -- 5. the other methods: kernel PCA, agglomerative, a t-SNE map (pipeline/methods.py)
    from .methods import fit_methods

    fit_methods(layout, config, features, data_key, summary, progress=progress, client=client,
                fit_stage=_fit_stage, backend=backend)

    write_json(layout.fit_summary, {
        "n_images": summary.n_images, "seconds": {k: round(v, 3) for k, v in summary.seconds.items()},
        "results": summary.results, "pca": summary.pca, "notes": summary.notes,
    })
    stages.complete(layout, "fit")
    return summary


def _pca_outcome(summary: FitSummary, choice, pca) -> None:
    """What the PCA delivered, into the summary; a fraction not reached is said (and logged)."""
    reached = float(np.sum(pca.explained_variance_ratio_))
    summary.results["pca_explained_variance"] = reached
    summary.pca = {"method": getattr(pca, "method_", choice.method), "requested": choice.n_components,
                   "reached": reached, "n_components": int(pca.n_components_), "limited_by": choice.limited_by}
    note = variance_note(choice.n_components, pca, choice.limited_by)
    if note:
        summary.notes.append(note)
        logger.warning("%s", note)


class _SketchScores:
    """The last PCA pass's projections ``(x - s) Q`` of every fitted row (float64).

    The randomized PCA's last pass projects every row on the final sketch basis ``Q``
    anyway (for the Rayleigh-Ritz step); kept in ``.streamclust/pca-sketch.zarr``, they
    give the PCA scores without reading and projecting the pixels again:
    ``scores = (P + (s - mean) Q) W`` with ``W = Q^T components_^T`` (``l x k``).
    Rows never written (NaN, the fill value) fall back to the pixels.  The basis and
    shift are saved (``pca-sketch.npz``) when the PCA stage ends; both files go once
    the features are written.
    """

    def __init__(self, layout: RunLayout, n_rows: int, chunk_rows: int = 1024):
        self.path = layout.state_dir / "pca-sketch.zarr"
        self.basis_path = layout.state_dir / "pca-sketch.npz"
        self.n_rows, self.chunk_rows = int(n_rows), int(chunk_rows)
        self.array = None

    def clear(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        self.basis_path.unlink(missing_ok=True)
        self.array = None

    def __call__(self, offset: int, P: np.ndarray) -> None:
        """The projection sink: store rows ``offset .. offset + len(P)``."""
        if self.array is None:
            shape = (self.n_rows, P.shape[1])
            if self.path.exists():
                self.array = zarr.open_array(str(self.path), mode="r+")
            if self.array is None or self.array.shape != shape:
                self.array = zarr.create_array(store=str(self.path), shape=shape, dtype="float64",
                                               chunks=(self.chunk_rows, P.shape[1]), fill_value=np.nan,
                                               compressors=None, overwrite=True)
        self.array[offset : offset + P.shape[0]] = P

    def save_basis(self, Q: np.ndarray, shift: np.ndarray) -> None:
        save_npz(self.basis_path, {"Q": np.asarray(Q), "shift": np.asarray(shift)})

    def scorer(self, pca):
        """``fn(lo, hi) -> scores or None`` from the stored projections; ``None`` when there are none."""
        if not (self.path.exists() and self.basis_path.exists()):
            return None
        arrays = load_npz(self.basis_path)
        Q, shift = arrays["Q"], arrays["shift"]
        array = zarr.open_array(str(self.path), mode="r")
        comps = np.asarray(pca.components_, dtype=np.float64)
        if array.shape[0] != self.n_rows or Q.shape != (comps.shape[1], array.shape[1]):
            return None
        W = Q.T @ comps.T  # (l, k): comps.T = Q V S, Q orthonormal
        offset = ((shift - pca.mean_) @ Q) @ W
        scale = None
        if pca.whiten:
            scale = np.sqrt(pca.explained_variance_)
            scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps

        def score(lo: int, hi: int):
            P = array[lo:hi]
            if not np.all(np.isfinite(P)):
                return None
            Y = P @ W + offset
            return Y / scale if scale is not None else Y

        return score


def _small_products():
    """Single-threaded BLAS for the stages in PCA space.

    Their products are small (a batch of rows times ``k`` centres of ``m`` features):
    splitting each over threads gains little on an idle machine and, when another
    process holds a core, the threads wait for each other and a pass is several
    times slower (measured: docs/benchmarks.md).
    """
    return threadpool_limits(limits=1, user_api="blas")


def _fit_stage(layout, stage, estimator, X, rows, data_key, config, progress, client=None, phases=None, *,
               room=None) -> None:
    """Fit ``estimator`` over ``X`` with a checkpoint; ``phases`` (its passes, timed
    beforehand: :mod:`~streamclust.pipeline.estimate`) give the time it may take;
    ``room`` (:func:`~streamclust.pipeline.memory.host_room`: what the stage's memory plan
    leaves of ``--memory-limit``) caps a GPU's larger batches."""
    ck = Checkpointer(layout.state_dir / f"fit-{stage}.ckpt.npz",
                      key=checkpoint_key(stage, estimator, data_key), every_seconds=CHECKPOINT_SECONDS)
    where = estimator._resolved_backend(client) if hasattr(estimator, "backend") else None
    if where is None or where.is_numpy:
        logger.info("fitting %s", stage)
    else:  # on a GPU, say which (the NumPy default needs no line of its own)
        logger.info("fitting %s with %s", stage, where.describe())
    with PassBars(stage, progress, phases=phases) as bars:

        def report(name: str, done: int, total: int) -> None:
            bars(name, done, total)
            if done >= total:  # a pass is over: its batches' memory is free again
                _release_free_memory()

        fit_streaming(estimator, X, rows=rows, checkpoint=ck, progress=report, client=client, host_room=room)
    ck.clear()


def checkpoint_key(stage: str, estimator, data_key: str) -> str:
    """The checkpoint key of a fit stage: its estimator's parameters but those of
    :data:`NOT_IN_CHECKPOINT_KEY`, and the data.  ``precision`` changes the result, so it is in the key
    (but for its default, float64, which leaves the keys of earlier checkpoints as they were)."""
    params = {k: v for k, v in estimator.get_params().items() if k not in NOT_IN_CHECKPOINT_KEY}
    if params.get("precision") == "float64":  # the default: the key of a fit from before the parameter
        del params["precision"]
    return fingerprint([stage, params, data_key])


_libc = None


def _release_free_memory() -> None:
    """Return the allocator's free pages to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    Every pass frees what its batches used, but in the heaps of several threads (the
    reader, the PCA workers, zarr's decoders), where freed blocks that are not at a
    heap's top stay resident: without this, the resident size creeps up with every pass
    (more passes on more images), though the memory in use does not.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


class _Projector:
    """PCA scores of raw pixel batches: ``(x - mean) @ components_.T``, in float64.

    Float32 products would be twice as fast but are off by ~1e-6 of the row norm (the
    sums run over every pixel), visible in small scores; the products are split over
    the cores in blocks of rows, each centred in its own small float64 array.
    """

    def __init__(self, pca):
        self.mean = np.asarray(pca.mean_, dtype=np.float64)
        self.comps = np.ascontiguousarray(pca.components_.T, dtype=np.float64)  # (d, k)
        self.scale = None
        if pca.whiten:
            scale = np.sqrt(pca.explained_variance_)
            scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
            self.scale = scale

    def __call__(self, X: np.ndarray, out: np.ndarray) -> None:
        b, d = X.shape
        comps = self.comps

        def block(lo: int, hi: int) -> None:
            Y = np.subtract(X[lo:hi], self.mean) @ comps
            if self.scale is not None:
                Y /= self.scale
            out[lo:hi] = Y

        blocks = split_blocks(b, 2.0 * b * d * comps.shape[1])
        if len(blocks) == 1 and b > _PROJECT_ROWS:  # one thread: still bound the float64 copy
            blocks = [(lo, min(lo + _PROJECT_ROWS, b)) for lo in range(0, b, _PROJECT_ROWS)]
            for lo, hi in blocks:
                block(lo, hi)
            return
        map_blocks(block, blocks)


#: rows centred at a time (float64) when the projection runs in one thread
_PROJECT_ROWS = 256


def _write_features(layout: RunLayout, pca, images, rows: np.ndarray, config: FitConfig, progress,
                    sketch: _SketchScores, data_rows="rows") -> None:
    """PCA scores of the fitted rows, chunk by chunk; resumable at chunk granularity.

    From the projections kept by the PCA's last pass when there are (see
    :class:`_SketchScores`), else (and for any chunk they miss) from the pixels.
    """
    path = layout.features
    state_path = layout.state_dir / "fit-features.json"
    k = int(pca.n_components_)
    chunk = FEATURE_CHUNK_ROWS
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is None or not path.exists():
        feats = zarr.create_array(store=str(path), shape=(rows.size, k), chunks=(chunk, k),
                                  dtype="float32", fill_value=0.0, overwrite=True, compressors=checksum_codecs(),
                                  dimension_names=("image", "component"))
        state = {"rows_done": 0}
        write_json(state_path, state)
    else:
        feats = zarr.open_array(str(path), mode="r+")
        chunk = int(feats.chunks[0])
    score = sketch.scorer(pca)
    source = RowSource(images, rows if isinstance(data_rows, str) else data_rows)
    project = None
    step = int(images.chunks[0])  # pixels read at a time: one chunk of the image store
    bars = PassBars("features", progress)
    try:
        for c0 in range(int(state["rows_done"]), rows.size, chunk):
            c1 = min(c0 + chunk, rows.size)
            out = score(c0, c1) if score is not None else None
            if out is None:
                project = project or _Projector(pca)
                out = np.empty((c1 - c0, k), dtype=np.float32)
                ranges = [(lo, min(lo + step, c1)) for lo in range(c0, c1, step)]
                for lo, X in source.iter_ranges(ranges, dtype=images.dtype):
                    project(X, out[lo - c0 : lo - c0 + X.shape[0]])
            feats[c0:c1] = out.astype(np.float32, copy=False)
            state["rows_done"] = c1
            write_json(state_path, state)
            bars("PCA scores", c1, rows.size)
    finally:
        bars.close()
    buf = io.BytesIO()
    np.save(buf, rows)
    write_bytes(layout.fit_rows, buf.getvalue())
    stages.complete(layout, "fit-features", array=array_record(path))
    sketch.clear()
