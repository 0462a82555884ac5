"""Pure maths of streaming Gaussian mixtures: log-densities, sufficient statistics, M-step.

Everything here works on in-memory NumPy batches; :mod:`streamclust.models.gmm` drives it
over arrays larger than memory.  The functions mirror the formulas of
:mod:`sklearn.mixture._gaussian_mixture` so that a streamed EM iteration gives the same
iterate as scikit-learn's in-memory one, up to floating-point rounding.

Sufficient statistics
---------------------
For responsibilities ``r[i, k]`` and a fixed per-component *shift* ``c[k]`` (the current
means during EM), :class:`GMMSuffStats` accumulates, in float64,

* ``nk[k]   = sum_i r[i, k]``
* ``sx[k]   = sum_i r[i, k] (x_i - c[k])``
* ``sxx``   = the second moments of ``x_i - c[k]`` weighted by ``r[i, k]``: per component
  ``(k, d, d)`` for ``"full"``, summed over components ``(d, d)`` for ``"tied"``, the
  diagonal only ``(k, d)`` for ``"diag"`` and ``"spherical"``;
* ``log_likelihood = sum_i log p(x_i)``, ``n_rows`` and ``weight_sum``.

With per-row weights ``w_i`` (``sample_weight``) every sum is weighted: ``r[i, k]``
becomes ``w_i r[i, k]``, the log-likelihood ``sum_i w_i log p(x_i)`` and ``weight_sum =
sum_i w_i`` (``n_rows`` without weights); an integer weight is the same as repeating the
row.

Centring on a shift close to the component means keeps the covariance
``sxx / nk - (sx / nk)(sx / nk)^T`` free of catastrophic cancellation.  Partial
statistics with different shifts are combined exactly by re-centring
(:meth:`GMMSuffStats.reshift`), so :meth:`GMMSuffStats.merge` is associative and can be
used in a tree reduction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ..engine import pass_rng, weight_slice
from ..engine.arrays import (bincount, DeviceState, empty, flush_subnormal_, host, is_numpy, like, namespace, one_hot,
                             sum_squares)
from ._parallel import blocks as split_blocks, map_blocks
from ..errors import ConvergenceError
from ._gmm_estep import DIAGONAL, DiagEStep
from .kmeans import nearest_centre

__all__ = [
    "COVARIANCE_TYPES",
    "IllDefinedCovarianceError",
    "gmm_log_prob",
    "gmm_log_resp",
    "precisions_cholesky_from_covariances",
    "precisions_cholesky_from_precisions",
    "precisions_from_cholesky",
    "covariances_from_precisions",
    "n_parameters",
    "GMMSuffStats",
    "GMMStatsAccumulator",
    "HardAssignAccumulator",
    "RandomRespAccumulator",
    "m_step",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

_EPS10 = 10 * np.finfo(np.float64).eps
_DEGENERATE_MSG = ("the mixture degenerated (non-finite means or weights); check the input for "
                   "extreme values, scale the data, or reduce n_components")


class IllDefinedCovarianceError(ConvergenceError, ValueError):
    """A component's covariance is not positive definite (singleton or collapsed points).

    Derives from :class:`~streamclust.errors.ConvergenceError` and from ``ValueError``
    (what scikit-learn raises in the same situation).
    """


#: scikit-learn's message, word for word, then where and what to try
_ILL_DEFINED_MSG = (
    "Fitting the mixture model failed because some components have ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). "
    "Try to decrease the number of components, increase reg_covar, or scale the input data."
    "{where} A reg_covar of about 1e-3 times the data variance (e.g. 1e-4) usually suffices."
)


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of ``covariances_`` / ``precisions_`` for a covariance type."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


# --------------------------------------------------------------------------------------
# precisions


def precisions_cholesky_from_covariances(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors ``U`` of the precisions (``precision = U U^T``), as scikit-learn.

    Raises
    ------
    IllDefinedCovarianceError
        When a covariance is not positive definite.
    """
    if covariance_type in DIAGONAL and not is_numpy(covariances):  # on the device of an M-step
        xp = namespace(covariances)
        if bool(xp.all(covariances > 0.0)):  # False for NaN too; one synchronisation
            return 1.0 / xp.sqrt(covariances)
        covariances = host(covariances)  # the error's details, below
    cov = np.asarray(covariances, dtype=np.float64)
    if not np.all(np.isfinite(cov)):
        raise IllDefinedCovarianceError(_ILL_DEFINED_MSG.format(where=" The covariance is not finite."))
    if covariance_type in ("full", "tied"):
        mats = cov[None] if covariance_type == "tied" else cov
        n_features = mats.shape[-1]
        eye = np.eye(n_features)
        out = np.empty_like(mats)
        bad = []
        for k in range(mats.shape[0]):
            try:
                chol = np.linalg.cholesky(mats[k])
            except np.linalg.LinAlgError:
                bad.append(k)
                continue
            out[k] = np.linalg.solve(chol, eye).T
        if bad:
            where = " The tied covariance is not positive definite." if covariance_type == "tied" else (
                f" Components {bad} are not positive definite.")
            raise IllDefinedCovarianceError(_ILL_DEFINED_MSG.format(where=where))
        return out[0] if covariance_type == "tied" else out
    if np.any(cov <= 0.0):
        bad = np.unique(np.nonzero(cov <= 0.0)[0]).tolist()
        raise IllDefinedCovarianceError(_ILL_DEFINED_MSG.format(where=f" Components {bad} have a zero variance."))
    return 1.0 / np.sqrt(cov)


