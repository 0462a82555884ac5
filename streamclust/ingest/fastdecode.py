"""The plain small images most archives hold, decoded without Pillow's per-image Python.

At 28-100 px Pillow's ``Image.open`` + ``load`` is mostly Python (the plugin parses the
markers or chunks, then sets up a decoder per tile): 36 us for a 28x28 MNIST PNG, of which
libpng-style inflating is a fraction; 90 us for a 32x32 CIFAR JPEG, where libjpeg-turbo
itself takes 15 (docs/benchmarks.md, "A decoder without Pillow's Python").  Here a member
whose header leaves nothing for Pillow to interpret is decoded by the C library directly:
``simplejpeg`` (libjpeg-turbo) for baseline or progressive 8-bit YCbCr and grey JPEGs
(large ones at the reduced DCT scale Pillow's ``draft()`` would pick),
``pyspng`` (libspng) for 8-bit grey and RGB PNGs.

What "nothing to interpret" means, so that the pixels *and* the manifest row cannot
differ from Pillow's (tests/ingest/test_fastdecode.py holds them equal on every CIFAR-10
and MNIST image, on encoder variants, and on thousands of damaged members):

- JPEG: only the segments listed in :data:`_JPEG_SEGMENTS` before the scan (so no EXIF or
  XMP orientation, no multi-picture index that makes Pillow say "MPO", no CMYK), 8-bit
  samples, and decoded strictly (any libjpeg warning, a truncated scan for one, is an
  error here);
- PNG: every chunk's CRC correct, only the chunks of :data:`_PNG_CHUNKS` (no transparency,
  palette, compressed text or EXIF; plain text only under keywords the decoder does not
  read), 8-bit grey or RGB, the zlib stream whole, an ``IEND``.

Anything else, and every error, is left to Pillow, whose verdicts the manifest keeps: this
module only ever says "these pixels" or "not mine".  Without the two packages (they are
dependencies, but a platform may lack a wheel) every member goes to Pillow, with the same
results.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np
from PIL.PngImagePlugin import MAX_TEXT_MEMORY

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a platform without its wheel: Pillow decodes
    simplejpeg = None
try:
    import pyspng
except ImportError:  # pragma: no cover
    pyspng = None

__all__ = ["Header", "probe", "decode", "available"]


class Header(NamedTuple):
    """What Pillow would report of the member: its ``format``, size and ``mode``
    (and, for a PNG, where its image data lie and whether it is interlaced)."""

    format: str
    width: int
    height: int
    mode: str
    data: tuple[tuple[int, int], ...] = ()
    interlaced: bool = False


def available() -> dict[str, bool]:
    """Which fast decoders this process has."""
    return {"JPEG": simplejpeg is not None, "PNG": pyspng is not None}


# --------------------------------------------------------------------------- JPEG
#: markers allowed before the scan: start of image, APP0 (JFIF), APP2 only as an ICC
#: profile (Pillow keeps it aside; not a multi-picture index), APP14 (Adobe: libjpeg reads
#: it in both), quantisation and Huffman tables, restart interval, comment, baseline /
#: extended / progressive frames
_JPEG_SEGMENTS = frozenset({0xE0, 0xE2, 0xEE, 0xDB, 0xC4, 0xDD, 0xFE, 0xC0, 0xC1, 0xC2})
_FRAMES = (0xC0, 0xC1, 0xC2)
_JPEG_MODES = {"YCbCr": "RGB", "Gray": "L"}  # libjpeg's colour space -> Pillow's mode


def _jpeg(data: bytes) -> Header | None:
    i, n, frame = 2, len(data), None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker not in _JPEG_SEGMENTS:
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xE2 and data[i + 4:i + 16] != b"ICC_PROFILE\0":
            return None
        if marker in _FRAMES:
            if frame is not None or data[i + 4] != 8:  # one frame, 8-bit samples
                return None
            frame = marker
        i += 2 + length
    else:
        return None
    if frame is None:
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    mode = _JPEG_MODES.get(colour)
    return Header("JPEG", width, height, mode) if mode else None


# --------------------------------------------------------------------------- PNG
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: chunks allowed: the critical ones of a grey or RGB image, and ancillary chunks that
#: Pillow only records (colour space, gamma, physical size, time; uncompressed text, such as
#: the dates ImageMagick writes, unless its keyword is one the decoder reads: :data:`_READ_KEYS`)
_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"tIME", b"tEXt"})
#: ``Image.info`` keys an orientation can come from (``ImageOps.exif_transpose`` reads them)
ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
#: the ``Image.info`` keys streamclust's decoder reads: a text chunk under one of them is Pillow's
_READ_KEYS = frozenset((*ORIENTATION_KEYS, "transparency"))
_PNG_MODES = {0: "L", 2: "RGB"}  # colour type -> Pillow's mode (at 8 bits)
_CHUNK = struct.Struct(">I4s")


def _png(data: bytes) -> Header | None:
    n = len(data)
    if n < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\0\0\0\r":
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    mode = _PNG_MODES.get(colour)
    if mode is None or depth != 8 or compression or filtering or interlace > 1:
        return None
    i, spans, data_ended, text = 8, [], False, 0
    while True:
        if i + 12 > n:
            return None
        length, kind = _CHUNK.unpack_from(data, i)
        end = i + 12 + length
        if kind not in _PNG_CHUNKS or end > n or length > n:
            return None
        if zlib.crc32(data[i + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return None
        if kind == b"tEXt":
            key, _, value = data[i + 8:end - 4].partition(b"\0")
            text += len(value)
            if key.decode("latin-1") in _READ_KEYS or text > MAX_TEXT_MEMORY:  # Pillow's to read
                return None
        if kind == b"IDAT":
            if data_ended:  # image data in two runs
                return None
            spans.append((i + 8, end - 4))
        elif spans:
            data_ended = True
        if kind == b"IEND":
            return Header("PNG", width, height, mode, tuple(spans), bool(interlace)) if spans else None
        if kind == b"IHDR" and i != 8:
            return None
        i = end


#: Adam7's passes: first column and row, column and row steps
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _raw_size(header: Header) -> int:
    """Bytes of the filtered image data: each row of each pass, plus its filter byte."""
    c = 3 if header.mode == "RGB" else 1
    w, h = header.width, header.height
    if not header.interlaced:
        return h * (1 + w * c)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
        if pw > 0 and ph > 0:
            total += ph * (1 + pw * c)
    return total


def _whole_stream(data: bytes, header: Header) -> bool:
    """The image data are one zlib stream, ending with its checksum right after the rows.

    libspng stops inflating at the last row, so a damaged Adler-32 (or data after the
    rows) passes it; Pillow inflates to the end and calls the member corrupt.  Inflating
    here too costs a few microseconds on a small image.
    """
    stream = zlib.decompressobj()
    size = _raw_size(header)
    try:
        raw = stream.decompress(b"".join(data[a:b] for a, b in header.data), size + 1)
    except zlib.error:
        return False
    return stream.eof and not stream.unused_data and not stream.unconsumed_tail and len(raw) == size


# --------------------------------------------------------------------------- both
def probe(data: bytes) -> Header | None:
    """The header of a member this module can decode exactly as Pillow would, else None
    (never raises: a header cut short is Pillow's to report)."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg(data) if simplejpeg is not None else None
        if data[:8] == _PNG_SIGNATURE:
            return _png(data) if pyspng is not None else None
    except (IndexError, struct.error):
        pass
    return None


def decode(data: bytes, header: Header, scale: int = 1) -> np.ndarray | None:
    """The pixels of a probed member, ``(height, width)`` for "L" and ``(height, width, 3)``
    for "RGB", uint8; None where the library reports any problem (Pillow then decides).

    ``scale`` (a JPEG's: 1, 2, 4 or 8): decoded at that reduced DCT scale, as Pillow's
    ``draft()`` does, to ``ceil(height / scale) x ceil(width / scale)``.
    """
    height, width = -(-header.height // scale), -(-header.width // scale)
    try:
        if header.format == "JPEG":
            arr = simplejpeg.decode_jpeg(data, "RGB" if header.mode == "RGB" else "GRAY", strict=True,
                                         min_height=height, min_width=width, min_factor=scale)
        elif scale != 1:
            return None
        else:
            if not _whole_stream(data, header):
                return None
            arr = pyspng.load(data)
    except Exception:  # noqa: BLE001 - whatever the library raises, Pillow gives the verdict
        return None
    if arr.dtype != np.uint8:
        return None
    if arr.ndim == 3 and header.mode == "L" and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    want = (height, width) + ((3,) if header.mode == "RGB" else ())
    return arr if arr.shape == want else None
