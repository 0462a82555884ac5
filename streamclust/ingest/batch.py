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
    """A :class:`Batch` of ``(member, decoded)`` pairs (``decoded`` None: the reader skipped it)."""
    rows: list[tuple] = []
    ok: list[int] = []
    keys: list[bytes] = []
    images: list[np.ndarray] = []
    staged = False
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
            if dec.pixels is None:
                staged = True
            else:
                images.append(dec.pixels)
    if staged:
        pixels = None
    elif images:
        pixels = np.stack(images)
    else:
        pixels = np.empty((0, size, size, 3), np.uint8)
    return Batch(rows, ok, b"".join(keys), pixels)


def decode_batch(members: Iterable[Member], params: DecodeParams) -> Batch:
    """Decode ``members`` (those the reader delivered) into a :class:`Batch`."""
    members = list(members)
    todo = [m for m in members if not m.status]
    decoded = iter(list(decode_members(((m.data, m.name) for m in todo), params)))
    pairs = [(m, None if m.status else next(decoded)) for m in members]
    return collect(pairs, params.size)
