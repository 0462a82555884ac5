"""The duplicate index: the first store row of every distinct image, by its digest.

Kept as a few sorted NumPy arrays of fixed-size binary keys (the first
:data:`~streamclust.ingest.batch.KEY_BYTES` bytes of the sha256) and ``int64`` rows, 24
bytes per distinct image, instead of a dict of hex strings (about 180 bytes each).  New
keys arrive a block at a time and form a new sorted level; levels of similar size are
merged (a log-structured merge), and levels past :data:`MAX_MERGED` keys are left as
they are, so a merge never holds more than two such levels at once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DigestIndex", "MAX_MERGED"]

#: keys beyond which a level is no longer merged into a larger one
MAX_MERGED = 1 << 21


class DigestIndex:
    """First row of each key: ``first(keys, rows)`` looks a block up and adds what is new.

    Parameters
    ----------
    key_bytes : int
        The width of a key.
    """

    def __init__(self, key_bytes: int):
        self.dtype = np.dtype(f"S{key_bytes}")
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.levels)

    def first(self, keys: bytes, rows: np.ndarray) -> np.ndarray:
        """For each key (``keys`` concatenated, one per row of ``rows``, in order), the
        first row that had it: an earlier block's, or the earliest of this one."""
        keys = np.frombuffer(keys, dtype=self.dtype)
        rows = np.asarray(rows, dtype=np.int64)
        if keys.size == 0:
            return rows.copy()
        uniq, first_at, inverse = np.unique(keys, return_index=True, return_inverse=True)
        firsts = rows[first_at]
        found = np.zeros(uniq.size, dtype=bool)
        for level_keys, level_rows in self.levels:
            at = np.minimum(np.searchsorted(level_keys, uniq), level_keys.size - 1)
            hit = level_keys[at] == uniq
            firsts[hit] = level_rows[at[hit]]
            found |= hit
        if not found.all():
            self._add(uniq[~found], firsts[~found])
        return firsts[inverse.reshape(-1)]

    def _add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """A new level of sorted, new keys; then merge levels of similar size."""
        self.levels.append((keys.copy(), rows.copy()))
        while len(self.levels) > 1:
            (ak, ar), (bk, br) = self.levels[-2], self.levels[-1]
            if ak.size > 2 * bk.size or ak.size + bk.size > MAX_MERGED:
                break
            at = np.searchsorted(ak, bk)
            self.levels[-2:] = [(np.insert(ak, at, bk), np.insert(ar, at, br))]
