"""Streaming kernel PCA: Nyström features on landmarks, then an exact streaming PCA of them.

:class:`StreamingKernelPCA` approximates :class:`sklearn.decomposition.KernelPCA` on data
of any size.  A fit is a plan of passes (see :mod:`streamclust.engine`):

1. *landmarks*: one pass keeps ``m = n_landmarks`` rows drawn uniformly at random (sorted
   row positions from the plan seed); the map of
   :class:`sklearn.kernel_approximation.Nystroem` is built on them (its normalization,
   computed with ``eigh`` as a pseudo-inverse square root), ``phi(x) = N k(x)`` with ``k(x) = K(x, L)`` the
   kernel between ``x`` and the landmarks and ``N = K(L, L)^{-1/2}``, so that
   ``phi(x) . phi(y)`` approximates ``K(x, y)``.
2. *PCA of the features*: ``method="covariance"`` (default) accumulates the scatter
   matrix of the kernel rows ``k(x)`` (``m x m``, shifted sums, mergeable) in **one**
   pass; the scatter of ``phi`` is ``N S N^T`` and its top eigenvectors are the
   components.  ``method="randomized"`` instead feeds ``phi(x)`` batch by batch to
   :class:`~streamclust.models.pca.StreamingPCA`'s randomized plan (``n_power_iter + 1``
   passes, ``O(m l)`` memory instead of ``O(m^2)``), for very many landmarks.
3. *inverse map* (``fit_inverse_transform=True`` only): one pass accumulating the ridge
   regression from the scores back to the input (``Z^T Z`` and ``Z^T X``).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.metrics.pairwise import KERNEL_PARAMS, PAIRWISE_KERNEL_FUNCTIONS, pairwise_kernels
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted

from ..engine.arrays import host
from ..engine import RowSource, StreamingMixin, as_row_source, draw_seed, fit_streaming, pass_rng
from ._sampling import RowSampleAccumulator, sample_row_indices
from .pca import _RandomizedPCAPlan, _flip_rows

__all__ = ["StreamingKernelPCA", "DEFAULT_LANDMARKS"]

#: landmarks used by ``n_landmarks="auto"`` (fewer when the data has fewer rows)
DEFAULT_LANDMARKS = 2000
_SEED_MAX = np.iinfo(np.int32).max
_LANDMARKS, _PCA, _INVERSE, _DONE = 0, 1, 2, 3
#: kernels whose ``gamma=None`` means ``1 / n_features`` (chi2's means 1)
_GAMMA_PER_FEATURE = {"rbf", "laplacian", "poly", "polynomial", "sigmoid"}


def _kernel_params(kernel, gamma, degree, coef0, kernel_params) -> dict:
    """Keyword arguments of :func:`pairwise_kernels` for ``kernel`` (as Nystroem builds them)."""
    params = dict(kernel_params or {})
    if callable(kernel):
        return params
    values = {"gamma": gamma, "degree": degree, "coef0": coef0}
    for name in KERNEL_PARAMS[kernel]:
        if values.get(name) is not None:
            params[name] = values[name]
    return params


class _FeatureMap:
    """``k(x) = K(x, landmarks)`` and ``phi(x) = k(x) N^T`` (picklable, for dask workers)."""

    def __init__(self, landmarks, normalization, kernel, params):
        self.landmarks = landmarks
        self.normalization = normalization
        self.kernel = kernel
        self.params = params

    def kernel_rows(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(pairwise_kernels(X, self.landmarks, metric=self.kernel, filter_params=True,
                                           **self.params), dtype=np.float64)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.kernel_rows(X) @ self.normalization.T


def _nystroem_normalization(K_LL: np.ndarray) -> np.ndarray:
    """``K_LL^{-1/2}``, the normalization of :class:`~sklearn.kernel_approximation.Nystroem`.

    Nystroem takes ``U diag(1 / sqrt(max(S, 1e-12))) V`` from the SVD of the landmark
    kernel matrix.  Here the (symmetric) matrix is diagonalised with ``eigh``, several
    times faster than the SVD for a few thousand landmarks, and eigenvalues below
    ``m * eps * max(w)`` are treated as zero (a pseudo-inverse square root): on a
    rank-deficient kernel matrix (a low-degree polynomial kernel, duplicated rows)
    Nystroem's clipping at ``1e-12`` would multiply round-off by up to ``1e6``.  On a
    well-conditioned kernel matrix both give the same map.
    """
    K_LL = 0.5 * (K_LL + K_LL.T)
    w, Q = linalg.eigh(K_LL)
    top = float(np.max(np.abs(w))) if w.size else 0.0
    keep = w > max(K_LL.shape[0] * np.finfo(np.float64).eps * top, 1e-300)
    Qk = Q[:, keep]
    return (Qk / np.sqrt(w[keep])) @ Qk.T


# ------------------------------------------------------------------- accumulators
class _ScatterAccumulator:
    """Shifted first and second moments of the kernel rows ``k(x)`` (``m x m``, upper triangle).

    ``S1 = sum (k - s)``, ``S2 = sum (k - s)(k - s)^T`` around the first batch's mean ``s``;
    the exact centred scatter is ``S2 - S1 S1^T / n``.  Only the upper triangle of ``S2``
    is accumulated (BLAS ``syrk``); every update keeps it valid.
    """

    name = "kernel PCA scatter"

    def __init__(self, fmap: _FeatureMap, m: int):
        self.fmap = fmap
        self.n = 0
        self.has_shift = False
        self.shift = np.zeros(m)
        self.s1 = np.zeros(m)
        self.s2 = np.zeros((m, m), order="F")

    def update(self, X: np.ndarray, offset: int) -> None:
        X = host(X, np.float64)  # kernel PCA's passes run with NumPy
        K = self.fmap.kernel_rows(X)
        if not self.has_shift:
            self.shift = K.mean(axis=0)
            self.has_shift = True
        K -= self.shift
        self.s1 += K.sum(axis=0)
        # upper triangle of S2 += K^T K; K.T is a Fortran-ordered view: no copy
        self.s2 = linalg.blas.dsyrk(1.0, K.T, beta=1.0, c=self.s2, trans=0, lower=0, overwrite_c=1)
        self.n += X.shape[0]

    def _full(self) -> np.ndarray:
        return np.triu(self.s2) + np.triu(self.s2, 1).T

    def merge(self, other: "_ScatterAccumulator") -> None:
        """Add the sums of an accumulator that saw other batches of the same pass."""
        if other.n == 0:
            return
        if self.n == 0:
            self.load_state_dict(other.state_dict())
            return
        e = other.shift - self.shift  # (k - self.shift) = (k - other.shift) + e
        s2 = other._full() + np.outer(e, other.s1) + np.outer(other.s1, e) + other.n * np.outer(e, e)
        self.s2 = np.asfortranarray(self._full() + s2)
        self.s1 += other.s1 + other.n * e
        self.n += other.n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, scatter)`` of the kernel rows."""
        mean = self.shift + self.s1 / self.n
        return mean, self._full() - np.outer(self.s1, self.s1 / self.n)

    def state_dict(self) -> dict:
        return {"n": np.int64(self.n), "has_shift": np.bool_(self.has_shift), "shift": self.shift,
                "s1": self.s1, "s2": np.triu(self.s2)}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        self.has_shift = bool(state["has_shift"])
        self.shift = np.array(state["shift"], dtype=np.float64, copy=True)
        self.s1 = np.array(state["s1"], dtype=np.float64, copy=True)
        self.s2 = np.array(state["s2"], dtype=np.float64, copy=True, order="F")


