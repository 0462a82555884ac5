"""Decode one archive member into a square RGB uint8 image: pure, and never raises.

:func:`decode_image` turns the member's bytes into either pixels or a ``(status, reason)``
pair; every failure mode of Pillow (and a few of our own refusals) maps to a short status
word, so the caller can write one manifest row per member and carry on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import fastdecode

__all__ = ["DecodeParams", "Decoded", "decode_image", "decode_members", "resample_filter", "STATUSES", "METADATA_NAMES"]

#: every status a manifest row can carry, with what it means
STATUSES = {
    "ok": "ingested",
    "empty": "the member has no bytes",
    "not_image": "not an image Pillow can identify (text, HTML, unknown format)",
    "metadata": "operating-system metadata, not an image (__MACOSX/, ._*, .DS_Store, Thumbs.db)",
    "truncated": "the image data ends early",
    "corrupt": "the image data is damaged (bad checksum, invalid stream)",
    "bomb": "the declared canvas exceeds max_pixels (refused before decoding)",
    "too_large": "the member exceeds max_member_bytes (refused without reading it all)",
    "bad_crc": "the archive's checksum for the member does not match its bytes",
    "too_small": "a side is shorter than min_side",
    "bad_aspect": "the aspect ratio exceeds max_aspect",
    "unreadable": "the archive could not deliver the member (unsupported compression, I/O error)",
    "encrypted": "the member is encrypted",
    "not_file": "a link, device or other non-regular member",
    "error": "an unexpected decoder failure (a bug report is welcome)",
}

#: formats we let Pillow open; EPS/PDF and other formats needing external programs are excluded
SAFE_FORMATS = (
    "JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "ICO", "DIB", "PCX", "SGI", "IM",
    "QOI", "DDS", "JPEG2000", "AVIF", "PSD",
)
Image.init()
SAFE_FORMATS = tuple(f for f in SAFE_FORMATS if f in Image.OPEN)  # those this Pillow build has


def _quiet_libtiff() -> None:
    """Stop libtiff printing its own warnings and errors on this process's stderr (Linux).

    Pillow reports every failure as an exception, which becomes the member's manifest row;
    libtiff would also print a line of its own per damaged TIFF ("tempfile.tif: WEBP
    compression support is not configured."), past ``--quiet`` and the one-line errors.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            path = next((line.split()[-1] for line in fh if "libtiff" in line), None)
        if path is None:
            return
        lib = ctypes.CDLL(path)
        for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
            getattr(lib, name).restype = ctypes.c_void_p
            getattr(lib, name)(None)
    except (OSError, AttributeError):  # no /proc, or a libtiff without these: it keeps printing
        pass


_quiet_libtiff()  # Pillow's libtiff is loaded with PIL.Image

METADATA_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}

_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


@dataclass(frozen=True)
class DecodeParams:
    size: int
    max_pixels: int
    min_side: int
    max_aspect: float
    background: tuple[int, int, int]


@dataclass
class Decoded:
    """The outcome of decoding one member."""

    status: str
    reason: str = ""
    pixels: np.ndarray | None = None  # (size, size, 3) uint8 when status == "ok" (decode_image)
    #: or the size x size image (decode_members): a Pillow image of mode "RGB" or "L", or its
    #: uint8 pixels, ``(size, size, 3)`` or ``(size, size)`` for grey
    image: Image.Image | np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    format: str = ""
    mode: str = ""
    sha256: str = ""
    note: str = ""


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _magic_format(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return ""


def is_metadata_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    base = parts[-1]
    return "__MACOSX" in parts[:-1] or base.startswith("._") or base.lower() in METADATA_NAMES


def _classify(exc: BaseException) -> tuple[str, str]:
    msg = str(exc) or type(exc).__name__
    low = msg.lower()
    if isinstance(exc, UnidentifiedImageError):
        return "not_image", "not a recognised image format"
    if isinstance(exc, Image.DecompressionBombError) or "decompressed data too large" in low:
        return "bomb", msg
    if "truncated" in low or "premature end" in low or "unexpected end" in low:
        return "truncated", msg
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError, zlib.error, IndexError, struct_error)):
        return "corrupt", f"{type(exc).__name__}: {msg}"
    return "error", f"{type(exc).__name__}: {msg}"


