"""One frozen configuration per stage, shared by the command line and the Python API.

Each stage's config is saved in ``RUN_DIR/config.json`` under its own key, so later
commands need no repeated flags, and a re-run with different settings is refused
unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import operator
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import RunDirError, UsageError

__all__ = ["IngestConfig", "FitConfig", "default_chunk_size", "load_run_config", "parse_bytes", "check_seed",
           "STAGE_KEYS", "MAX_CHUNK_BYTES", "MAX_SEED"]

STAGE_KEYS = ("ingest", "fit")

#: the most bytes one chunk of ``images.zarr`` may hold (``--chunk-size`` x size x size x 3): a
#: chunk is built in memory and compressed whole (the default chunk holds at most 16 MiB)
MAX_CHUNK_BYTES = 1 << 30

#: ``--seed`` takes 0 .. MAX_SEED (NumPy's and scikit-learn's range)
MAX_SEED = 2**32 - 1


def check_seed(seed, flag: str = "--seed") -> int:
    """``seed`` if it is an integer in 0 .. :data:`MAX_SEED`, else :class:`UsageError`."""
    try:
        value = operator.index(seed)  # an int or a NumPy integer, not a float
    except TypeError:
        value = None
    if isinstance(seed, bool) or value is None or not 0 <= value <= MAX_SEED:
        raise UsageError(f"{flag} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return value


def default_workers() -> int:
    """Decoding processes when none are asked for: the cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def default_chunk_size(size: int) -> int:
    """Images per chunk: the largest power of two keeping a chunk under 16 MiB (16..4096)."""
    per_image = size * size * 3
    n = 16
    while n * 2 * per_image <= 16 * 2**20 and n < 4096:
        n *= 2
    return n


