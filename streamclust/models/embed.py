"""A t-SNE map of every row, at a cost linear in the number of rows.

:class:`StreamingTSNE` fits openTSNE's t-SNE on a uniform random sample of the rows (one
sampling pass) and places every other row into that fixed embedding with openTSNE's
``TSNEEmbedding.transform`` (each new point is optimised against the sampled points
only), batch by batch.  :func:`embed_to_zarr` writes the map of a whole array to a zarr
array chunk by chunk, resumably.

Requires the optional dependency ``openTSNE`` (``pip install "openTSNE>=1.0.4"``).
"""

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..engine import (ProgressFn, RowSource, StreamingMixin, as_row_source, draw_seed, fingerprint, fit_streaming,
                      pass_rng)
from ._sampling import RowSampleAccumulator, sample_row_indices

__all__ = ["StreamingTSNE", "embed_to_zarr"]

_SEED_MAX = np.iinfo(np.int32).max


def _opentsne():
    try:
        import openTSNE
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "StreamingTSNE needs openTSNE: pip install 'openTSNE>=1.0.4'"
        ) from exc
    return openTSNE


class _SamplePlan:
    """One pass keeping the sample; the t-SNE of the sample is computed when it ends."""

    def __init__(self, n_samples: int, n_features: int, sample_size: int, seed: int, fit_sample):
        self.n_samples, self.n_features = int(n_samples), int(n_features)
        self.sample_size, self.seed = int(sample_size), int(seed)
        self.fit_sample = fit_sample
        self.done = False
        self.rows = np.zeros(0, dtype=np.int64)
        self.sample = np.zeros((0, self.n_features))
        self.embedding = np.zeros((0, 0))
        self.kl = np.nan

    def next_pass(self):
        if self.done:
            return None
        rows = sample_row_indices(self.n_samples, self.sample_size, pass_rng(self.seed, 0))
        return RowSampleAccumulator(rows, self.n_features, name="t-SNE sample")

    def end_pass(self, acc: RowSampleAccumulator) -> None:
        self.rows, self.sample = acc.rows.copy(), acc.sample.copy()
        self.embedding, self.kl = self.fit_sample(self.sample, self.seed)
        self.done = True

    def state_dict(self) -> dict:
        return {"done": np.bool_(self.done), "rows": self.rows, "sample": self.sample,
                "embedding": self.embedding, "kl": np.float64(self.kl), "seed": np.int64(self.seed)}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state["done"])
        self.rows = np.array(state["rows"], dtype=np.int64, copy=True)
        self.sample = np.array(state["sample"], dtype=np.float64, copy=True)
        self.embedding = np.array(state["embedding"], dtype=np.float64, copy=True)
        self.kl = float(state["kl"])
        self.seed = int(state["seed"])


class _Placer:
    """Positions of batches of rows: sampled rows keep theirs, the others are placed by openTSNE.

    Built once per :meth:`StreamingTSNE.transform` (or :func:`embed_to_zarr`) call; the
    affinity index of the sample is built on the first batch that needs it.
    """

    def __init__(self, est: "StreamingTSNE"):
        self.est = est
        self.lookup = {row.tobytes(): i for i, row in enumerate(np.ascontiguousarray(est.sample_))}
        self.affinities = None

    def _reference(self):
        est = self.est
        openTSNE = _opentsne()
        if self.affinities is None:
            self.affinities = openTSNE.affinity.MultiscaleMixture(
                est.sample_, est.perplexity_, method=est.neighbors, n_jobs=est.n_jobs,
                random_state=int(est.seed_),
            )
        # a fresh copy per batch: openTSNE's transform re-centres the reference in place
        return openTSNE.TSNEEmbedding(np.array(est.embedding_, dtype=np.float64), self.affinities,
                                      n_jobs=est.n_jobs, random_state=int(est.seed_))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        est = self.est
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.empty((X.shape[0], est.embedding_.shape[1]), dtype=np.float64)
        hit = np.array([self.lookup.get(row.tobytes(), -1) for row in X], dtype=np.int64)
        known = hit >= 0
        out[known] = est.embedding_[hit[known]]
        if not known.all():
            new = X[~known]
            k = int(min(25, est.sample_.shape[0]))
            placed = self._reference().transform(
                new, perplexity=min(float(est.transform_perplexity), max((est.sample_.shape[0] - 1) / 3.0, 1.0)),
                k=k, n_iter=int(est.transform_n_iter),
            )
            out[~known] = np.asarray(placed, dtype=np.float64)
        return out


