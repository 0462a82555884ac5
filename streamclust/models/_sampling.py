"""Row sampling in one streaming pass.

A fit that needs a few rows in memory (k-means++ seeding, a validation sample) draws
*sorted* random row positions up front, from a generator derived from the plan seed
(:func:`streamclust.engine.pass_rng`), and keeps exactly those rows while the
pass streams over the data.  The sample does not depend on the batch size or on where
a fit was interrupted and resumed.
"""

from __future__ import annotations

import numpy as np

from ..engine.arrays import host_rows

__all__ = ["sample_row_indices", "RowSampleAccumulator"]


def sample_row_indices(n_rows: int, n_sample: int, rng: np.random.Generator) -> np.ndarray:
    """``n_sample`` distinct row positions out of ``n_rows``, sorted, as ``int64``.

    All rows (``arange(n_rows)``) when ``n_sample >= n_rows``.
    """
    n_rows, n_sample = int(n_rows), int(n_sample)
    if n_sample >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    idx = rng.choice(n_rows, size=n_sample, replace=False, shuffle=False)
    return np.sort(idx.astype(np.int64))


class RowSampleAccumulator:
    """Keeps the rows at the given sorted positions while a pass streams by.

    Parameters
    ----------
    rows : ndarray of int
        Sorted, distinct positions (in the row source) of the rows to keep.
    n_features : int
        Width of a row.
    dtype : dtype, default=np.float64
        dtype the rows are stored in.
    name : str, default="sampling rows"
        Progress label.

    Attributes
    ----------
    sample : ndarray of shape (len(rows), n_features)
        The kept rows, in order; complete once ``filled.all()``.
    filled : ndarray of bool, shape (len(rows),)
        Which rows of ``sample`` have been seen.
    """

    def __init__(self, rows, n_features: int, *, dtype=np.float64, name: str = "sampling rows"):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.name = name
        self.sample = np.zeros((self.rows.size, int(n_features)), dtype=dtype)
        self.filled = np.zeros(self.rows.size, dtype=bool)

    def update(self, X: np.ndarray, offset: int) -> None:
        lo = np.searchsorted(self.rows, offset, side="left")
        hi = np.searchsorted(self.rows, offset + X.shape[0], side="left")
        if hi > lo:
            self.sample[lo:hi] = host_rows(X, self.rows[lo:hi] - offset)
            self.filled[lo:hi] = True

    def merge(self, other: "RowSampleAccumulator") -> None:
        """Combine with an accumulator that saw other batches of the same pass."""
        self.sample[other.filled] = other.sample[other.filled]
        self.filled |= other.filled

    def state_dict(self) -> dict:
        return {"sample": self.sample, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        self.sample = np.array(state["sample"], dtype=self.sample.dtype, copy=True)
        self.filled = np.array(state["filled"], dtype=bool, copy=True)
