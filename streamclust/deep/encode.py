"""``streamclust encode``: the latents of a trained AE / VAE as a zarr array; pictures for the report.

``RUN_DIR/latents.zarr``: float32 ``(n, latent)``, row ``i`` is image ``ok_rows(run_dir)[i]``
(every ok image, duplicates dropped; the rows are also saved as ``deep/latent_rows.npy``);
for the VAE, the posterior mean.  Chunked along the rows (8192 per chunk), uncompressed
like ``features.zarr``.  ``config.json["encode"]`` records the model it came from, and
``.streamclust/encode.done`` is written last.

New latents make a fit on the old ones stale: whenever the latents are removed to be
written again (``encode --overwrite``, or ``train --overwrite`` of the encoded model),
:func:`reset_encode` first discards a ``fit --features latents`` of the run (its models,
features, markers and everything made from them, see
:func:`streamclust.pipeline.fit.reset_fit`), so ``streamclust fit`` with the same
settings fits again, and ``assign`` / ``report`` / ``compare`` ask for that fit instead
of mixing old models with new latents.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np

from .. import stages
from .._atomic import write_bytes, write_json
from ..config import load_run_config
from ..errors import ConfigMismatchError, UsageError
from ..integrity import array_record, checksum_codecs, verify_images
from ..store import RunLayout, image_array, images_location, ok_rows
from ._torch import require_torch

__all__ = ["encode_run", "encode_array", "reconstruct", "vae_samples", "latents_path", "reset_encode",
           "LATENT_CHUNK_ROWS"]

LATENT_CHUNK_ROWS = 8192

logger = logging.getLogger(__name__)


def latents_path(run_dir) -> Path:
    return RunLayout.of(run_dir).latents


def reset_encode(layout: RunLayout) -> None:
    """Remove ``latents.zarr`` and its marker and settings, and a fit on those latents.

    The cascade is :func:`streamclust.stages.invalidate`'s: the fit (when it was on
    latents) and what was made from it go first, markers before data, so a kill at any
    moment leaves no stage marked done whose input is gone.
    """
    gone = stages.invalidate(layout, "encode", include_self=True)
    if "fit" in gone:
        logger.info("removed the fit on the old latents of %s (models, features and what was made from them); "
                    "run `streamclust fit %s --features latents` with its settings again once encoded",
                    layout.root, layout.root)


def _to_uint8(t) -> np.ndarray:
    """float (n, c, s, s) in [0, 1] to uint8 (n, s, s, c)."""
    return (t.detach().clamp(0, 1).mul(255).round().to("cpu").permute(0, 2, 3, 1).numpy().astype(np.uint8))


def encode_array(net, images: np.ndarray, *, batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """Latents (float32 ``(n, latent)``) of ``uint8 (n, s, s, 3)`` images; the VAE's are its means."""
    torch = require_torch()
    from .data import to_float_tensor

    out = np.empty((images.shape[0], net.latent), dtype=np.float32)
    with torch.no_grad():
        for lo in range(0, images.shape[0], batch_size):
            x = to_float_tensor(np.ascontiguousarray(images[lo:lo + batch_size]), device)
            out[lo:lo + x.shape[0]] = net.encode(x).to("cpu").numpy()
    return out