def _flipudlr(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def precisions_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper-triangular ``U`` with ``precision = U U^T`` (scikit-learn's convention)."""
    p = np.asarray(precisions, dtype=np.float64)
    if covariance_type == "full":
        return np.stack([_flipudlr(np.linalg.cholesky(_flipudlr(pk))) for pk in p])
    if covariance_type == "tied":
        return _flipudlr(np.linalg.cholesky(_flipudlr(p)))
    return np.sqrt(p)


def precisions_from_cholesky(precisions_cholesky: np.ndarray, covariance_type: str) -> np.ndarray:
    """``U U^T`` for full / tied, ``U ** 2`` for diag / spherical."""
    pc = np.asarray(precisions_cholesky, dtype=np.float64)
    if covariance_type == "full":
        return np.matmul(pc, np.swapaxes(pc, 1, 2))
    if covariance_type == "tied":
        return pc @ pc.T
    return pc**2


def covariances_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Inverse of the precisions."""
    p = np.asarray(precisions, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        return np.linalg.inv(p)
    return 1.0 / p


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters of the mixture (for BIC / AIC), as scikit-learn."""
    cov_params = {
        "full": n_components * n_features * (n_features + 1) / 2.0,
        "diag": n_components * n_features,
        "tied": n_features * (n_features + 1) / 2.0,
        "spherical": n_components,
    }[covariance_type]
    return int(cov_params + n_features * n_components + n_components - 1)


# --------------------------------------------------------------------------------------
# densities


def gmm_log_prob(X, means, precisions_cholesky, covariance_type: str):
    """Log-density ``log N(x_i | mu_k, Sigma_k)`` of each row under each component.

    Same formulas as scikit-learn's ``_estimate_log_gaussian_prob``.  One implementation
    for every backend: ``X`` is a NumPy array or a PyTorch tensor (the parameters, NumPy
    arrays, are taken to its device and dtype).

    Parameters
    ----------
    X : ndarray or tensor of shape (n_samples, n_features)
    means : ndarray of shape (n_components, n_features)
    precisions_cholesky : ndarray
        Cholesky factors of the precisions; shape depends on ``covariance_type``.
    covariance_type : {"full", "tied", "diag", "spherical"}

    Returns
    -------
    log_prob : array of shape (n_samples, n_components), in ``X``'s namespace
    """
    if is_numpy(X):
        X = np.asarray(X, dtype=np.float64)
    xp = namespace(X)
    means, pc = like(X, means), like(X, precisions_cholesky)
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    if covariance_type == "full":
        log_det = xp.sum(xp.log(xp.reshape(pc, (n_components, -1))[:, :: n_features + 1]), axis=1)
        maha = empty((n_samples, n_components), X)
        for k in range(n_components):
            y = X @ pc[k] - means[k] @ pc[k]
            maha[:, k] = xp.sum(y * y, axis=1)
    elif covariance_type == "tied":
        log_det = xp.sum(xp.log(xp.linalg.diagonal(pc)))
        maha = empty((n_samples, n_components), X)
        XP = X @ pc
        for k in range(n_components):
            y = XP - means[k] @ pc
            maha[:, k] = xp.sum(y * y, axis=1)
    elif covariance_type == "diag":
        log_det = xp.sum(xp.log(pc), axis=1)
        prec = pc**2
        maha = xp.sum(means**2 * prec, axis=1) - 2.0 * (X @ (means * prec).T) + (X**2 @ prec.T)
    elif covariance_type == "spherical":
        log_det = n_features * xp.log(pc)
        prec = pc**2
        maha = (
            xp.sum(means**2, axis=1) * prec
            - 2 * (X @ means.T * prec)
            + sum_squares(X, axis=1)[:, None] * prec[None, :]
        )
    else:  # pragma: no cover - validated upstream
        raise ValueError(f"unknown covariance_type {covariance_type!r}")
    return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det


def gmm_log_resp(X, weights, means, precisions_cholesky, covariance_type: str):
    """E-step on a batch: ``(log p(x_i), log responsibilities)``, in ``X``'s namespace.

    Returns
    -------
    log_prob_norm : array of shape (n_samples,)
    log_resp : array of shape (n_samples, n_components)
    """
    lp = gmm_log_prob(X, means, precisions_cholesky, covariance_type)
    xp = namespace(lp)
    with np.errstate(divide="ignore"):
        wlp = lp + xp.log(like(lp, weights))
    amax = xp.max(wlp, axis=1, keepdims=True)
    amax = xp.where(xp.isfinite(amax), amax, xp.zeros_like(amax))
    with np.errstate(under="ignore", divide="ignore"):
        log_norm = xp.log(xp.sum(xp.exp(wlp - amax), axis=1)) + amax[:, 0]
        log_resp = wlp - log_norm[:, None]
    return log_norm, log_resp


# --------------------------------------------------------------------------------------
# sufficient statistics


class GMMSuffStats(DeviceState):
    """Responsibility-weighted moments of the data, centred on a per-component shift.

    Parameters
    ----------
    n_components : int
    n_features : int
    covariance_type : {"full", "tied", "diag", "spherical"} or None
        Which second moments to keep; ``None`` keeps only ``nk`` and ``sx`` (k-means).
    shift : ndarray of shape (n_components, n_features), default=None
        Centre of the moments of each component.  ``None`` takes the mean of the first
        batch accumulated (for all components).

    Attributes
    ----------
    nk : ndarray of shape (n_components,)
    sx : ndarray of shape (n_components, n_features)
    sxx : ndarray or None
        ``(k, d, d)`` full, ``(d, d)`` tied, ``(k, d)`` diag / spherical.
    n_rows : int
    weight_sum : float
        Sum of the row weights (``n_rows`` for unit weights); the mean log-likelihood is
        ``log_likelihood / weight_sum``.
    log_likelihood : float
        Sum of ``w_i log p(x_i)`` when the responsibilities came from an E-step, else 0.
    """

    name = "Gaussian mixture statistics"

    def __init__(self, n_components: int, n_features: int, covariance_type: str | None, shift=None):
        self.n_components = int(n_components)
        self.n_features = int(n_features)
        self.covariance_type = covariance_type
        k, d = self.n_components, self.n_features
        self.shift = None if shift is None else np.array(np.broadcast_to(shift, (k, d)), dtype=np.float64)
        self.nk = np.zeros(k)
        self.sx = np.zeros((k, d))
        shape = None if covariance_type is None else {
            "full": (k, d, d),
            "tied": (d, d),
            "diag": (k, d),
            "spherical": (k, d),
        }[covariance_type]
        self.sxx = None if shape is None else np.zeros(shape)
        self.n_rows = 0
        self.weight_sum = 0.0
        self.log_likelihood = 0.0

    # -- accumulation -----------------------------------------------------------------
    # sums that live on the batches' device during a pass (DeviceState)
    _device_state = ("nk", "sx", "sxx", "shift", "log_likelihood")

    def _ensure_shift(self, X) -> None:
        if self.shift is None:
            g = host(namespace(X).mean(X, axis=0), np.float64)
            self.shift = np.repeat(g[None, :], self.n_components, axis=0)

    def _begin(self, X) -> None:
        self._ensure_shift(X)
        self._follow(X)

    def accumulate(self, X, resp, log_prob_norm=None, sample_weight: np.ndarray | None = None) -> None:
        """Add a batch with soft responsibilities ``resp`` of shape (n, n_components)
        (and per-row weights ``sample_weight``).  ``X`` and ``resp`` are NumPy arrays or
        tensors of one device; the sums are float64 whatever their dtype."""
        if X.shape[0] == 0:
            return
        self._begin(X)
        xp = namespace(X)
        if sample_weight is not None:
            resp = resp * like(resp, sample_weight)[:, None]
        ct = self.covariance_type
        nk = xp.sum(resp, axis=0)
        self.nk += nk
        if ct in ("diag", "spherical", None):
            self._add_diag_moments(X, resp.T, nk)
        else:
            for k in range(self.n_components):
                D = X - like(X, self.shift[k])
                rD = resp[:, k : k + 1] * D
                self.sx[k] += xp.sum(rD, axis=0)
                if ct == "full":
                    self.sxx[k] += rD.T @ D
                else:  # tied
                    self.sxx += rD.T @ D
        self._count(X, log_prob_norm, sample_weight)

    def accumulate_hard(self, X, labels, log_prob_norm=None, sample_weight: np.ndarray | None = None) -> None:
        """Add a batch with one-hot responsibilities given as component ``labels``
        (and per-row weights ``sample_weight``)."""
        if X.shape[0] == 0:
            return
        self._begin(X)
        xp = namespace(X)
        ct = self.covariance_type
        w = sample_weight
        k = self.n_components
        if ct in ("diag", "spherical", None):
            counts = bincount(labels, k)
            nk = xp.astype(counts, self.nk.dtype) if w is None else bincount(labels, k, w)
            self.nk += nk
            self._add_diag_moments(X, one_hot(labels, k, w, like_array=X), nk)
        else:
            labels_h = host(labels)
            for j in np.unique(labels_h):
                rows = np.flatnonzero(labels_h == j)
                D = X[like(labels, rows)] - like(X, self.shift[j])
                wD = D if w is None else like(X, w[rows])[:, None] * D
                self.nk[int(j)] += D.shape[0] if w is None else float(w[rows].sum())
                self.sx[int(j)] += xp.sum(wD, axis=0)
                if ct == "full":
                    self.sxx[int(j)] += wD.T @ D
                else:  # tied
                    self.sxx += wD.T @ D
        self._count(X, log_prob_norm, w)

    def _add_diag_moments(self, X, R, nk) -> None:
        """``sx`` and the diagonal ``sxx`` of a batch from matrix products.

        ``R`` is the ``(n_components, n)`` responsibility matrix (dense or sparse) and
        ``nk`` its row sums.  With ``Y = X - g`` centred on the batch mean ``g`` and
        ``a_k = shift_k - g``: ``sum_i r_ik (x_i - shift_k) = R Y - nk a`` and
        ``sum_i r_ik (x_i - shift_k)^2 = R Y^2 - 2 a (R Y) + nk a^2`` (two products
        for all components instead of a pass over the batch per component).
        With NumPy, column slabs of the products are computed by the thread pool (each slab
        its own columns of the output, so the result does not depend on the threads).
        """
        xp = namespace(X)
        g = xp.mean(X, axis=0)
        n, d = X.shape
        k = R.shape[0]
        RY = empty((k, d), X)
        RY2 = None if self.sxx is None else empty((k, d), X)

        def slab(lo: int, hi: int) -> None:
            Y = X[:, lo:hi] - g[lo:hi]
            RY[:, lo:hi] = R @ Y
            if RY2 is not None:
                RY2[:, lo:hi] = R @ (Y * Y)

        map_blocks(slab, split_blocks(d, 4.0 * n * d * k) if is_numpy(X) else [(0, d)])
        a = self.shift - like(self.shift, g)
        self.sx += RY - nk[:, None] * a
        if self.sxx is not None:
            self.sxx += RY2 - 2.0 * a * RY + nk[:, None] * a**2

    def _count(self, X, log_prob_norm, sample_weight=None) -> None:
        self.n_rows += int(X.shape[0])
        self.weight_sum += float(X.shape[0]) if sample_weight is None else float(np.sum(sample_weight))
        if log_prob_norm is not None:  # a device scalar until the pass settles (no synchronisation per batch)
            xp = namespace(log_prob_norm)
            self.log_likelihood = self.log_likelihood + (
                xp.sum(log_prob_norm) if sample_weight is None else log_prob_norm @ like(log_prob_norm, sample_weight))

    # -- algebra ----------------------------------------------------------------------
    def reshift(self, new_shift: np.ndarray) -> None:
        """Re-centre the moments on ``new_shift`` (exact)."""
        new_shift = np.array(np.broadcast_to(new_shift, (self.n_components, self.n_features)), dtype=np.float64)
        if self.shift is None:
            self.shift = new_shift
            return
        self.shift_is_means = False
        delta = self.shift - new_shift  # x - new = (x - old) + delta
        sx_old = self.sx
        ct = self.covariance_type
        if ct == "full":
            outer = delta[:, :, None] * sx_old[:, None, :]
            self.sxx += outer + np.swapaxes(outer, 1, 2) + self.nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
        elif ct == "tied":
            outer = delta.T @ sx_old
            self.sxx += outer + outer.T + (self.nk[:, None] * delta).T @ delta
        elif ct in ("diag", "spherical"):
            self.sxx += 2 * delta * sx_old + self.nk[:, None] * delta**2
        self.sx = sx_old + self.nk[:, None] * delta
        self.shift = new_shift

    def merge(self, other: "GMMSuffStats") -> "GMMSuffStats":
        """Add the statistics of ``other`` (e.g. another chunk of rows) to these."""
        if other.n_rows == 0 or other.shift is None:
            return self
        if self.shift is None:
            self.shift = other.shift.copy()
        if not np.array_equal(other.shift, self.shift):
            other = other.copy()
            other.reshift(self.shift)
        self.nk += other.nk
        self.sx += other.sx
        if self.sxx is not None:
            self.sxx += other.sxx
        self.n_rows += other.n_rows
        self.weight_sum += other.weight_sum
        self.log_likelihood += other.log_likelihood
        return self

    def copy(self) -> "GMMSuffStats":
        new = GMMSuffStats(self.n_components, self.n_features, self.covariance_type, self.shift)
        new.load_state_dict(self.state_dict())
        return new

    def scale(self, factor: float) -> None:
        """Multiply every sum by ``factor`` (``1 / n_rows`` normalises them)."""
        self.nk *= factor
        self.sx *= factor
        if self.sxx is not None:
            self.sxx *= factor
        self.log_likelihood *= factor

    def blend(self, other: "GMMSuffStats", step: float) -> None:
        """``self <- (1 - step) * self + step * other`` (stepwise online EM)."""
        if other.shift is not None and (self.shift is None or not np.array_equal(other.shift, self.shift)):
            other = other.copy()
            other.reshift(self.shift)
        self.nk = (1 - step) * self.nk + step * other.nk
        self.sx = (1 - step) * self.sx + step * other.sx
        if self.sxx is not None:
            self.sxx = (1 - step) * self.sxx + step * other.sxx
        self.log_likelihood = (1 - step) * self.log_likelihood + step * other.log_likelihood
        self.n_rows += other.n_rows
        self.weight_sum += other.weight_sum

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # NumPy copies (a joint step's parts keep their sums on its device after it settles)
        state = {
            "nk": np.array(host(self.nk)),
            "sx": np.array(host(self.sx)),
            "n_rows": np.int64(self.n_rows),
            "weight_sum": np.float64(self.weight_sum),
            "log_likelihood": np.float64(self.log_likelihood),
        }
        if self.sxx is not None:
            state["sxx"] = np.array(host(self.sxx))
        if self.shift is not None:
            state["shift"] = np.array(host(self.shift))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nk = np.array(state["nk"], dtype=np.float64)
        self.sx = np.array(state["sx"], dtype=np.float64)
        if self.sxx is not None:
            self.sxx = np.array(state["sxx"], dtype=np.float64)
        self.shift = np.array(state["shift"], dtype=np.float64) if "shift" in state else None
        self.shift_is_means = False  # a shift loaded is its own array
        self.n_rows = int(state["n_rows"])
        # checkpoints written before the weights existed are unweighted
        self.weight_sum = float(state.get("weight_sum", self.n_rows))
        self.log_likelihood = float(state["log_likelihood"])


class GMMStatsAccumulator(GMMSuffStats):
    """One exact EM pass: E-step on each batch under a fixed model, moments accumulated.

    Parameters
    ----------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    precisions_cholesky : ndarray
    covariance_type : {"full", "tied", "diag", "spherical"}
    shift : ndarray of shape (n_components, n_features), default=None
        Centre of the moments; defaults to ``means``.
    name : str, default="EM pass"

    Notes
    -----
    Implements the accumulator protocol of :mod:`streamclust.engine`:
    ``update(X, offset)``, ``merge(other)``, ``state_dict()``, ``load_state_dict(state)``.
    Feed it every row once, then call :func:`m_step`; ``log_likelihood / weight_sum`` is the
    mean log-likelihood of the model the E-step used (scikit-learn's lower bound).
    """

    def __init__(self, weights, means, precisions_cholesky, covariance_type, *, shift=None, name="EM pass",
                 sample_weight=None):
        on_device = not is_numpy(means)  # a model an M-step left on a device (float64 tensors) stays there
        means = means if on_device else np.asarray(means, dtype=np.float64)
        super().__init__(means.shape[0], means.shape[1], covariance_type,
                         None if on_device else means if shift is None else shift)
        if on_device:
            self.shift = means if shift is None else shift
        self.weights = weights if on_device else np.asarray(weights, dtype=np.float64)
        self.means = means
        self.shift_is_means = shift is None  # the moments are centred on the means (a joint step shares them)
        self.precisions_cholesky = precisions_cholesky if on_device else np.asarray(precisions_cholesky,
                                                                                     dtype=np.float64)
        self.name = name
        self.sample_weight = sample_weight

    def _model(self, X) -> tuple:
        """The pass's model on the batch's device, in its dtype (converted once)."""
        if is_numpy(X):
            return self.weights, self.means, self.precisions_cholesky
        if getattr(self, "_on_device", (None,))[0] != (str(X.device), str(X.dtype)):
            self._take_device_inputs(X, [like(X, a) for a in (self.weights, self.means, self.precisions_cholesky)])
        return self._on_device[1]

    def _device_inputs(self, X) -> list:
        """What the pass needs on the batch's device (none once there, see ``to_device_all``;
        none in a :class:`~._gmm_estep.DiagEStep`, which copies the stacked models; none when
        the model is on a device already: :meth:`_model` converts it there)."""
        if getattr(self, "_in_joint_step", False) or not is_numpy(self.means) or \
                getattr(self, "_on_device", (None,))[0] == (str(X.device), str(X.dtype)):
            return []
        return [self.weights, self.means, self.precisions_cholesky]

    def _take_device_inputs(self, X, tensors) -> None:
        self._on_device = ((str(X.device), str(X.dtype)), tuple(tensors))

    def _joint_step(self):
        """Diagonal and spherical mixtures fed the same rows with the same weights take a batch's
        E-step together (:class:`~._gmm_estep.DiagEStep`; see :func:`~streamclust.engine.arrays.joint_steps`);
        alone, a mixture takes its own on NumPy (:meth:`update`: on two cores faster for one) and
        such a step of its own on a device (its sums and its M-step stay there)."""
        if self.covariance_type in DIAGONAL:
            return ("diagonal E-step", id(self.sample_weight)), DiagEStep
        return None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for cached in ("_on_device", "_in_joint_step", "_m_steps"):  # device copies; the pass's grouping and M-steps
            state.pop(cached, None)
        return state

    def update(self, X, offset: int = 0) -> None:
        """The E-step of this mixture alone (among others a :class:`~._gmm_estep.DiagEStep` takes it)."""
        if is_numpy(X):
            X = np.asarray(X, dtype=np.float64)
        xp = namespace(X)
        n, k = X.shape[0], self.n_components
        model = self._model(X)
        log_norm, resp = empty((n,), X), empty((n, k), X)

        def rows(lo: int, hi: int) -> None:  # the E-step of rows lo:hi (the thread pool's blocks)
            log_norm[lo:hi], log_resp = gmm_log_resp(X[lo:hi], *model, self.covariance_type)
            with np.errstate(under="ignore"):
                resp[lo:hi] = xp.exp(log_resp)
            if is_numpy(resp):
                flush_subnormal_(resp[lo:hi])  # BLAS is slow on them; below the rounding of any sum

        diag = self.covariance_type in DIAGONAL
        map_blocks(rows, split_blocks(n, 4.0 * n * X.shape[1] * k) if diag and is_numpy(X) else [(0, n)])
        self.accumulate(X, resp, log_norm, weight_slice(self.sample_weight, offset, X.shape[0]))


class HardAssignAccumulator(GMMSuffStats):
    """Moments of the rows assigned to their nearest centre (one-hot responsibilities).

    Used for the k-means style initialisations; with ``covariance_type=None`` it is a
    Lloyd step.  ``inertia`` is the sum of squared distances to the nearest centre.
    """

    def __init__(self, centres, covariance_type, *, name="nearest-centre pass", sample_weight=None):
        centres = np.asarray(centres, dtype=np.float64)
        super().__init__(centres.shape[0], centres.shape[1], covariance_type, centres)
        self.centres = centres
        self._c2 = np.einsum("ij,ij->i", centres, centres)
        self.inertia = 0.0
        self.name = name
        self.sample_weight = sample_weight

    _device_state = GMMSuffStats._device_state + ("inertia",)

    def update(self, X, offset: int = 0) -> None:
        if is_numpy(X):
            X = np.asarray(X, dtype=np.float64)
        self._begin(X)
        if is_numpy(X):
            centres = (self.centres, self._c2)
        else:  # copied to the device once a pass
            if self._device_inputs(X):
                self._take_device_inputs(X, [like(X, self.centres), like(X, self._c2)])
            centres = self._dev
        labels, mind = nearest_centre(X, *centres)
        w = weight_slice(self.sample_weight, offset, X.shape[0])
        self.inertia = self.inertia + (namespace(mind).sum(mind) if w is None else mind @ like(mind, w))
        self.accumulate_hard(X, labels, sample_weight=w)

    def _device_inputs(self, X) -> list:
        """The centres and their squared norms on the batch's device, once a pass (see ``to_device_all``)."""
        dev = getattr(self, "_dev", None)
        if dev is not None and dev[0].device == X.device and dev[0].dtype == X.dtype:
            return []
        return [self.centres, self._c2]

    def _take_device_inputs(self, X, tensors) -> None:
        self._dev = tuple(tensors)

    def merge(self, other):
        super().merge(other)
        self.inertia += getattr(other, "inertia", 0.0)
        return self

    def state_dict(self):
        state = super().state_dict()
        state["inertia"] = np.float64(self.inertia)
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.inertia = float(state["inertia"])


class RandomRespAccumulator(GMMSuffStats):
    """Moments under random responsibilities (``init_params="random"``).

    The responsibilities of rows ``lo:lo + 1024`` (``lo`` a multiple of 1024) are uniform
    draws from ``pass_rng(seed, pass_index, stream, lo)``, normalised per row, so a pass is
    deterministic whatever the batch size, and resumable.  The moments are centred on
    the mean of the first batch.
    """

    def __init__(self, n_components, n_features, covariance_type, *, seed, pass_index, stream=0, name="random init pass",
                 sample_weight=None):
        super().__init__(n_components, n_features, covariance_type, None)
        self.seed, self.pass_index, self.stream = int(seed), int(pass_index), int(stream)
        self.name = name
        self.sample_weight = sample_weight

    #: rows per draw: the responsibilities do not depend on the batch size (a GPU reads larger batches)
    BLOCK = 1024

    def update(self, X: np.ndarray, offset: int = 0) -> None:
        n, b = X.shape[0], self.BLOCK
        first = offset - offset % b  # the draws of the block holding row ``offset``, then the next ones
        draws = [pass_rng(self.seed, self.pass_index, self.stream, lo).uniform(size=(b, self.n_components))
                 for lo in range(first, offset + n, b)]
        resp = np.concatenate(draws)[offset - first: offset - first + n]
        resp /= resp.sum(axis=1, keepdims=True)
        self.accumulate(X, like(X, resp), sample_weight=weight_slice(self.sample_weight, offset, X.shape[0]))


# --------------------------------------------------------------------------------------
# M-step


def m_step(stats: GMMSuffStats, reg_covar: float, covariance_type: str | None = None):
    """Parameters maximising the expected log-likelihood given the statistics.

    As scikit-learn, ``10 * eps`` is added to every ``nk`` (an empty component keeps a
    tiny weight, its mean stays at its shift, i.e. where it was, and its covariance
    becomes ``reg_covar * I``) and ``reg_covar`` is added to the diagonal.  Diagonal and
    spherical sums on a device (a joint step leaves them there) give the parameters there,
    as float64 tensors; other sums, NumPy arrays.

    Parameters
    ----------
    stats : GMMSuffStats
    reg_covar : float
    covariance_type : str, default=None
        Defaults to ``stats.covariance_type``.

    Returns
    -------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
    precisions_cholesky : ndarray

    Raises
    ------
    IllDefinedCovarianceError
        When a covariance is not positive definite (e.g. ``reg_covar=0`` and a
        component holding a single point).
    """
    ct = covariance_type or stats.covariance_type
    if stats.shift is None:
        raise ConvergenceError("no data was accumulated; cannot estimate the mixture parameters")
    if not is_numpy(stats.nk):
        together = getattr(stats, "_m_steps", None)  # a joint step's M-steps, taken together
        if together is not None and ct == stats.covariance_type:
            params = together[0].get(together[1], reg_covar, _EPS10)
            if params is not None:
                return params
        if ct in DIAGONAL:  # alone (or to say what is wrong with it)
            return _diagonal_m_step(stats, reg_covar, ct)
        stats = stats.copy()  # the sums as NumPy (state_dict brings them home)
    nk = stats.nk + _EPS10
    delta = stats.sx / nk[:, None]
    means = stats.shift + delta
    if ct == "full":
        cov = stats.sxx / nk[:, None, None] - delta[:, :, None] * delta[:, None, :]
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        idx = np.arange(stats.n_features)
        cov[:, idx, idx] += reg_covar
    elif ct == "tied":
        cov = (stats.sxx - (nk[:, None] * delta).T @ delta) / nk.sum()
        cov = 0.5 * (cov + cov.T)
        cov.flat[:: stats.n_features + 1] += reg_covar
    elif ct in ("diag", "spherical"):
        cov = stats.sxx / nk[:, None] - delta**2 + reg_covar
        if ct == "spherical":
            cov = cov.mean(axis=1)
    else:  # pragma: no cover
        raise ValueError(f"unknown covariance_type {ct!r}")
    weights = nk / nk.sum()
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(weights))):
        raise ConvergenceError(_DEGENERATE_MSG)
    prec_chol = precisions_cholesky_from_covariances(cov, ct)
    return weights, means, cov, prec_chol


def _diagonal_m_step(stats: GMMSuffStats, reg_covar: float, ct: str):
    """:func:`m_step` of diagonal or spherical sums left on a device (a joint step's), there:
    the same elementwise arithmetic, float64 tensors out, two synchronisations (the checks)."""
    xp = namespace(stats.nk)
    nk = stats.nk + _EPS10
    delta = stats.sx / nk[:, None]
    means = stats.shift + delta
    cov = stats.sxx / nk[:, None] - delta**2 + reg_covar
    if ct == "spherical":
        cov = xp.mean(cov, axis=1)
    weights = nk / xp.sum(nk)
    if not bool(xp.all(xp.isfinite(means)) & xp.all(xp.isfinite(weights))):
        raise ConvergenceError(_DEGENERATE_MSG)
    return weights, means, cov, precisions_cholesky_from_covariances(cov, ct)