@dataclass(frozen=True)
class IngestConfig:
    """Settings of ``streamclust ingest``.

    Parameters
    ----------
    source : str
        A ``.zip``, ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` or a directory.
    size : int, default=64
        Images are centre-cropped to a square and resized to ``size x size``.
    chunk_size : int or None, default=None
        Images per zarr chunk; ``None`` picks :func:`default_chunk_size`.
    workers : int or None, default=None
        Decoding processes; ``None`` uses every core.  Does not change the result.
    max_member_bytes : int, default=64 MiB
        Members larger than this (declared or read) are skipped as ``too_large``
        (protects against zip bombs; at most this many bytes are read per member).
    max_pixels : int, default=64_000_000
        Images whose declared canvas is larger are skipped as ``bomb`` before decoding.
    min_side : int, default=8
        Images with a side shorter than this are skipped as ``too_small``.
    max_aspect : float, default=4.0
        Images whose long side exceeds ``max_aspect`` times the short side are skipped
        as ``bad_aspect`` (a centre crop would keep too little of them).
    background : tuple of int, default=(255, 255, 255)
        Colour that transparent pixels are composited on.
    store : str or None, default=None
        Where to write the image array: ``None`` for ``RUN_DIR/images.zarr``, else a path
        or an fsspec URL (``s3://bucket/faces/images.zarr``; the filesystem's package,
        e.g. ``s3fs``, must be installed), so that the workers of a cluster can read it.
        The run directory itself (manifest, state, models) stays local.
    """

    source: str
    size: int = 64
    chunk_size: int | None = None
    workers: int | None = None
    max_member_bytes: int = 64 * 2**20
    max_pixels: int = 64_000_000
    min_side: int = 8
    max_aspect: float = 4.0
    background: tuple[int, int, int] = (255, 255, 255)
    store: str | None = None

    #: fields that do not change the output (a resume may change them freely)
    NON_IDENTITY = ("workers",)

    def __post_init__(self):
        if not isinstance(self.size, int) or not 1 <= self.size <= 4096:
            raise UsageError(f"--size must be an integer from 1 to 4096, got {self.size!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise UsageError(f"--chunk-size must be a positive integer, got {self.chunk_size!r}")
        most = max(1, MAX_CHUNK_BYTES // (3 * self.size * self.size))
        if self.chunk_size is not None and self.chunk_size > most:
            raise UsageError(f"--chunk-size {self.chunk_size} makes chunks of more than "
                             f"{MAX_CHUNK_BYTES >> 20} MiB at --size {self.size}; use at most {most} "
                             "(or leave it out for chunks of up to 16 MiB)")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise UsageError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.max_member_bytes < 1 or self.max_pixels < 1 or self.min_side < 1:
            raise UsageError("max-member-bytes, max-pixels and min-side must be positive")
        if not 1 <= self.max_aspect < float("inf"):
            raise UsageError(f"--max-aspect must be a finite number >= 1, got {self.max_aspect!r}")
        bg = tuple(int(c) for c in self.background)
        if len(bg) != 3 or not all(0 <= c <= 255 for c in bg):
            raise UsageError(f"background must be three integers 0..255, got {self.background!r}")
        object.__setattr__(self, "background", bg)
        if self.store is not None:
            store = str(self.store).strip()
            if not store:
                raise UsageError("--store must be a path or a URL such as s3://bucket/images.zarr")
            if "://" not in store:  # a plain path: absolute, so later commands find it from anywhere
                store = os.path.abspath(os.path.expanduser(store))
            object.__setattr__(self, "store", store)

    @property
    def resolved_chunk_size(self) -> int:
        return self.chunk_size or default_chunk_size(self.size)

    @property
    def resolved_workers(self) -> int:
        return self.workers or default_workers()

    def identity(self) -> dict[str, Any]:
        """The settings that determine the output (what a resume must match)."""
        d = self.to_dict()
        for key in self.NON_IDENTITY:
            d.pop(key, None)
        d["chunk_size"] = self.resolved_chunk_size
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IngestConfig":
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "background" in kwargs:
            kwargs["background"] = tuple(kwargs["background"])
        return cls(**kwargs)


def load_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The saved ``config.json`` of a run directory (empty when there is none).

    Raises :class:`~streamclust.errors.RunDirError` when the file is not a JSON object
    holding one object per stage (a damaged or hand-edited file): nothing is then
    written, and the message says how to recover.
    """
    from .stages import ARTEFACTS

    path = Path(run_dir) / ARTEFACTS["config"]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise _damaged_config(path, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _damaged_config(path, f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _damaged_config(path, f"a JSON {type(value).__name__}, not an object of settings per stage")
    bad = sorted(k for k, v in value.items() if v is not None and not isinstance(v, dict))
    if bad:
        raise _damaged_config(path, f"the settings of {', '.join(bad)} are not JSON objects")
    return value


def _damaged_config(path: Path, what: str) -> RunDirError:
    return RunDirError(f"{str(path)!r} is damaged ({what}); restore it, or delete it and run "
                       f"`streamclust ingest SOURCE {path.parent} --overwrite` to start the run again")


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int | None) -> int | None:
    """``"1GB"``, ``"512MiB"``, ``"2e9"`` or an int to a number of bytes (``None`` stays ``None``)."""
    if text is None or isinstance(text, int):
        return text
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"--memory-limit must look like 1GB, 512MB or 2GiB, got {text!r}")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise UsageError(f"--memory-limit must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class FitConfig:
    """Settings of ``streamclust fit``.

    Parameters
    ----------
    pca_components : int, float or None, default=None
        Principal components; a float in (0, 1) keeps that fraction of the variance;
        ``None`` uses 256, or fewer when the data has fewer images or pixels.
    pca_method : {"auto", "covariance", "randomized", "incremental"}, default="auto"
        ``auto`` chooses by the shape (see :class:`~streamclust.models.StreamingPCA`):
        the exact covariance method up to 64x64 RGB, else the randomized one.
    pca_max_components : int or None, default=None
        With a fraction, the most components kept; ``None`` keeps as many as the
        fraction needs (up to the number of images or pixels, or what the memory
        limit allows; the summary says when a cap stops it short).
    clusters : int, default=100
        k-means clusters (0 skips k-means).
    kmeans_method : {"lloyd", "minibatch"}, default="lloyd"
    gmm_components : int, default=50
        Mixture components (0 skips the mixture).
    covariance : {"diag", "full", "tied", "spherical"}, default="diag"
    gmm_pca_components : int or None, default=None
        Fit the mixture on only the leading principal components.
    seed : int, default=0
    max_iter : int, default=100
        Lloyd / EM passes at most.
    batch_size : int or None, default=None
        Rows per batch; ``None`` derives it from ``memory_limit`` (or uses 1024).
    memory_limit : int or None, default=None
        Bytes the fit may use; batch sizes are chosen to stay under it.  Does not
        change the result beyond floating-point rounding, so a resume may change it.
    drop_duplicates : bool, default=True
        Leave byte-identical duplicate images out of the fit.
    reduce : {"pca", "kpca"}, default="pca"
        ``"kpca"`` also fits a streaming kernel PCA (RBF, Nystroem landmarks) on the PCA
        features (``model/kpca.npz``).
    kpca_components : int, default=200
    embed : {None, "tsne"}, default=None
        ``"tsne"``: a t-SNE map of every image (fitted on a sample, the rest placed by
        streaming ``transform``) in ``embedding.zarr``, and k-means with ``clusters``
        clusters on that map (``model/tsne_kmeans.npz``).
    cluster : tuple of {"kmeans", "gmm", "agglomerative"}, default=("kmeans", "gmm")
        The clusterings to fit; agglomerative uses ``clusters`` clusters.
    features : {"pixels", "latents"}, default="pixels"
        What the models are fitted on: the images' pixels, or the latents of a trained
        autoencoder (``streamclust train`` then ``streamclust encode``).
    backend : {"auto", "numpy", "torch"}, default="auto"
        Where the passes' arithmetic runs (:func:`streamclust.engine.resolve_backend`):
        ``"auto"`` is PyTorch on a GPU when PyTorch sees one, else NumPy.  Does not
        change the result beyond rounding, so a resume may change it.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default="auto"
        The PyTorch backend's device.  Does not change the result beyond rounding (a fit
        checkpointed on a GPU resumes on a CPU and the other way round).
    precision : {"float64", "float32"}, default="float64"
        The dtype of the PyTorch backend's k-means and mixture products (sums over
        batches are float64 either way); ``"float32"`` changes the result, so it is part
        of the fit's identity.
    """

    pca_components: int | float | None = None
    pca_method: str = "auto"
    pca_max_components: int | None = None
    clusters: int = 100
    kmeans_method: str = "lloyd"
    gmm_components: int = 50
    covariance: str = "diag"
    gmm_pca_components: int | None = None
    seed: int = 0
    max_iter: int = 100
    batch_size: int | None = None
    memory_limit: int | None = None
    drop_duplicates: bool = True
    features: str = "pixels"
    reduce: str = "pca"
    kpca_components: int = 200
    embed: str | None = None
    cluster: tuple[str, ...] = ("kmeans", "gmm")
    backend: str = "auto"
    device: str = "auto"
    precision: str = "float64"

    #: fields that do not change the result (beyond rounding); a resume may change them
    NON_IDENTITY = ("batch_size", "memory_limit", "backend", "device")

    def __post_init__(self):
        check_seed(self.seed)
        pc = self.pca_components
        if pc is not None and (isinstance(pc, float) and not (0 < pc < 1) or isinstance(pc, int) and pc < 1):
            raise UsageError(f"--pca-components must be a positive integer or a fraction in (0, 1), got {pc!r}")
        if self.pca_method not in ("auto", "covariance", "randomized", "incremental"):
            raise UsageError(f"--pca-method must be auto, covariance, randomized or incremental, "
                             f"got {self.pca_method!r}")
        mc = self.pca_max_components
        if mc is not None and (not isinstance(mc, int) or mc < 1):
            raise UsageError(f"--pca-max-components must be a positive integer, got {mc!r}")
        if self.kmeans_method not in ("lloyd", "minibatch"):
            raise UsageError(f"--kmeans-method must be lloyd or minibatch, got {self.kmeans_method!r}")
        if self.covariance not in ("diag", "full", "tied", "spherical"):
            raise UsageError(f"--covariance must be diag, full, tied or spherical, got {self.covariance!r}")
        for name in ("clusters", "gmm_components"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0 (0 skips that model)")
        if self.gmm_pca_components is not None and self.gmm_pca_components < 1:
            raise UsageError("--gmm-pca-components must be a positive integer")
        if self.max_iter < 1:
            raise UsageError("--max-iter must be a positive integer")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError("--batch-size must be a positive integer")
        if self.reduce not in ("pca", "kpca"):
            raise UsageError(f"--reduce must be pca or kpca, got {self.reduce!r}")
        if self.embed not in (None, "tsne"):
            raise UsageError(f"--embed must be tsne, got {self.embed!r}")
        cluster = tuple(self.cluster)
        unknown = sorted(set(cluster) - {"kmeans", "gmm", "agglomerative"})
        if unknown or not cluster:
            raise UsageError(f"--cluster takes a comma-separated list of kmeans, gmm, agglomerative; "
                             f"got {','.join(cluster) or 'nothing'}")
        object.__setattr__(self, "cluster", cluster)
        if self.kpca_components < 1:
            raise UsageError("--kpca-components must be a positive integer")
        if self.features not in ("pixels", "latents"):
            raise UsageError(f"--features must be pixels or latents, got {self.features!r}")
        if self.features == "latents" and not self.drop_duplicates:
            raise UsageError("--features latents cannot be combined with --keep-duplicates "
                             "(latents are encoded for the de-duplicated images)")

    def identity(self) -> dict[str, Any]:
        d = self.to_dict()
        for key in self.NON_IDENTITY:
            d.pop(key, None)
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cluster"] = list(self.cluster)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitConfig":
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "cluster" in kwargs:
            kwargs["cluster"] = tuple(kwargs["cluster"])
        return cls(**kwargs)