try:  # struct.error is raised by some plugins on garbage headers
    from struct import error as struct_error
except ImportError:  # pragma: no cover
    struct_error = ValueError


def _to_rgb_or_grey(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to RGB, or to 8-bit grey ("L") for grey images; alpha is composited
    on ``background``.  (Grey is made RGB last, by repeating it: resampling each band
    alone gives the same values, at a third of the work.)"""
    mode = im.mode
    if mode in _HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        arr8 = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L")
    if mode == "L" and "transparency" not in im.info:
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa", "RGBA") or (mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        bg = Image.new("RGB", im.size, background)
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def decode_image(data: bytes | None, name: str, params: DecodeParams) -> Decoded:
    """Decode ``data`` (the bytes of member ``name``) to a ``size x size`` RGB array.

    Never raises: every failure is returned as a :class:`Decoded` with a status other
    than ``"ok"`` and a human-readable reason.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # we enforce our own pixel cap
        dec = _decode_safely(data, name, params)
    if dec.image is not None:
        im, dec.image = dec.image, None
        if isinstance(im, Image.Image):
            dec.pixels = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        else:
            dec.pixels = im if im.ndim == 3 else np.repeat(im[:, :, None], 3, axis=2)
    return dec


def decode_members(items: Iterable[tuple[bytes | None, str]], params: DecodeParams) -> Iterator[Decoded]:
    """Decode each ``(data, name)`` as :func:`decode_image` does, lazily (warnings silenced
    once for all); an ok result carries its ``image`` ("RGB" or "L"), not ``pixels``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data, name in items:
            yield _decode_safely(data, name, params)


def _decode_safely(data: bytes | None, name: str, params: DecodeParams) -> Decoded:
    try:
        return _decode(data, name, params)
    except MemoryError:
        return Decoded("bomb", "ran out of memory while decoding")
    except Exception as exc:  # noqa: BLE001 - the contract is: errors are values
        status, reason = _classify(exc)
        return Decoded(status, reason, sha256=hashlib.sha256(data).hexdigest() if data else "")


def _may_be_oriented(im: Image.Image) -> bool:
    """False when ``ImageOps.exif_transpose`` would certainly leave ``im`` as it is."""
    return (getattr(im, "_exif", None) is not None or hasattr(im, "tag_v2")
            or not im.info.keys().isdisjoint(fastdecode.ORIENTATION_KEYS))


#: a source side under this many times the target side is "small": resized with
#: :data:`SMALL_SOURCE_FILTER` rather than Lanczos (docs/benchmarks.md, "Resize filter")
SMALL_SOURCE_RATIO = 2
#: on 92-112 px real faces to 64 px, bicubic is 0.8 grey levels from Lanczos (0.2 on
#: 96 px JPEGs) and 1.5-1.7x faster; bilinear and box are faster still but 1.9 and 2.6 off
SMALL_SOURCE_FILTER = Image.Resampling.BICUBIC


def resample_filter(side: int, size: int) -> Image.Resampling:
    """The filter that resizes a square of ``side`` pixels to ``size``."""
    return SMALL_SOURCE_FILTER if side < SMALL_SOURCE_RATIO * size else Image.Resampling.LANCZOS


def _open(data: bytes) -> Image.Image:
    """``Image.open`` trying the format the magic bytes name first (then every safe one)."""
    kind = _magic_format(data)
    if kind in SAFE_FORMATS:
        try:
            return Image.open(io.BytesIO(data), formats=(kind,))
        except UnidentifiedImageError:
            pass
    return Image.open(io.BytesIO(data), formats=SAFE_FORMATS)


def _decode(data: bytes | None, name: str, params: DecodeParams) -> Decoded:
    if is_metadata_name(name):
        return Decoded("metadata", "operating-system metadata file, not an image",
                       sha256=hashlib.sha256(data or b"").hexdigest())
    if not data:
        return Decoded("empty", "the member is empty (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    plain = _decode_plain(data, params, digest)
    if plain is not None:
        return plain
    try:
        im = _open(data)
    except UnidentifiedImageError:
        kind = _magic_format(data)
        if kind:
            return Decoded("corrupt", f"starts like a {kind} file but its header is unreadable "
                           "(bad checksum or damaged header)", format=kind, sha256=digest)
        return Decoded("not_image", "not a recognised image format", sha256=digest)
    w, h = im.size
    info = dict(width=w, height=h, format=im.format or "", mode=im.mode, sha256=digest)
    refused = _refusal(w, h, params)
    if refused is not None:
        return Decoded(*refused, **info)
    size = params.size
    if im.format == "JPEG" and min(w, h) >= 2 * size:
        # decode at a reduced DCT scale (1/2, 1/4, 1/8), still at least the target size:
        # the scaled IDCT is itself a good low-pass filter, and it is the biggest speed lever
        im.draft("RGB", (size, size))
    im.load()
    note = ""
    if _may_be_oriented(im):
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as exc:  # noqa: BLE001 - a broken EXIF block only loses the orientation
            note = f"EXIF orientation ignored ({type(exc).__name__})"
    im = _square(_to_rgb_or_grey(im, params.background), size)
    if im.size != (size, size) or im.mode not in ("RGB", "L"):  # pragma: no cover - defensive
        return Decoded("error", f"unexpected decoded image {im.mode} {im.size}", **info)
    return Decoded("ok", "", image=im, note=note, **info)


def _refusal(w: int, h: int, params: DecodeParams) -> tuple[str, str] | None:
    """``(status, reason)`` when a ``w x h`` canvas is refused before decoding, else None."""
    if w <= 0 or h <= 0:
        return "corrupt", f"invalid canvas {w}x{h}"
    if w * h > params.max_pixels:
        return "bomb", f"canvas {w}x{h} = {w * h:,} pixels exceeds max_pixels={params.max_pixels:,}"
    if min(w, h) < params.min_side:
        return "too_small", f"{w}x{h} has a side under min_side={params.min_side}"
    if max(w, h) > params.max_aspect * min(w, h):
        return "bad_aspect", f"{w}x{h} is more elongated than max_aspect={params.max_aspect:g}"
    return None


def _square(im: Image.Image, size: int) -> Image.Image:
    """The centre square of ``im`` ("RGB" or "L") resized to ``size x size``."""
    cw, ch = im.size
    side = min(cw, ch)
    if cw == ch == side == size:  # resize would only copy it
        return im
    left, top = (cw - side) // 2, (ch - side) // 2
    return im.resize((size, size), resample_filter(side, size), box=(left, top, left + side, top + side),
                     reducing_gap=2.0)


def _decode_plain(data: bytes, params: DecodeParams, digest: str) -> Decoded | None:
    """A member :mod:`.fastdecode` takes (a plain JPEG or PNG that Pillow would accept as it
    is and decode at full scale), decoded without Pillow's open; None: Pillow decides."""
    header = fastdecode.probe(data)
    if header is None:
        return None
    w, h = header.width, header.height
    limit = Image.MAX_IMAGE_PIXELS
    if _refusal(w, h, params) is not None or (limit is not None and w * h > limit):  # Pillow's to say
        return None
    size = params.size
    scale = draft_scale(w, h, size) if header.format == "JPEG" and min(w, h) >= 2 * size else 1
    pixels = fastdecode.decode(data, header, scale)
    if pixels is None:
        return None
    # at the target size already (CIFAR, MNIST): the pixels as they are; Pillow's wrappers
    # around them would cost as much as decoding them
    dh, dw = pixels.shape[:2]
    image = pixels if dw == dh == size else _square(Image.frombytes(header.mode, (dw, dh), pixels.tobytes()), size)
    return Decoded("ok", "", image=image, width=w, height=h, format=header.format, mode=header.mode, sha256=digest)


def draft_scale(w: int, h: int, size: int) -> int:
    """The DCT scale (1, 2, 4 or 8) Pillow's ``draft(mode, (size, size))`` picks for a
    ``w x h`` JPEG: the largest that leaves both sides at least ``size``; the image is
    then ``ceil(w / scale) x ceil(h / scale)``."""
    most = min(w // size, h // size)
    return next(s for s in (8, 4, 2, 1) if most >= s)


ImageFile.LOAD_TRUNCATED_IMAGES = False
