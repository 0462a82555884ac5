"""``streamclust sample``: images drawn from the Gaussian mixture, decoded through the PCA."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import stages
from .._atomic import write_bytes
from ..errors import StageNotDoneError, UsageError
from ..store import RunLayout
from .assign import load_fitted

__all__ = ["sample_images", "montage", "save_png", "sample_run", "write_samples", "MAX_SAMPLE_BYTES"]

logger = logging.getLogger(__name__)

#: the most bytes of float64 pixels one call draws (the images are built in memory whole)
MAX_SAMPLE_BYTES = 1 << 30


def sample_images(run_dir: str | os.PathLike, n: int, *, seed: int = 0, backend=None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images sampled from the run's mixture: ``(images uint8 (n, s, s, 3), components)``.

    Samples are drawn in (the leading components of) PCA space, the remaining PCA
    coordinates are zero, then mapped back to pixels with ``inverse_transform`` and
    clipped to [0, 255].  ``backend`` (a :class:`~streamclust.engine.Backend`) is set on the
    loaded models; drawing and decoding are small NumPy products whatever it is.
    """
    from ..config import check_seed

    if n < 1:
        raise UsageError(f"-n must be a positive integer, got {n}")
    check_seed(seed)
    models = load_fitted(run_dir, backend)
    pca, gmm = models["pca"], models["gmm"]
    if gmm is None:
        raise StageNotDoneError(f"{run_dir} has no mixture; run `streamclust fit {run_dir} --gmm-components K`")
    most = max(1, MAX_SAMPLE_BYTES // (8 * int(pca.n_features_in_)))
    if n > most:
        raise UsageError(f"-n {n} would build {n * 8 * int(pca.n_features_in_) / 2**30:.1f} GiB of pixels at once; "
                         f"draw at most {most} per call (and others with another --seed)")
    gmm.random_state = seed
    Z, comp = gmm.sample(n)
    full = np.zeros((n, int(pca.n_components_)))
    full[:, : Z.shape[1]] = Z
    pixels = pca.inverse_transform(full)
    side = int(round(np.sqrt(pixels.shape[1] / 3)))
    imgs = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(n, side, side, 3)
    return imgs, np.asarray(comp)


def montage(images: np.ndarray, *, cols: int | None = None, pad: int = 1, scale: int = 1,
            background: int = 255) -> np.ndarray:
    """Tile ``(n, h, w, 3)`` uint8 images into one grid image (optionally upscaled)."""
    n, h, w = images.shape[:3]
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    H, W = h * scale, w * scale
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, 3), background, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        img = images[i]
        if scale > 1:
            img = img.repeat(scale, axis=0).repeat(scale, axis=1)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        grid[y:y + H, x:x + W] = img
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 RGB array as a PNG, atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return write_bytes(path, buf.getvalue())


def sample_run(run_dir, n: int = 64, *, out: str | os.PathLike | None = None, seed: int = 0,
               npy: str | os.PathLike | None = None, backend: str = "auto", device: str = "auto",
               precision: str = "float64") -> Path:
    """Sample ``n`` images and write a grid PNG (default ``RUN_DIR/samples.png``)."""
    return write_samples(run_dir, n, out=out, seed=seed, npy=npy, backend=backend, device=device,
                         precision=precision)[0]


def write_samples(run_dir, n: int = 64, *, out: str | os.PathLike | None = None, seed: int = 0,
                  npy: str | os.PathLike | None = None, backend: str = "auto", device: str = "auto",
                  precision: str = "float64") -> tuple[Path, np.ndarray, np.ndarray]:
    """:func:`sample_run`, also returning the images and their components.

    ``backend``, ``device`` and ``precision`` are checked as every command's
    (:func:`~streamclust.pipeline.fit.stage_backend`: a bad choice is refused before
    anything is written); the sampling itself is small NumPy products.
    """
    from .fit import stage_backend

    where = stage_backend(backend, device, precision)
    logger.debug("sample: the models are set to %s; drawing and decoding run with NumPy", where.describe())
    imgs, comp = sample_images(run_dir, n, seed=seed, backend=where)
    side = imgs.shape[1]
    layout = RunLayout.of(run_dir)
    out = Path(out) if out else layout.samples
    save_png(montage(imgs, scale=max(1, 64 // side)), out)
    if npy:
        buf = __import__("io").BytesIO()
        np.save(buf, imgs)
        write_bytes(npy, buf.getvalue())
    if out.resolve() == layout.samples.resolve():  # the run's own samples.png (not a picture elsewhere)
        stages.complete(layout, "sample", n=int(n), seed=int(seed))
    return out, imgs, comp
