"""Row sources: read a NumPy, zarr or dask array ``batch_size`` rows at a time.

Estimators never materialise their input.  A :class:`RowSource` wraps the array
(optionally a sorted subset of its rows, e.g. the non-duplicate images of a store)
and yields float batches of shape ``(n, n_features)``; image arrays of shape
``(N, h, w, c)`` are flattened per batch, and integer pixels are converted per batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from sklearn.utils.validation import validate_data

__all__ = ["RowSource", "as_row_source", "is_lazy_array", "check_sample_weight", "weight_slice", "output_dtype"]


def is_lazy_array(X) -> bool:
    """True for zarr and dask arrays (anything array-like that is not in memory)."""
    mod = type(X).__module__ or ""
    return mod.startswith(("zarr", "dask")) and hasattr(X, "shape") and hasattr(X, "dtype")


class RowSource:
    """Rows of an array-like, read in batches.

    Parameters
    ----------
    array : ndarray, zarr.Array or dask.array.Array
        Array of shape ``(n_rows, ...)``; trailing axes are flattened.
    rows : ndarray of int, default=None
        Sorted indices of the rows to use; ``None`` uses all rows.
    check_finite : bool, default=True
        Raise ``ValueError`` when a batch holds NaN or infinity.
    columns : int, default=None
        Use only the first ``columns`` columns of a 2-D array (e.g. the leading
        principal components of a feature store); ``None`` uses all.
    """

    def __init__(self, array, rows=None, *, check_finite=True, columns=None):
        self.array = array
        self.columns = None if columns is None else int(columns)
        if self.columns is not None and (len(array.shape) != 2 or not 1 <= self.columns <= array.shape[1]):
            raise ValueError(f"columns={columns} needs a 2-D array with at least that many columns")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.check_finite = check_finite
        if self.rows is not None and self.rows.size and np.any(np.diff(self.rows) <= 0):
            raise ValueError("rows must be strictly increasing")

    @property
    def n_samples(self) -> int:
        return int(self.array.shape[0] if self.rows is None else self.rows.size)

    @property
    def n_features(self) -> int:
        if self.columns is not None:
            return self.columns
        return int(np.prod(self.array.shape[1:], dtype=np.int64))

    @property
    def chunk_rows(self) -> int | None:
        """Rows per storage chunk of the underlying array (``None`` for NumPy)."""
        chunks = getattr(self.array, "chunks", None)
        if chunks is None:
            return None
        first = chunks[0]
        return int(first[0] if isinstance(first, tuple) else first)

    def _slice(self, lo: int, hi: int):
        if self.columns is None:
            return self.array[lo:hi]
        return self.array[lo:hi, : self.columns]

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self.rows is None:
            block = self._slice(start, stop)
        else:
            idx = self.rows[start:stop]
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            block = self._slice(lo, hi)
            if hi - lo != idx.size:
                block = np.asarray(block)[idx - lo]
        if hasattr(block, "compute"):
            block = block.compute()
        return np.asarray(block)

    def read(self, start: int, stop: int, dtype=np.float64) -> np.ndarray:
        """Rows ``start:stop`` (positions in this source) as a 2-D ``dtype`` array."""
        block = self._read(start, stop).reshape(stop - start, -1)
        out = block.astype(dtype, copy=block.dtype != dtype)
        if self.check_finite and out.dtype.kind == "f" and not np.isfinite(out).all():
            raise ValueError(
                "Input contains NaN or infinity in rows "
                f"{start}..{stop - 1}; clean or drop those rows before fitting."
            )
        return out

    def iter_batches(
        self, batch_size: int, *, start: int = 0, dtype=np.float64, prefetch: bool | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, X_batch)`` from row ``start`` to the end.

        ``prefetch`` (default: for zarr and dask arrays) reads and decodes the next batch
        in a background thread while the caller works on the current one; the batches,
        their order and any error (raised when its batch is reached) are the same.
        """
        n = self.n_samples
        bounds = [(lo, min(lo + batch_size, n)) for lo in range(start, n, batch_size)]
        yield from self.iter_ranges(bounds, dtype=dtype, prefetch=prefetch)

    def iter_ranges(
        self, bounds, *, dtype=np.float64, prefetch: bool | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(lo, rows lo:hi)`` for each ``(lo, hi)`` of ``bounds``, in order (see :meth:`iter_batches`)."""
        bounds = [(int(lo), int(hi)) for lo, hi in bounds]
        if prefetch is None:
            prefetch = is_lazy_array(self.array)
        if not prefetch or len(bounds) < 2:
            for lo, hi in bounds:
                yield lo, self.read(lo, hi, dtype=dtype)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamclust-read") as pool:
            pending = pool.submit(self.read, *bounds[0], dtype)
            try:
                for i, (lo, _) in enumerate(bounds):
                    X = pending.result()
                    if i + 1 < len(bounds):
                        pending = pool.submit(self.read, *bounds[i + 1], dtype)
                    yield lo, X
            finally:  # the caller stopped early: do not decode another batch for nothing
                pending.cancel()


class TransformedRows(RowSource):
    """Rows of ``array`` passed through ``transform`` as they are read.

    For data derived from a stored array batch by batch (e.g. the kernel-PCA scores of a
    feature store), so that the derived data is never held whole.

    Parameters
    ----------
    array : ndarray, zarr.Array or dask.array.Array
        The stored rows.
    transform : callable
        Maps a 2-D float block of rows of ``array`` to a 2-D block of the same rows.
    n_features : int
        Columns of ``transform``'s output.
    """

    def __init__(self, array, transform, n_features: int, rows=None, *, check_finite=True):
        super().__init__(array, rows, check_finite=check_finite)
        self.transform = transform
        self._n_out = int(n_features)

    @property
    def n_features(self) -> int:
        return self._n_out

    def _slice(self, lo: int, hi: int):
        block = super()._slice(lo, hi)
        if hasattr(block, "compute"):
            block = block.compute()
        block = np.asarray(block, dtype=np.float64)
        return self.transform(block.reshape(block.shape[0], -1))


def as_row_source(estimator, X, *, reset: bool, rows=None, dtype=(np.float64, np.float32)) -> RowSource:
    """Validate ``X`` like scikit-learn and wrap it in a :class:`RowSource`.

    NumPy input (and lists, etc.) goes through :func:`sklearn.utils.validation.validate_data`,
    so every common check applies.  Lazy input (zarr, dask) is checked for shape only here;
    finiteness is checked batch by batch as it streams.  ``n_features_in_`` is set when
    ``reset`` is true and checked otherwise.
    """
    if isinstance(X, RowSource):
        source = X
    elif is_lazy_array(X):
        if len(X.shape) < 2:
            raise ValueError(
                f"Expected a 2-D array (or an image stack), got shape {tuple(X.shape)}; "
                "reshape your data with X.reshape(-1, 1) if it has a single feature."
            )
        source = RowSource(X, rows)
    else:
        arr = validate_data(estimator, X, reset=reset, dtype=list(dtype), ensure_min_samples=1)
        if rows is not None:
            arr = arr[np.asarray(rows)]
        return RowSource(arr)
    if source.n_samples < 1:
        raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
    if reset:
        estimator.n_features_in_ = source.n_features
    elif getattr(estimator, "n_features_in_", source.n_features) != source.n_features:
        raise ValueError(
            f"X has {source.n_features} features, but {type(estimator).__name__} "
            f"is expecting {estimator.n_features_in_} features as input."
        )
    return source


def check_sample_weight(sample_weight, n_samples: int) -> np.ndarray | None:
    """Validated per-row weights of a fit over ``n_samples`` rows: ``None`` or 1-D float64.

    ``None`` stays ``None`` (unit weights, the unweighted code paths); a scalar is
    broadcast; an array-like (NumPy, list, zarr or dask: the weights are held in memory,
    8 bytes a row) must have one finite, non-negative weight per row, not all zero.
    The caller's array is never modified (a copy is made when the dtype changes).
    """
    if sample_weight is None:
        return None
    if hasattr(sample_weight, "compute"):  # dask
        sample_weight = sample_weight.compute()
    elif is_lazy_array(sample_weight):  # zarr
        sample_weight = sample_weight[...]
    w = np.array(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(int(n_samples), float(w))
    elif w.ndim != 1:
        raise ValueError(f"Sample weights must be 1D array or scalar, got {w.ndim}D array.")
    elif w.shape != (int(n_samples),):
        raise ValueError(f"sample_weight.shape == {w.shape}, expected {(int(n_samples),)}!")
    if not np.isfinite(w).all():
        raise ValueError("Input sample_weight contains NaN or infinity.")
    if (w < 0).any():
        raise ValueError("Negative values in data passed to sample_weight")
    if not (w > 0).any():
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return w


def weight_slice(sample_weight: np.ndarray | None, offset: int, n: int) -> np.ndarray | None:
    """The weights of the batch of ``n`` rows at ``offset`` (``None`` for unit weights).

    Accumulators that hold the fit's weights call this in ``update(X, offset)``: the
    offset is the batch's position in the row source, in every driver (in-process,
    resumed from a checkpoint, or a dask task over a block of rows).
    """
    if sample_weight is None:
        return None
    return sample_weight[int(offset) : int(offset) + int(n)]


def output_dtype(source: RowSource) -> np.dtype:
    """The float dtype of fitted attributes and outputs for this input, as scikit-learn.

    float32 arrays give float32; everything else (float64, integers, uint8 images,
    transformed rows) gives float64.  The batches are computed in the dtype they
    always were (float64 for the k-means and mixture accumulators); only results are cast.
    """
    if type(source) is RowSource and np.dtype(source.array.dtype) == np.float32:
        return np.dtype(np.float32)
    return np.dtype(np.float64)
