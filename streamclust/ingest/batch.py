"""Decoded members, a block at a time, column by column: what a decode task hands back.

A :class:`Batch` holds the manifest fields of its members (all but the store index and
``duplicate_of``, which only the writer knows), the 16-byte digest prefixes of its ok
images and their pixels as one array, so that a worker returns one compact object per
block instead of an object (and a pickled array) per member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image

from .decode import DecodeParams, Decoded, decode_members
from .readers import Member

__all__ = ["Batch", "collect", "decode_batch", "KEY_BYTES"]

#: bytes of the sha256 kept by the duplicate index (the manifest keeps all 32)
KEY_BYTES = 16


@dataclass
class Batch:
    """Consecutive members of the source, decoded.

    ``rows[i]`` is ``(position, member, status, reason, width, height, format, mode,
    bytes, sha256, note)``; ``ok`` lists the rows that are ok images, in order; ``keys``
    holds their digest prefixes (``KEY_BYTES`` each) and ``pixels`` their images,
    ``(len(ok), size, size, 3)`` uint8, or None when the pixels were staged elsewhere
    (a dask worker wrote them; the writer then records the members' positions).
    """

    rows: list[tuple]
    ok: list[int]
    keys: bytes
    pixels: np.ndarray | None

    @property
    def positions(self) -> list[int]:
        """Source positions of the ok images."""
        return [self.rows[i][0] for i in self.ok]


def collect(pairs: Iterable[tuple[Member, Decoded | None]], size: int) -> Batch:
    """A :class:`Batch` of ``(member, decoded)`` pairs (``decoded`` None: the reader skipped it).

    The ok images come as ``image`` (pasted side by side on one canvas per mode, read out
    in one go: cheaper than an array per image), as ``pixels``, or (staged) as neither.
    """
    pairs = list(pairs)
    rows: list[tuple] = []
    ok: list[int] = []
    keys: list[bytes] = []
    arrays: list[np.ndarray] = []
    mosaic = _Mosaic(size, sum(dec is not None and dec.image is not None for _, dec in pairs))
    for m, dec in pairs:
        if dec is None:
            rows.append((m.position, m.name, m.status, m.reason, None, None, "", "", m.nbytes, "", m.note))
            continue
        note = f"{m.note}; {dec.note}" if m.note and dec.note else m.note or dec.note
        rows.append((m.position, m.name, dec.status, dec.reason, dec.width, dec.height, dec.format, dec.mode,
                     m.nbytes, dec.sha256, note))
        if dec.status == "ok":
            ok.append(len(rows) - 1)
            keys.append(bytes.fromhex(dec.sha256[:2 * KEY_BYTES]))
            if dec.image is not None:
                mosaic.add(dec.image)
            elif dec.pixels is not None:
                arrays.append(dec.pixels)
    if mosaic.n:
        pixels = mosaic.pixels()
    elif arrays or not ok:
        pixels = np.stack(arrays) if arrays else np.empty((0, size, size, 3), np.uint8)
    else:
        pixels = None  # staged
    return Batch(rows, ok, b"".join(keys), pixels)


class _Mosaic:
    """``n`` images of ``size x size`` ("RGB" or "L") pasted in a column, one canvas a mode."""

    def __init__(self, size: int, n: int):
        self.size, self.n = size, n
        self.canvases: dict[str, Image.Image] = {}
        self.slots: list[tuple[str, int]] = []  # (mode, place on its canvas) of each image
        self.used: dict[str, int] = {}

    def add(self, im: Image.Image) -> None:
        canvas = self.canvases.get(im.mode)
        if canvas is None:
            canvas = self.canvases[im.mode] = Image.new(im.mode, (self.size, self.size * self.n))
            self.used[im.mode] = 0
        k = self.used[im.mode]
        canvas.paste(im, (0, k * self.size))
        self.slots.append((im.mode, k))
        self.used[im.mode] = k + 1

    def pixels(self) -> np.ndarray:
        """``(images, size, size, 3)`` uint8, in the order they were added (grey repeated)."""
        s = self.size
        out = np.empty((len(self.slots), s, s, 3), np.uint8)
        modes = np.array([mode for mode, _ in self.slots])
        for mode, canvas in self.canvases.items():
            used = self.used[mode]
            flat = np.asarray(canvas.crop((0, 0, s, s * used)) if used < self.n else canvas)
            out[modes == mode] = flat.reshape(used, s, s, -1)  # (an "L" band fills all three)
        return out


def decode_batch(members: Iterable[Member], params: DecodeParams) -> Batch:
    """Decode ``members`` (those the reader delivered) into a :class:`Batch`."""
    members = list(members)
    todo = [m for m in members if not m.status]
    decoded = iter(list(decode_members(((m.data, m.name) for m in todo), params)))
    pairs = [(m, None if m.status else next(decoded)) for m in members]
    return collect(pairs, params.size)