class _MappedAccumulator:
    """Wraps an accumulator of :class:`StreamingPCA`'s plan so that it is fed ``phi(X)``."""

    def __init__(self, inner, fmap: _FeatureMap):
        self.inner = inner
        self.fmap = fmap
        self.name = f"kernel {inner.name}"
        self.mergeable = hasattr(inner, "merge") and getattr(inner, "mergeable", True)

    def update(self, X: np.ndarray, offset: int) -> None:
        self.inner.update(self.fmap(host(X, np.float64)), offset)

    def merge(self, other: "_MappedAccumulator") -> None:
        self.inner.merge(other.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class _InverseAccumulator:
    """Sums of the ridge regression ``X ~ Z`` (``Z`` the scores): ``Z^T Z``, ``Z^T X``, ``sum Z``, ``sum X``.

    ``X`` is taken around a shift (the first batch's mean) so that the sums stay well
    conditioned; :meth:`result` corrects to the exact means.
    """

    name = "kernel PCA inverse map"

    def __init__(self, transform, k: int, d: int):
        self.transform = transform
        self.n = 0
        self.has_shift = False
        self.shift = np.zeros(d)
        self.zz = np.zeros((k, k))
        self.zx = np.zeros((k, d))
        self.sz = np.zeros(k)
        self.sx = np.zeros(d)

    def update(self, X: np.ndarray, offset: int) -> None:
        Z = self.transform(host(X, np.float64))
        if not self.has_shift:
            self.shift = X.mean(axis=0, dtype=np.float64)
            self.has_shift = True
        Xc = X - self.shift
        self.zz += Z.T @ Z
        self.zx += Z.T @ Xc
        self.sz += Z.sum(axis=0)
        self.sx += Xc.sum(axis=0)
        self.n += X.shape[0]

    def merge(self, other: "_InverseAccumulator") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.load_state_dict(other.state_dict())
            return
        e = other.shift - self.shift  # (x - self.shift) = (x - other.shift) + e
        self.zz += other.zz
        self.zx += other.zx + np.outer(other.sz, e)
        self.sz += other.sz
        self.sx += other.sx + other.n * e
        self.n += other.n

    def result(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` with ``X ~ Z W + b``: ridge of the centred ``X`` on the centred ``Z``."""
        n = self.n
        zbar, xbar_c = self.sz / n, self.sx / n
        zz = self.zz - n * np.outer(zbar, zbar)
        zx = self.zx - n * np.outer(zbar, xbar_c)
        k = zz.shape[0]
        W = linalg.solve(zz + alpha * np.eye(k), zx, assume_a="pos")
        b = self.shift + xbar_c - zbar @ W
        return W, b

    def state_dict(self) -> dict:
        return {"n": np.int64(self.n), "has_shift": np.bool_(self.has_shift), "shift": self.shift,
                "zz": self.zz, "zx": self.zx, "sz": self.sz, "sx": self.sx}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        self.has_shift = bool(state["has_shift"])
        for key in ("shift", "zz", "zx", "sz", "sx"):
            setattr(self, key, np.array(state[key], dtype=np.float64, copy=True))


# --------------------------------------------------------------------------- plan
class _KernelPCAPlan:
    """Landmark pass, PCA pass(es) of the Nyström features, optional inverse-map pass."""

    def __init__(self, *, n_samples, n_features, n_landmarks, n_components, kernel, gamma, degree, coef0,
                 kernel_params, method, n_oversamples, n_power_iter, fit_inverse, alpha, seed):
        self.n_samples, self.n_features = int(n_samples), int(n_features)
        self.m, self.k = int(n_landmarks), int(n_components)
        self.kernel, self.gamma_param, self.degree, self.coef0 = kernel, gamma, degree, coef0
        self.kernel_params = kernel_params
        self.method = method
        self.n_oversamples, self.n_power_iter = int(n_oversamples), int(n_power_iter)
        self.fit_inverse, self.alpha = bool(fit_inverse), float(alpha)
        self.seed = int(seed)
        # state
        self.phase = _LANDMARKS
        self.landmark_rows = np.zeros(0, dtype=np.int64)
        self.landmarks = np.zeros((0, self.n_features))
        self.normalization = np.zeros((0, 0))
        self.gamma = np.nan
        self.mean = np.zeros(0)
        self.eigvals = np.zeros(0)
        self.components = np.zeros((0, 0))
        self.total_var = np.nan
        self.n = 0
        self.inverse_w = np.zeros((0, 0))
        self.inverse_b = np.zeros(0)
        self.inner: _RandomizedPCAPlan | None = None
        self._fmap: _FeatureMap | None = None

    # -- helpers
    def params(self) -> dict:
        gamma = None if np.isnan(self.gamma) else float(self.gamma)
        return _kernel_params(self.kernel, gamma, self.degree, self.coef0, self.kernel_params)

    def fmap(self) -> _FeatureMap:
        if self._fmap is None:
            self._fmap = _FeatureMap(self.landmarks, self.normalization, self.kernel, self.params())
        return self._fmap

    def _new_inner(self) -> _RandomizedPCAPlan:
        n_sketch = min(self.k + self.n_oversamples, self.m)
        return _RandomizedPCAPlan(self.m, n_sketch, self.n_power_iter, int(pass_rng(self.seed, 1).integers(_SEED_MAX)),
                                  np.float64, np.float64)

    def scores(self, X: np.ndarray) -> np.ndarray:
        return (self.fmap()(X) - self.mean) @ self.components.T

    # -- protocol
    def next_pass(self):
        if self.phase == _LANDMARKS:
            rows = sample_row_indices(self.n_samples, self.m, pass_rng(self.seed, 0))
            return RowSampleAccumulator(rows, self.n_features, name="kernel PCA landmarks")
        if self.phase == _PCA:
            if self.method == "covariance":
                return _ScatterAccumulator(self.fmap(), self.m)
            acc = self.inner.next_pass()
            return None if acc is None else _MappedAccumulator(acc, self.fmap())
        if self.phase == _INVERSE:
            return _InverseAccumulator(self.scores, self.k, self.n_features)
        return None

    def end_pass(self, acc) -> None:
        if self.phase == _LANDMARKS:
            self._set_landmarks(acc.rows, acc.sample)
            self.phase = _PCA
        elif self.phase == _PCA:
            if self.method == "covariance":
                self._eigen_from_scatter(acc)
                self._after_pca()
            else:
                self.inner.end_pass(acc.inner)
                if self.inner.done:
                    p = self.inner
                    self.n, self.mean = p.n, p.mean
                    self.total_var = float(p.scatter.sum())
                    self.eigvals = p.eigvals[: self.k]
                    self.components = _flip_rows(p.eigvecs[:, : self.k].T)
                    self._after_pca()
        elif self.phase == _INVERSE:
            self.inverse_w, self.inverse_b = acc.result(self.alpha)
            self.phase = _DONE

    def _after_pca(self) -> None:
        self.phase = _INVERSE if self.fit_inverse else _DONE

    def _set_landmarks(self, rows, sample) -> None:
        self.landmark_rows = np.asarray(rows, dtype=np.int64)
        gamma = self.gamma_param
        if isinstance(gamma, str):  # "scale": 1 / (n_features * variance), on the landmark sample
            var = float(sample.var())
            gamma = 1.0 / (sample.shape[1] * var) if var > 0 else 1.0
        elif gamma is None and not callable(self.kernel) and self.kernel in _GAMMA_PER_FEATURE:
            gamma = 1.0 / sample.shape[1]  # pairwise_kernels' default for these kernels
        self.gamma = np.nan if gamma is None else float(gamma)
        self.landmarks = np.ascontiguousarray(sample, dtype=np.float64)
        self.normalization = _nystroem_normalization(
            pairwise_kernels(self.landmarks, metric=self.kernel, filter_params=True, **self.params())
        )
        self._fmap = None
        if self.method == "randomized":
            self.inner = self._new_inner()

    def _eigen_from_scatter(self, acc: _ScatterAccumulator) -> None:
        mean_k, scatter_k = acc.result()
        N = self.normalization
        S = N @ scatter_k @ N.T
        S = 0.5 * (S + S.T)
        self.n = acc.n
        self.mean = N @ mean_k
        self.total_var = float(np.trace(S))
        w, V = linalg.eigh(S, subset_by_index=[self.m - self.k, self.m - 1])
        order = np.argsort(w)[::-1]
        self.eigvals = np.maximum(w[order], 0.0)
        self.components = _flip_rows(V[:, order].T)

    _ARRAYS = ("phase", "landmark_rows", "landmarks", "normalization", "gamma", "mean", "eigvals", "components",
               "total_var", "n", "inverse_w", "inverse_b", "seed")

    def state_dict(self) -> dict:
        state = {name: np.asarray(getattr(self, name)) for name in self._ARRAYS}
        if self.inner is not None:
            state.update({f"pca.{k}": v for k, v in self.inner.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in self._ARRAYS:
            value = np.array(state[name], copy=True)
            setattr(self, name, value.item() if value.ndim == 0 else value)
        self._fmap = None
        inner = {k[4:]: v for k, v in state.items() if k.startswith("pca.")}
        if inner:
            self.inner = self._new_inner()
            self.inner.load_state_dict(inner)


# ---------------------------------------------------------------------- estimator
class StreamingKernelPCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, StreamingMixin, BaseEstimator):
    """Kernel PCA of data streamed from NumPy, zarr or dask arrays (Nyström approximation).

    The kernel is approximated on ``n_landmarks`` rows drawn at random (a
    :class:`~sklearn.kernel_approximation.Nystroem` feature map) and the PCA of the
    mapped rows is computed by streaming over the data ``batch_size`` rows at a time;
    nothing of size ``n_samples`` is held.

    Parameters
    ----------
    n_components : int or None, default=None
        Number of components.  ``None`` keeps ``n_landmarks_`` (all); an int must not
        exceed ``n_landmarks_``.
    kernel : {"rbf", "poly", "polynomial", "sigmoid", "cosine", "linear", "laplacian", \
            "chi2", "additive_chi2"} or callable, default="rbf"
        Kernel, as for :func:`sklearn.metrics.pairwise.pairwise_kernels`.  A callable
        kernel cannot be saved with :func:`streamclust.models.io.save_model`.
    gamma : float, "scale" or None, default=None
        Coefficient of the rbf, poly, sigmoid, laplacian and chi2 kernels.  ``None``
        uses ``1 / n_features`` (as :class:`~sklearn.decomposition.KernelPCA`);
        ``"scale"`` uses ``1 / (n_features * X.var())`` with the variance of the
        landmark sample.
    degree : float, default=3
        Degree of the poly kernel.
    coef0 : float, default=1
        Independent term of the poly and sigmoid kernels.
    kernel_params : dict or None, default=None
        Further parameters of a callable kernel.
    n_landmarks : int or "auto", default="auto"
        Rows the kernel is approximated on (the Nyström rank).  ``"auto"`` uses
        ``min(2000, n_samples)``; an int larger than ``n_samples`` is an error.
    method : {"covariance", "randomized"}, default="covariance"
        ``"covariance"``: the exact PCA of the Nyström features from their ``m x m``
        scatter matrix, accumulated in one pass.  ``"randomized"``: the streaming
        randomized PCA of :class:`~streamclust.models.pca.StreamingPCA` on the features
        (``n_power_iter + 1`` passes, memory ``O(m (n_components + n_oversamples))``).
    n_oversamples : int, default=10
        Extra sketch columns of ``method="randomized"``.
    n_power_iter : int, default=3
        Power iterations of ``method="randomized"`` (one pass each).
    fit_inverse_transform : bool, default=False
        Learn a linear ridge map from the scores back to the input space (one more
        pass), used by :meth:`inverse_transform`.
    alpha : float, default=1.0
        Ridge penalty of the inverse map.
    batch_size : int, default=1024
        Rows read per batch.
    random_state : int, RandomState instance or None, default=None
        Seeds the landmark sample and the randomized sketch.  Pass an int for
        reproducible (and resumable with a fresh estimator) fits.

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_landmarks_)
        Principal axes in the Nyström feature space, by decreasing variance.
    eigenvalues_ : ndarray of shape (n_components_,)
        Eigenvalues of the centred (approximate) kernel matrix: ``explained_variance_ *
        (n_samples_ - 1)``, comparable to :class:`~sklearn.decomposition.KernelPCA`'s.
    explained_variance_ : ndarray of shape (n_components_,)
        Variance of the scores of each component (``ddof=1``).
    explained_variance_ratio_ : ndarray of shape (n_components_,)
        Fraction of the total variance of the Nyström features.
    mean_ : ndarray of shape (n_landmarks_,)
        Mean Nyström feature vector.
    landmarks_ : ndarray of shape (n_landmarks_, n_features_in_)
        The landmark rows (Nyström ``components_``).
    landmark_indices_ : ndarray of shape (n_landmarks_,)
        Positions of the landmark rows in the training data (sorted).
    normalization_ : ndarray of shape (n_landmarks_, n_landmarks_)
        ``K(landmarks, landmarks)^{-1/2}`` (Nyström ``normalization_``).
    gamma_ : float
        The kernel coefficient used (``nan`` when the kernel takes none).
    n_landmarks_ : int
        Number of landmarks.
    n_components_ : int
        Number of components.
    n_samples_ : int
        Number of rows fitted.
    inverse_components_ : ndarray of shape (n_components_, n_features_in_)
        With ``fit_inverse_transform``: ``inverse_transform(Z) = Z @ inverse_components_
        + inverse_intercept_``.
    inverse_intercept_ : ndarray of shape (n_features_in_,)
        With ``fit_inverse_transform``: intercept of the inverse map.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when the input had string column names.

    See Also
    --------
    sklearn.decomposition.KernelPCA : Exact, in-memory kernel PCA (``O(n^2)`` memory).
    sklearn.kernel_approximation.Nystroem : The feature map used here.
    streamclust.models.pca.StreamingPCA : Streaming linear PCA.

    Notes
    -----
    *Approximation.*  Exact kernel PCA diagonalises the centred ``n x n`` kernel
    matrix.  Here the kernel is replaced by its Nyström approximation of rank ``m``,
    ``K ~ K_{nL} K_{LL}^{-1} K_{Ln}``, which is exact on the span of the landmarks'
    feature vectors; the PCA of the features ``phi(x) = K_{LL}^{-1/2} k(x)`` is then
    computed exactly (``"covariance"``) or by a randomized subspace iteration
    (``"randomized"``).  With ``m = n_samples`` (e.g. fewer than 2000 rows with
    ``n_landmarks="auto"``) the result equals exact kernel PCA up to the sign of each
    component.  With fewer landmarks the leading components, which carry most of the
    kernel's spectrum, are well approximated: on 10,000 synthetic faces (50 principal
    components, rbf, ``gamma = 1 / (d var X)``) the 2,000 default landmarks give a mean
    canonical correlation of 1.0000 between the top 10 components and those of exact
    :class:`~sklearn.decomposition.KernelPCA` (see ``scripts/bench_methods.py``).
    Trailing components, whose eigenvalues are close to the approximation error, are
    less reliable.  Eigenvalues of ``K(L, L)`` below ``m * eps * max`` are dropped (a
    pseudo-inverse square root; Nystroem clips them at ``1e-12``, which amplifies
    round-off on rank-deficient kernels).  :meth:`inverse_transform` is a *linear*
    ridge map from the scores to the input, not a kernel pre-image.  ``gamma=None``
    means ``1 / n_features`` as in scikit-learn: on unscaled data (pixels, principal
    component scores) that makes the rbf kernel nearly diagonal; ``gamma="scale"``
    adapts it to the data's variance.

    *Memory* (``m`` landmarks, ``d`` features, ``k`` components, ``b = batch_size``):
    the landmarks (``m d``), ``normalization_`` (``m^2``), the ``m x m`` scatter
    (``"covariance"``; ``2 m l`` with ``"randomized"``), a few ``m x m`` temporaries
    while the eigenvectors are computed (32 MB each for ``m = 2000``) and per-batch
    temporaries of ``b m`` values, all float64; nothing grows with ``n_samples``
    (measured peak: 343 MiB for 10,000 rows, against 631 MiB for exact kernel PCA,
    whose ``n x n`` kernel matrix grows quadratically).  Fitting on
    principal-component scores rather than raw pixels keeps ``m d`` small.
    :meth:`transform` costs ``O(d m + m k)`` per row (``normalization_`` is folded into
    the components).

    Examples
    --------
    >>> import numpy as np
    >>> from streamclust.models.kpca import StreamingKernelPCA
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 5))
    >>> kpca = StreamingKernelPCA(3, n_landmarks=100, batch_size=64, random_state=0).fit(X)
    >>> kpca.transform(X[:4]).shape
    (4, 3)
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "kernel": [StrOptions(set(PAIRWISE_KERNEL_FUNCTIONS)), callable],
        "gamma": [Interval(Real, 0, None, closed="neither"), StrOptions({"scale"}), None],
        "degree": [Interval(Real, 0, None, closed="left")],
        "coef0": [Interval(Real, None, None, closed="neither")],
        "kernel_params": [dict, None],
        "n_landmarks": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "method": [StrOptions({"covariance", "randomized"})],
        "n_oversamples": [Interval(Integral, 0, None, closed="left")],
        "n_power_iter": [Interval(Integral, 0, None, closed="left")],
        "fit_inverse_transform": ["boolean"],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_components=None,
        *,
        kernel="rbf",
        gamma=None,
        degree=3,
        coef0=1,
        kernel_params=None,
        n_landmarks="auto",
        method="covariance",
        n_oversamples=10,
        n_power_iter=3,
        fit_inverse_transform=False,
        alpha=1.0,
        batch_size=1024,
        random_state=None,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.kernel_params = kernel_params
        self.n_landmarks = n_landmarks
        self.method = method
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.fit_inverse_transform = fit_inverse_transform
        self.alpha = alpha
        self.batch_size = batch_size
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Fit the model by streaming over ``X``.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Training data; trailing axes are flattened into features.
        y : None
            Ignored.

        Returns
        -------
        self : StreamingKernelPCA
            The fitted estimator.
        """
        return fit_streaming(self, X)

    def _resolve_sizes(self, n_samples: int) -> tuple[int, int]:
        if self.n_landmarks == "auto":
            m = min(DEFAULT_LANDMARKS, n_samples)
        else:
            m = int(self.n_landmarks)
            if m > n_samples:
                raise ValueError(
                    f"n_landmarks={m} is larger than the data (n_samples={n_samples}); "
                    "use at most n_samples landmarks, or n_landmarks='auto'."
                )
        k = m if self.n_components is None else int(self.n_components)
        if k > m:
            raise ValueError(
                f"n_components={k} must be at most the number of landmarks n_landmarks={m} "
                f"(n_samples={n_samples}); lower n_components or use more landmarks."
            )
        return m, k

    def _make_plan(self, source: RowSource):
        self._validate_params()
        if callable(self.kernel) and (self.gamma is not None):
            raise ValueError("gamma must be None with a callable kernel; pass kernel_params instead.")
        n, d = source.n_samples, source.n_features
        m, k = self._resolve_sizes(n)
        self._batch_dtype = np.float64
        return _KernelPCAPlan(
            n_samples=n, n_features=d, n_landmarks=m, n_components=k, kernel=self.kernel, gamma=self.gamma,
            degree=self.degree, coef0=self.coef0, kernel_params=self.kernel_params, method=self.method,
            n_oversamples=self.n_oversamples, n_power_iter=self.n_power_iter,
            fit_inverse=self.fit_inverse_transform, alpha=self.alpha, seed=draw_seed(self.random_state),
        )

    def _finish_plan(self, plan: _KernelPCAPlan, source: RowSource) -> None:
        n = int(plan.n)
        ev = np.asarray(plan.eigvals, dtype=np.float64) / max(n - 1, 1)
        total = plan.total_var / max(n - 1, 1)
        self.components_ = np.ascontiguousarray(plan.components, dtype=np.float64)
        self.explained_variance_ = ev
        self.eigenvalues_ = np.asarray(plan.eigvals, dtype=np.float64).copy()
        self.explained_variance_ratio_ = ev / total if total > 0 else np.zeros_like(ev)
        self.mean_ = np.asarray(plan.mean, dtype=np.float64).copy()
        self.landmarks_ = np.asarray(plan.landmarks, dtype=np.float64)
        self.landmark_indices_ = np.asarray(plan.landmark_rows, dtype=np.int64)
        self.normalization_ = np.asarray(plan.normalization, dtype=np.float64)
        self.gamma_ = float(plan.gamma)
        self.n_landmarks_ = int(plan.m)
        self.n_components_ = int(plan.k)
        self.n_samples_ = n
        if plan.fit_inverse:
            self.inverse_components_ = np.asarray(plan.inverse_w, dtype=np.float64)
            self.inverse_intercept_ = np.asarray(plan.inverse_b, dtype=np.float64)
        else:
            for attr in ("inverse_components_", "inverse_intercept_"):
                if hasattr(self, attr):
                    delattr(self, attr)

    # --------------------------------------------------------------- transforming
    def _kernel_map(self) -> _FeatureMap:
        gamma = None if np.isnan(self.gamma_) else self.gamma_
        params = _kernel_params(self.kernel, gamma, self.degree, self.coef0, self.kernel_params)
        return _FeatureMap(self.landmarks_, self.normalization_, self.kernel, params)

    def _projector(self):
        """``scores(X)`` for batches: ``k(x) @ W - offset`` with ``W = N^T C^T`` folded once per call."""
        fmap = self._kernel_map()
        W = self.normalization_.T @ self.components_.T
        offset = self.mean_ @ self.components_.T

        def scores(X: np.ndarray) -> np.ndarray:
            Z = fmap.kernel_rows(X) @ W
            Z -= offset
            return Z

        return scores

    def transform(self, X):
        """Project ``X`` on the kernel principal components, streaming over lazy input.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Data with ``n_features_in_`` features (trailing axes flattened).

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components_)
            Scores (float64).
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        out = np.empty((source.n_samples, self.n_components_), dtype=np.float64)
        scores = self._projector()
        for lo, batch in source.iter_batches(int(self.batch_size), dtype=np.float64):
            out[lo : lo + batch.shape[0]] = scores(batch)
        return out

    def inverse_transform(self, X):
        """Map scores back to the input space with the learned linear ridge map.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components_)
            Scores, as returned by :meth:`transform`.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features_in_)
            ``X @ inverse_components_ + inverse_intercept_``.
        """
        check_is_fitted(self)
        if not hasattr(self, "inverse_components_"):
            raise AttributeError(
                "inverse_transform needs the inverse map: fit with fit_inverse_transform=True."
            )
        X = check_array(X, input_name="X", dtype=np.float64)
        if X.shape[1] != self.n_components_:
            raise ValueError(f"X has {X.shape[1]} columns, expected n_components_={self.n_components_}.")
        return X @ self.inverse_components_ + self.inverse_intercept_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]