class StreamingTSNE(ClassNamePrefixFeaturesOutMixin, TransformerMixin, StreamingMixin, BaseEstimator):
    """t-SNE of a sample of the rows, extended to every row by streaming ``transform``.

    Parameters
    ----------
    n_components : int, default=2
        Dimension of the map.
    sample_size : int, default=5000
        Rows the t-SNE is fitted on (all rows when there are fewer), drawn uniformly at
        random in one pass.
    perplexity : float, default=30
        Perplexity of the fit (lowered to ``(sample_size - 1) / 3`` on small samples).
    n_iter : int, default=500
        Optimisation iterations of the fit after early exaggeration.
    early_exaggeration_iter : int, default=250
        Early-exaggeration iterations of the fit.
    learning_rate : float or "auto", default="auto"
        Learning rate of the fit (openTSNE's ``"auto"``: ``sample_size / 12``).
    initialization : {"pca", "spectral", "random"}, default="pca"
        Initial positions of the sample.
    neighbors : {"auto", "exact", "annoy", "pynndescent", "hnsw"}, default="auto"
        Nearest-neighbour search of openTSNE, for the fit and for placing new rows.
    transform_perplexity : float, default=5
        Perplexity used to place a new row among the sample (openTSNE's default).
    transform_n_iter : int, default=100
        Optimisation iterations per batch of new rows.
    batch_size : int, default=1024
        Rows read (and placed) per batch.
    n_jobs : int, default=1
        Threads used by openTSNE.
    random_state : int, RandomState instance or None, default=None
        Seeds the sample, the initialization and the neighbour search.

    Attributes
    ----------
    embedding_ : ndarray of shape (n_sample_, n_components)
        Positions of the sampled rows (centred: the midpoint of the bounding box is 0).
    sample_ : ndarray of shape (n_sample_, n_features_in_)
        The sampled rows (float64); new rows are placed among them.
    sample_indices_ : ndarray of shape (n_sample_,)
        Positions of the sampled rows in the training data (sorted).
    perplexity_ : float
        The perplexity used by the fit.
    kl_divergence_ : float
        KL divergence of the fitted sample embedding.
    seed_ : int
        Seed of the fit, reused to rebuild the neighbour index of the sample.
    n_samples_ : int
        Number of training rows.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when the input had string column names.

    See Also
    --------
    sklearn.manifold.TSNE : In-memory t-SNE of every row (no ``transform``).
    embed_to_zarr : Write the map of a whole (zarr, dask) array chunk by chunk.

    Notes
    -----
    *Cost.*  The fit costs a t-SNE of ``sample_size`` rows (independent of
    ``n_samples``); placing a row costs a neighbour query among the sample and
    ``transform_n_iter`` gradient steps against the fixed sample embedding, so the map
    of all rows costs ``O(n_samples)``.  A new row is placed independently of the other
    new rows (openTSNE ignores their mutual attraction), so the map of rows outside the
    sample is a projection onto the sample's map, not a joint t-SNE of all rows.

    A row equal (bit for bit, as float64) to a sampled row gets that row's fitted
    position, so ``fit_transform(X)`` and ``transform(X)`` of the training data agree and
    the sampled rows keep their positions.

    *Memory*: the sample (``sample_size x n_features`` float64, e.g. 10 MB for 5,000
    rows of 256 principal components: fit on reduced features, not pixels), openTSNE's
    neighbour index of the sample, and a batch of rows.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, 3, closed="both")],
        "sample_size": [Interval(Integral, 2, None, closed="left")],
        "perplexity": [Interval(Real, 0, None, closed="neither")],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        "early_exaggeration_iter": [Interval(Integral, 0, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "initialization": [StrOptions({"pca", "spectral", "random"})],
        "neighbors": [StrOptions({"auto", "exact", "annoy", "pynndescent", "hnsw"})],
        "transform_perplexity": [Interval(Real, 0, None, closed="neither")],
        "transform_n_iter": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Integral],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_components=2,
        *,
        sample_size=5000,
        perplexity=30,
        n_iter=500,
        early_exaggeration_iter=250,
        learning_rate="auto",
        initialization="pca",
        neighbors="auto",
        transform_perplexity=5,
        transform_n_iter=100,
        batch_size=1024,
        n_jobs=1,
        random_state=None,
    ):
        self.n_components = n_components
        self.sample_size = sample_size
        self.perplexity = perplexity
        self.n_iter = n_iter
        self.early_exaggeration_iter = early_exaggeration_iter
        self.learning_rate = learning_rate
        self.initialization = initialization
        self.neighbors = neighbors
        self.transform_perplexity = transform_perplexity
        self.transform_n_iter = transform_n_iter
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Fit the t-SNE of a random sample of ``X`` (one pass over ``X``).

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Training data; trailing axes are flattened into features.
        y : None
            Ignored.

        Returns
        -------
        self : StreamingTSNE
            The fitted estimator.
        """
        return fit_streaming(self, X)

    def fit_transform(self, X, y=None):
        """Fit on a sample of ``X`` and return the map of every row of ``X``.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            Positions; the sampled rows keep their fitted positions.
        """
        return self.fit(X).transform(X)

    def _perplexity_for(self, m: int) -> float:
        return float(min(float(self.perplexity), max((m - 1) / 3.0, 1.0)))

    def _fit_sample(self, sample: np.ndarray, seed: int):
        openTSNE = _opentsne()
        m = sample.shape[0]
        perplexity = self._perplexity_for(m)
        affinities = openTSNE.affinity.MultiscaleMixture(sample, perplexity, method=self.neighbors,
                                                         n_jobs=self.n_jobs, random_state=seed)
        tsne = openTSNE.TSNE(
            n_components=self.n_components, perplexity=perplexity, n_iter=self.n_iter,
            early_exaggeration_iter=self.early_exaggeration_iter, learning_rate=self.learning_rate,
            initialization=self.initialization, neighbors=self.neighbors, n_jobs=self.n_jobs, random_state=seed,
        )
        init = self.initialization if m > self.n_components + 1 else "random"
        emb = tsne.fit(sample, affinities=affinities, initialization=init)
        Y = np.array(emb, dtype=np.float64)
        Y -= (Y.max(axis=0) + Y.min(axis=0)) / 2  # the centring openTSNE's transform would apply
        return Y, float(getattr(emb, "kl_divergence", np.nan))

    def _make_plan(self, source: RowSource):
        self._validate_params()
        n, d = source.n_samples, source.n_features
        if n < 3:
            raise ValueError(f"StreamingTSNE needs at least 3 samples, got n_samples={n}.")
        self._batch_dtype = np.float64
        return _SamplePlan(n, d, min(int(self.sample_size), n), draw_seed(self.random_state), self._fit_sample)

    def _finish_plan(self, plan: _SamplePlan, source: RowSource) -> None:
        self.embedding_ = np.asarray(plan.embedding, dtype=np.float64)
        self.sample_ = np.asarray(plan.sample, dtype=np.float64)
        self.sample_indices_ = np.asarray(plan.rows, dtype=np.int64)
        self.perplexity_ = self._perplexity_for(plan.sample.shape[0])
        self.kl_divergence_ = float(plan.kl)
        self.seed_ = int(plan.seed)
        self.n_samples_ = int(source.n_samples)

    # --------------------------------------------------------------- transforming
    def _iter_positions(self, source: RowSource, start: int = 0, batch_size: int | None = None):
        placer = _Placer(self)
        bs = int(batch_size or self.batch_size)
        for lo, batch in source.iter_batches(bs, start=start, dtype=np.float64):
            yield lo, placer(batch)

    def transform(self, X):
        """Place every row of ``X`` into the fitted map, streaming over lazy input.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Rows with ``n_features_in_`` features.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            Positions (rows equal to a sampled row get its fitted position).
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        out = np.empty((source.n_samples, self.embedding_.shape[1]), dtype=np.float64)
        for lo, Y in self._iter_positions(source):
            out[lo : lo + Y.shape[0]] = Y
        return out

    @property
    def _n_features_out(self):
        return self.embedding_.shape[1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags


def embed_to_zarr(estimator: StreamingTSNE, X, out_path: str | os.PathLike, *, batch_size: int | None = None,
                  rows=None, chunk_rows: int | None = None, progress: ProgressFn | None = None):
    """Write the map of every row of ``X`` as a float32 zarr array ``(n, n_components)``; resumable.

    The rows are read, placed (:meth:`StreamingTSNE.transform`) and written one batch at
    a time, so memory does not grow with ``n``.  After each batch the number of rows
    written is saved in the array's attributes (``rows_done``); calling again with the
    same estimator and data continues where an interrupted call stopped (batches are
    placed independently, so the result is the same as an unbroken call).

    Parameters
    ----------
    estimator : StreamingTSNE
        A fitted estimator.
    X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
        Rows to place (e.g. the features the estimator was fitted on).
    out_path : path
        The zarr array to write (created or resumed).
    batch_size : int, default=None
        Rows placed per batch; ``None`` uses ``estimator.batch_size``.
    rows : array-like of int, default=None
        Sorted subset of the rows of ``X`` to place, in that order.
    chunk_rows : int, default=None
        Rows per chunk of the output; ``None`` uses the batch size.
    progress : callable, default=None
        ``progress("t-SNE map", rows_done, n_rows)`` after each batch.

    Returns
    -------
    zarr.Array
        The written array (``attrs["complete"]`` is true).
    """
    import zarr

    check_is_fitted(estimator)
    source = as_row_source(estimator, X, reset=False, rows=rows)
    n, k = source.n_samples, estimator.embedding_.shape[1]
    bs = int(batch_size or estimator.batch_size)
    key = fingerprint([n, k, bs, estimator.seed_, float(np.sum(estimator.embedding_))])
    path = Path(out_path)
    arr = None
    if path.exists():
        try:
            arr = zarr.open_array(str(path), mode="r+")
        except Exception:  # noqa: BLE001 - not a zarr array: start again
            arr = None
        if arr is not None and (arr.shape != (n, k) or arr.attrs.get("key") != key):
            arr = None
    if arr is None:
        from ..integrity import checksum_codecs

        arr = zarr.create_array(store=str(path), shape=(n, k), chunks=(int(chunk_rows or bs), k), dtype="float32",
                                fill_value=np.nan, overwrite=True, dimension_names=("image", "axis"),
                                compressors=checksum_codecs(zarr.codecs.ZstdCodec(level=0)))
        arr.attrs.update({"key": key, "rows_done": 0, "complete": False})
    start = int(arr.attrs.get("rows_done", 0))
    if start % bs:  # restart at a batch boundary so the batches are the same as an unbroken call
        start -= start % bs
    for lo, Y in estimator._iter_positions(source, start=start, batch_size=bs):
        hi = lo + Y.shape[0]
        arr[lo:hi] = Y.astype(np.float32)
        arr.attrs["rows_done"] = hi
        if progress is not None:
            progress("t-SNE map", hi, n)
    arr.attrs["complete"] = True
    return arr