def encode_run(
    run_dir: str | os.PathLike,
    *,
    model: str = "ae",
    batch_size: int = 512,
    device: str = "auto",
    progress: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``RUN_DIR/latents.zarr`` from the trained ``model``; return its path.

    A completed encoding of the same model is left as it is; one of the other model is
    refused (:class:`ConfigMismatchError`) unless ``overwrite``.
    """
    require_torch()
    import zarr

    from ..pipeline.progress import PassBars
    from .data import StoreLoader
    from .train import load_net, resolve_device

    if model not in ("ae", "vae"):
        raise UsageError(f"--model must be ae or vae, got {model!r}")
    if batch_size < 1:
        raise UsageError("--batch-size must be a positive integer")
    layout = RunLayout.of(run_dir)
    layout.require(f"train-{model}")
    path = latents_path(layout.root)
    ident = {"model": model, "drop_duplicates": True}
    saved = load_run_config(layout.root).get("encode")
    if saved is not None and layout.is_done("encode"):
        if saved == ident and not overwrite:
            return path
        if saved != ident and not overwrite:
            raise ConfigMismatchError(
                f"{layout.root}/latents.zarr holds the {saved.get('model')} latents; pass --overwrite to encode "
                f"with {model}"
            )
    images = image_array(layout.root)  # checked (every chunk's checksum with --overwrite) before anything goes
    rows = ok_rows(layout.root)
    if overwrite:
        verify_images(layout, images_location(layout.root), checksums=True)
    reset_encode(layout)
    cfg = load_run_config(layout.root)
    cfg["encode"] = ident
    write_json(layout.config, cfg)

    dev = resolve_device(device)
    net = load_net(layout.root, model, dev)
    n, k = int(rows.size), int(net.latent)
    chunk = max(1, min(LATENT_CHUNK_ROWS, n))
    latents = zarr.create_array(store=str(path), shape=(n, k), chunks=(chunk, k), dtype="float32",
                                fill_value=0.0, overwrite=True, compressors=checksum_codecs(),
                                dimension_names=("image", "latent"))
    out = np.empty((chunk, k), dtype=np.float32)
    bars = PassBars("encode", progress)
    try:
        lo = 0
        for imgs in StoreLoader(images, rows).iter_store_order():  # one storage chunk at a time, read ahead
            while imgs.shape[0]:  # never straddle a chunk of latents.zarr
                c0 = lo - lo % chunk
                take = min(imgs.shape[0], c0 + chunk - lo)
                hi = lo + take
                out[lo - c0:hi - c0] = encode_array(net, imgs[:take], batch_size=batch_size, device=dev)
                if hi % chunk == 0 or hi == n:
                    latents[c0:hi] = out[:hi - c0]
                imgs, lo = imgs[take:], hi
            bars(f"{model} latents", lo, n)
    finally:
        bars.close()
    if lo != n:  # pragma: no cover - a store changed under us
        raise RuntimeError(f"encoded {lo} of {n} images")
    latents.attrs.update({"model": model, "rows": "ok_rows(run_dir), duplicates dropped",
                          "latent": k})
    buf = io.BytesIO()
    np.save(buf, rows)
    write_bytes(layout.latent_rows, buf.getvalue())
    stages.complete(layout, "encode", array=array_record(path))  # checked on open (streamclust.integrity)
    return path


def reconstruct(run_dir: str | os.PathLike, rows, *, model: str = "ae", device: str = "cpu"):
    """``(originals, reconstructions)``: two ``uint8 (n, s, s, 3)`` arrays for store ``rows``."""
    torch = require_torch()

    from .data import to_float_tensor
    from .train import load_net, resolve_device

    layout = RunLayout.of(run_dir)
    dev = resolve_device(device)
    net = load_net(layout.root, model, dev)
    images = image_array(layout.root)
    rows = [int(r) for r in np.asarray(rows).ravel()]
    if any(not 0 <= r < images.shape[0] for r in rows):
        raise UsageError(f"rows must be in 0..{images.shape[0] - 1}")
    if not rows:
        empty = np.empty((0, *images.shape[1:]), np.uint8)
        return empty, empty.copy()
    orig = np.stack([np.asarray(images[r]) for r in rows])
    with torch.no_grad():
        rec = net(to_float_tensor(orig, dev))
    return orig, _to_uint8(rec)


def vae_samples(run_dir: str | os.PathLike, n: int = 64, seed: int = 0, *, device: str = "cpu") -> np.ndarray:
    """``n`` images decoded from ``z ~ N(0, I)`` by the trained VAE: ``uint8 (n, s, s, 3)``."""
    torch = require_torch()
    from .train import load_net, resolve_device

    if n < 0:
        raise UsageError("n must be >= 0")
    dev = resolve_device(device)
    net = load_net(run_dir, "vae", dev)
    g = torch.Generator(device=dev).manual_seed(int(seed))
    with torch.no_grad():
        return _to_uint8(net.sample(int(n), generator=g, device=dev))
