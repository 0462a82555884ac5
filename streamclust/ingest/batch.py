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

    The ok images come as ``image`` (their bytes joined and read out as one array: cheaper
    than an array per image), as ``pixels``, or (staged) as neither.
    """
    pairs = list(pairs)
    rows: list[tuple] = []
    ok: list[int] = []
    keys: list[bytes] = []
    arrays: list[np.ndarray] = []
    images = _Images(size)
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
                images.add(dec.image)
            elif dec.pixels is not None:
                arrays.append(dec.pixels)
    if len(images):
        pixels = images.pixels()
    elif arrays or not ok:
        pixels = np.stack(arrays) if arrays else np.empty((0, size, size, 3), np.uint8)
    else:
        pixels = None  # staged
    return Batch(rows, ok, b"".join(keys), pixels)


class _Images:
    """Images of ``size x size`` ("RGB" or "L"), their bytes gathered per mode and read
    out as one array at the end (one ``frombuffer`` for all instead of an array each)."""

    def __init__(self, size: int):
        self.size = size
        self.data: dict[str, list[bytes]] = {"RGB": [], "L": []}
        self.modes: list[str] = []

    def add(self, im: Image.Image | np.ndarray) -> None:
        """An image: a Pillow image ("RGB" or "L"), or its pixels (3-D RGB, 2-D grey)."""
        mode = im.mode if isinstance(im, Image.Image) else "RGB" if im.ndim == 3 else "L"
        self.data[mode].append(im.tobytes())
        self.modes.append(mode)

    def __len__(self) -> int:
        return len(self.modes)

    def pixels(self) -> np.ndarray:
        """``(images, size, size, 3)`` uint8, in the order they were added (grey repeated)."""
        s = self.size
        rgb, grey = self.data["RGB"], self.data["L"]
        if rgb:
            rgb = np.frombuffer(b"".join(rgb), np.uint8).reshape(-1, s, s, 3)
        if grey:
            grey = np.repeat(np.frombuffer(b"".join(grey), np.uint8).reshape(-1, s, s, 1), 3, axis=3)
        if not len(grey) or not len(rgb):
            return grey if len(grey) else rgb
        out = np.empty((len(self.modes), s, s, 3), np.uint8)
        is_grey = np.fromiter((m == "L" for m in self.modes), bool, len(self.modes))
        out[np.flatnonzero(is_grey)] = grey
        out[np.flatnonzero(~is_grey)] = rgb
        return out


def decode_batch(members: Iterable[Member], params: DecodeParams) -> Batch:
    """Decode ``members`` (those the reader delivered) into a :class:`Batch`."""
    members = list(members)
    todo = [m for m in members if not m.status]
    decoded = iter(list(decode_members(((m.data, m.name) for m in todo), params)))
    pairs = [(m, None if m.status else next(decoded)) for m in members]
    return collect(pairs, params.size)
