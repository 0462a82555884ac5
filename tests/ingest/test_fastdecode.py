"""The fast decoders give Pillow's results exactly, or leave the member to Pillow.

Each case decodes a member twice, through :func:`decode_image` as it is and with
:mod:`streamclust.ingest.fastdecode` switched off, and compares everything a manifest row
and the store get: status, reason, size, format, mode, digest, pixels.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamclust.ingest import decode as decode_mod
from streamclust.ingest import fastdecode
from streamclust.ingest.decode import DecodeParams, decode_image

pytestmark = pytest.mark.skipif(not all(fastdecode.available().values()),
                                reason="simplejpeg or pyspng is not installed")

DATA = Path(os.environ.get("STREAMCLUST_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def _outcome(data: bytes, size: int, **kw) -> tuple:
    params = DecodeParams(size, kw.get("max_pixels", 10**8), kw.get("min_side", 1), kw.get("max_aspect", 8.0),
                          (0, 0, 0))
    d = decode_image(data, "m", params)
    pixels = None if d.pixels is None else (d.pixels.shape, d.pixels.tobytes())
    return d.status, d.reason, d.width, d.height, d.format, d.mode, d.sha256, d.note, pixels


def _both(data: bytes, size: int, monkeypatch, **kw) -> tuple[tuple, tuple, bool]:
    """(outcome with the fast path, outcome without it, whether the fast path decoded it)."""
    taken = []
    real = fastdecode.decode

    def spy(data, header, *args):
        out = real(data, header, *args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(fastdecode, "decode", spy)
    fast = _outcome(data, size, **kw)
    monkeypatch.setattr(decode_mod.fastdecode, "probe", lambda data: None)
    slow = _outcome(data, size, **kw)
    monkeypatch.undo()
    return fast, slow, any(taken)


def _photo(w: int = 45, h: int = 37, seed: int = 0) -> Image.Image:
    """A smooth picture with edges (not noise: JPEG's subsampling and rounding then matter)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 5 + y * 3) % 256, (np.sin(x / 4.0) * 100 + 128), (y * 7) % 256], axis=2)
    arr = arr + rng.normal(0, 8, arr.shape)
    arr[h // 3:h // 2, w // 4:w // 2] = [250, 20, 40]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


JPEG_VARIANTS = [dict(quality=q, subsampling=ss, progressive=p, optimize=o)
                 for q in (30, 95, 100) for ss in (0, 1, 2) for p in (False, True) for o in (False, True)]


@pytest.mark.parametrize("kw", JPEG_VARIANTS, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_variants_equal_pillow_and_take_the_fast_path(kw, mode, monkeypatch):
    data = _jpeg(_photo().convert(mode), **kw)
    for size in (37, 24, 60):  # the same size, smaller (resized), larger
        fast, slow, taken = _both(data, size, monkeypatch)
        assert fast == slow
        assert taken and fast[0] == "ok"


def test_jpeg_with_restart_markers_comment_and_icc_profile_take_the_fast_path(monkeypatch):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for data in (_jpeg(_photo(), restart_marker_blocks=2), _jpeg(_photo(), comment=b"a comment"),
                 _jpeg(_photo(), icc_profile=icc)):
        fast, slow, taken = _both(data, 20, monkeypatch)
        assert fast == slow and taken and fast[0] == "ok"


@pytest.mark.parametrize("w,h", [(400, 300), (257, 199), (129, 517), (1000, 700), (128, 128)])
@pytest.mark.parametrize("kw", [dict(subsampling=0), dict(subsampling=2), dict(progressive=True), dict(grey=True)],
                         ids=["444", "420", "progressive", "grey"])
def test_large_jpegs_are_decoded_at_pillows_draft_scale(w, h, kw, monkeypatch):
    kw = dict(kw)
    im = _photo(w, h, seed=w)
    if kw.pop("grey", False):
        im = im.convert("L")
    data = _jpeg(im, quality=90, **kw)
    for size in (64, 50, 17, 32):  # scales 2..8, and an exact multiple
        fast, slow, taken = _both(data, size, monkeypatch)
        assert fast == slow
        assert taken and fast[0] == "ok"


def test_draft_scale_is_pillows():
    for w, h, size in [(400, 300, 64), (257, 199, 50), (129, 517, 64), (1000, 700, 17), (128, 128, 64), (127, 300, 64)]:
        im = Image.open(io.BytesIO(_jpeg(_photo(w, h))))
        im.draft("RGB", (size, size))
        s = decode_mod.draft_scale(w, h, size)
        assert im.size == (-(-w // s), -(-h // s))


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    return _jpeg(_photo(), exif=exif.tobytes())


@pytest.mark.parametrize("make", [
    lambda: _exif_rotated(),                                            # orientation: Pillow applies it
    lambda: _jpeg(_photo().convert("CMYK")),                            # CMYK: Pillow's own conversion
    lambda: _png(_photo().convert("P")),                                 # palette
    lambda: _png(_photo().convert("RGBA")),                              # alpha
    lambda: _png(_photo().convert("LA")),
    lambda: _png(Image.fromarray((np.arange(45 * 37, dtype=np.uint16) * 20).reshape(37, 45))),  # 16-bit
    lambda: _png(_photo().convert("L"), transparency=7),                 # tRNS
    lambda: _png(_photo(), pnginfo=_text_info("Raw profile type exif")),  # text an orientation is read from
    lambda: _png(_photo().convert("L"), pnginfo=_text_info("transparency")),  # text the decoder reads
    lambda: _png(_photo(), pnginfo=_text_info("Title", compressed=True)),  # compressed text
    lambda: _png(_photo().convert("1")),                                 # 1-bit
], ids=["exif", "cmyk", "palette", "rgba", "la", "16bit", "trns", "exif-text", "transparency-text", "ztxt", "1bit"])
def test_members_pillow_must_interpret_are_left_to_pillow(make, monkeypatch):
    fast, slow, taken = _both(make(), 16, monkeypatch)
    assert fast == slow
    assert not taken


def _text_info(key: str = "Title", compressed: bool = False):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, "x" * 50 if key != "transparency" else "7", zip=compressed)
    return info


def test_png_with_plain_text_takes_the_fast_path(monkeypatch):
    info = _text_info("date:create")
    info.add_text("Software", "ImageMagick 7")
    for im in (_photo(), _photo().convert("L")):
        fast, slow, taken = _both(_png(im, pnginfo=info), 20, monkeypatch)
        assert fast == slow and taken and fast[0] == "ok"


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("interlace", [False, True])
def test_png_grey_and_rgb_take_the_fast_path(mode, interlace, monkeypatch):
    im = _photo().convert(mode)
    data = _png(im, optimize=True) if not interlace else _interlaced_png(im)
    for size in (37, 16, 50):
        fast, slow, taken = _both(data, size, monkeypatch)
        assert fast == slow and taken and fast[0] == "ok"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 8
    while i < len(data):
        (n,) = struct.unpack_from(">I", data, i)
        out.append((data[i + 4:i + 8], data[i + 8:i + 8 + n]))
        i += 12 + n
    return out


def _interlaced_png(im: Image.Image) -> bytes:
    """An Adam7 PNG (Pillow cannot write one): the rows of each pass, filter byte 0."""
    arr = np.asarray(im)
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else 3
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if ch == 1 else 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"gAMA", struct.pack(">I", 45455))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def test_interlaced_png_equals_pillow():
    data = _interlaced_png(_photo())
    assert np.array_equal(fastdecode.decode(data, fastdecode.probe(data)), np.asarray(Image.open(io.BytesIO(data))))


def _repacked(data: bytes, rng: np.random.Generator) -> bytes:
    """A PNG whose filtered rows have a few bytes overwritten (filter types among them),
    compressed again, every checksum right: damage only the decoder can see."""
    chunks = _chunks(data)
    raw = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
    for p in rng.integers(0, len(raw), size=int(rng.integers(1, 4))):
        raw[p] = int(rng.integers(0, 256)) if rng.random() < 0.7 else int(rng.integers(0, 8))
    out = [_chunk(kind, body) for kind, body in chunks if kind not in (b"IDAT", b"IEND")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(out) + _chunk(b"IDAT", zlib.compress(bytes(raw))) + _chunk(b"IEND", b"")


def _mutants(data: bytes, rng: np.random.Generator, count: int, png: bool):
    """Damaged copies: cut short, bytes overwritten, bytes inserted or removed; for a PNG
    half of them with every CRC made right again (past the CRC check, into the decoder),
    and as many with the damage inside the compressed rows (:func:`_repacked`)."""
    n = len(data)
    for k in range(count):
        kind = k % 4
        if png and k % 3 == 2:
            yield _repacked(data, rng)
            continue
        if kind == 0:
            out = data[:int(rng.integers(2, n))]
        elif kind == 1:
            b = bytearray(data)
            for p in rng.integers(2, n, size=int(rng.integers(1, 4))):
                b[p] = int(rng.integers(0, 256))
            out = bytes(b)
        elif kind == 2:
            p = int(rng.integers(2, n))
            out = data[:p] + bytes(rng.integers(0, 256, size=int(rng.integers(1, 5)), dtype=np.uint8)) + data[p:]
        else:
            p = int(rng.integers(2, n - 1))
            out = data[:p] + data[p + int(rng.integers(1, 5)):]
        if png and k % 8 >= 4:
            try:
                out = b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(kind, body) for kind, body in _chunks(out))
            except struct.error:
                pass
        yield out


@pytest.mark.parametrize("fmt", ["jpeg-rgb", "jpeg-grey", "jpeg-progressive", "jpeg-draft", "png-rgb", "png-grey",
                                 "png-text"])
def test_damaged_members_get_pillows_verdict(fmt, monkeypatch):
    im = _photo(24, 24, seed=3)
    data = {"jpeg-rgb": lambda: _jpeg(im, quality=90), "jpeg-grey": lambda: _jpeg(im.convert("L")),
            "jpeg-progressive": lambda: _jpeg(im, progressive=True),
            "jpeg-draft": lambda: _jpeg(_photo(100, 80, seed=3)),  # decoded at half scale
            "png-rgb": lambda: _png(im), "png-grey": lambda: _png(im.convert("L")),
            "png-text": lambda: _png(im, pnginfo=_text_info("Comment"))}[fmt]()
    rng = np.random.default_rng(sum(map(ord, fmt)))
    taken_ok = 0
    for mutant in _mutants(data, rng, 400, png=fmt.startswith("png")):
        fast, slow, taken = _both(mutant, 24, monkeypatch)
        assert fast == slow, (fmt, mutant)
        taken_ok += taken
    assert taken_ok > 0  # some damage leaves a decodable image (in the pixels, or ignored)


@pytest.mark.skipif(not (DATA / "cifar10.zip").exists(), reason="../shared/data not present")
@pytest.mark.parametrize("name,size,take", [("cifar10.zip", 32, 60_000), ("mnist.zip", 28, 20_000)])
def test_every_real_image_equals_pillow(name, size, take):
    """Every CIFAR-10 JPEG and MNIST PNG: the fast decoder's pixels are Pillow's, bit for bit."""
    with zipfile.ZipFile(DATA / name) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()][:take]
        fast = 0
        for info in infos:
            data = zf.read(info)
            header = fastdecode.probe(data)
            assert header is not None, info.filename
            pixels = fastdecode.decode(data, header)
            im = Image.open(io.BytesIO(data))
            assert (header.format, header.width, header.height, header.mode) == (im.format, *im.size, im.mode)
            assert np.array_equal(pixels, np.asarray(im)), info.filename
            fast += 1
    assert fast == len(infos) > 0
