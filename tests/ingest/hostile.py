"""Builders of hostile image archives for the ingestion tests (nothing is committed as data)."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a gigantic canvas (valid header CRC)."""
    data = bytearray(encode(Image.new("L", (16, 16)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def exif_rotated() -> bytes:
    """A 40x20 JPEG, left half black, with EXIF orientation 6 (rotate 90° clockwise to view)."""
    arr = np.full((20, 40, 3), 255, np.uint8)
    arr[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def hostile_members() -> list[tuple[str, bytes, str]]:
    """``(name, bytes, expected status)`` for every kind of breakage that lives in the bytes."""
    good = encode(noise(120, 90, 1), "JPEG")
    png = encode(noise(50, 60, 2), "PNG")
    bad_png = bytearray(png)
    bad_png[29] ^= 0xFF  # IHDR CRC
    rgba = noise(40, 40, 3).convert("RGBA")
    rgba.putalpha(0)
    p_trans = noise(30, 30, 4).convert("P")
    p_trans.info["transparency"] = 0
    i16 = Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 25).astype(np.uint16))
    return [
        ("photos/good.jpg", good, "ok"),
        ("photos/good_copy.jpg", good, "ok"),  # duplicate content
        ("photos/plain.png", png, "ok"),
        ("photos/gray.png", encode(noise(30, 30, 5, "L"), "PNG"), "ok"),
        ("photos/la.png", encode(noise(30, 30, 6, "LA"), "PNG"), "ok"),
        ("photos/p_trans.png", encode(p_trans, "PNG", transparency=0), "ok"),
        ("photos/rgba.png", encode(rgba, "PNG"), "ok"),
        ("photos/cmyk.jpg", encode(noise(30, 30, 7, "CMYK"), "JPEG"), "ok"),
        ("photos/i16.png", encode(i16, "PNG"), "ok"),
        ("photos/bilevel.png", encode(noise(30, 30, 8, "1"), "PNG"), "ok"),
        ("photos/anim.gif", animated_gif(), "ok"),
        ("photos/rotated.jpg", exif_rotated(), "ok"),
        ("photos/wide_ok.png", encode(noise(90, 30, 9), "PNG"), "ok"),
        ("broken/truncated.jpg", good[: len(good) // 2], "truncated"),
        ("broken/empty.jpg", b"", "empty"),
        ("broken/notes.txt", b"just some text\n", "not_image"),
        ("broken/page.jpg", b"<!DOCTYPE html><html><body>404</body></html>", "not_image"),
        ("broken/bad_crc.png", bytes(bad_png), "corrupt"),
        ("broken/bomb.png", png_bomb(), "bomb"),
        ("broken/one_pixel.png", encode(Image.new("RGB", (1, 1), "red"), "PNG"), "too_small"),
        ("broken/banner.png", encode(Image.new("RGB", (400, 20), "blue"), "PNG"), "bad_aspect"),
        ("__MACOSX/photos/._good.jpg", b"\x00\x05\x16\x07resource fork", "metadata"),
        ("photos/.DS_Store", b"\x00\x00\x00\x01Bud1", "metadata"),
    ]


def write_zip(path: Path, members, *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("photos/", b"")  # a directory entry: excluded from the manifest
        for name, data, *_ in members:
            zf.writestr(name, data)
    return path


def write_tar(path: Path, members, mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("photos")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data, *_ in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_dir(path: Path, members) -> Path:
    for name, data, *_ in members:
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return path


def corrupt_zip_crc(path: Path, name: str) -> None:
    """Flip one byte of a STORED member's data so that its CRC no longer matches."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
        assert info.compress_type == zipfile.ZIP_STORED
        offset = info.header_offset
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[offset + 26: offset + 30])
    data_start = offset + 30 + name_len + extra_len
    raw[data_start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def zip_with_non_utf8_name(path: Path, image: bytes) -> Path:
    """A zip whose member name is the bytes b'caf\\xe9.png' without the UTF-8 flag."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cafX.png", image)
    raw = path.read_bytes().replace(b"cafX.png", b"caf\xe9.png")
    path.write_bytes(raw)
    return path


def synthetic_jpegs(n: int, side: int = 48, seed: int = 0):
    """``n`` small distinct JPEG members (smooth blobs, cheap to encode)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        c = rng.random((3, 3))
        arr = np.stack([c[k, 0] + c[k, 1] * xx + c[k, 2] * np.sin(6 * yy + i) for k in range(3)], -1)
        arr = (255 * (arr - arr.min()) / (np.ptp(arr) + 1e-9)).astype(np.uint8)
        yield f"img/{i:06d}.jpg", encode(Image.fromarray(arr), "JPEG", quality=85)


def fs_supports_bytes_names(path: Path) -> bool:
    try:
        p = os.path.join(os.fsencode(path), b"t\xe9st")
        open(p, "wb").close()
        os.remove(p)
        return True
    except OSError:
        return False
