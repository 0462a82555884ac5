"""Gaussian mixtures fitted by exact EM, streaming over arrays larger than memory.

:class:`StreamingGaussianMixture` is a drop-in for :class:`sklearn.mixture.GaussianMixture`
whose ``fit`` reads the data ``batch_size`` rows at a time: every EM iteration is one pass
accumulating the sufficient statistics of the E-step (see
:mod:`streamclust.models._gmm_stats`), followed by the M-step.  Given the same initial
parameters it produces scikit-learn's iterates up to floating-point rounding.

The fit is a resumable :class:`~streamclust.engine.Plan` (:class:`GMMPlan`), so
:func:`~streamclust.engine.fit_streaming` can checkpoint it mid-pass.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ..engine.arrays import SharedPassParts, host, is_numpy
from ..engine.backend import Backend, document_parameters, NUMPY, PARAMETER_CONSTRAINTS as BACKEND_CONSTRAINTS
from ..engine import RowSource, StreamingMixin, as_row_source, draw_seed, fit_streaming, output_dtype, pass_rng
from ._gmm_stats import (
    GMMStatsAccumulator,
    GMMSuffStats,
    HardAssignAccumulator,
    IllDefinedCovarianceError,
    RandomRespAccumulator,
    covariance_shape,
    covariances_from_precisions,
    gmm_log_prob,
    gmm_log_resp,
    m_step,
    n_parameters,
    precisions_cholesky_from_precisions,
    precisions_from_cholesky,
)
from ._sampling import RowSampleAccumulator
from ._seeding import kmeans_plusplus
from .kmeans import lloyd_in_memory, nearest_centre, seeding_sample

__all__ = [
    "StreamingGaussianMixture",
    "GMMPlan",
    "GMMStatsAccumulator",
    "GMMSuffStats",
    "IllDefinedCovarianceError",
    "HardAssignAccumulator",
    "RandomRespAccumulator",
    "init_sample_size",
    "gmm_log_prob",
    "gmm_log_resp",
    "m_step",
]

#: rows sampled (per initialisation) for the k-means++ seeding of "kmeans" / "k-means++"
_SAMPLE_MIN = 2048
_SAMPLE_PER_COMPONENT = 16
#: at most this many streamed Lloyd passes for init_params="kmeans"
_KMEANS_MAX_PASSES = 5
#: Lloyd iterations on the in-memory sample before streaming
_KMEANS_SAMPLE_ITER = 30
#: relative tolerance of the k-means initialisation (as sklearn.cluster.KMeans' tol)
_KMEANS_TOL = 1e-4
#: final lower bounds of two initialisations this close (relative) are a tie: the first is kept
TIE_RTOL = 1e-10

_PHASE_SAMPLE, _PHASE_HARD, _PHASE_RANDOM, _PHASE_EM, _PHASE_DONE = range(5)


def init_sample_size(n_samples: int, n_components: int) -> int:
    """Rows sampled for the k-means++ seeding: ``min(n, max(2048, 16 * n_components))``."""
    return int(min(n_samples, max(_SAMPLE_MIN, _SAMPLE_PER_COMPONENT * n_components)))


# --------------------------------------------------------------------------------------
# helper accumulators


class _MultiAccumulator(SharedPassParts):
    """Several accumulators fed the same batches (the ``n_init`` models share passes)."""

    def __init__(self, parts: list, name: str):
        self.parts = parts
        self.name = name

    def update(self, X: np.ndarray, offset: int) -> None:
        self._feed(X, offset)

    def merge(self, other: "_MultiAccumulator") -> "_MultiAccumulator":
        for a, b in zip(self.parts, other.parts):
            a.merge(b)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {f"{i}/{k}": v for i, part in enumerate(self.parts) for k, v in part.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, part in enumerate(self.parts):
            prefix = f"{i}/"
            part.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def _relocate_empty(centres: np.ndarray, empty: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Move each empty centre to the sampled row worst explained by the other centres."""
    if not np.any(empty) or sample.shape[0] == 0:
        return centres
    centres = centres.copy()
    _, dist = nearest_centre(sample, centres[~empty]) if np.any(~empty) else (None, np.ones(sample.shape[0]))
    order = np.argsort(-dist, kind="stable")
    for j, k in enumerate(np.flatnonzero(empty)):
        centres[k] = sample[order[j % order.size]]
    return centres


# --------------------------------------------------------------------------------------
# the plan


def _host_stack(value) -> np.ndarray:
    """A plan's array as NumPy: the starts' models stacked when they are a list (kept where
    their M-step ran, a device's tensors perhaps)."""
    if isinstance(value, list):
        return np.stack([np.asarray(host(v), dtype=np.float64) for v in value])
    return np.array(value)


class GMMPlan:
    """Resumable plan of a streamed Gaussian-mixture fit (all ``n_init`` runs in lockstep).

    Phases (``state["phase"]``):

    0. *sample* - one pass collecting random rows (``init_params`` "kmeans", "k-means++",
       "random_from_data"); k-means++ seeds (and, for "kmeans", in-memory Lloyd
       iterations) are computed on the sample at the end of the pass.
    1. *hard* - passes assigning every row to its nearest centre and accumulating the
       moments of each cell: for "kmeans" up to ``_KMEANS_MAX_PASSES`` streamed Lloyd
       passes (stopping when the centres move less than the tolerance); the last
       pass's moments give the initial weights, means and covariances, as
       scikit-learn's ``_initialize`` does from one-hot responsibilities.
    2. *random* - one pass of random responsibilities (``init_params="random"``).
    3. *em* - one pass per EM iteration: E-step + sufficient statistics, M-step at the
       end of the pass, convergence test ``abs(lower_bound - previous) < tol``.
    4. *done*.

    The state (``state_dict``) holds ``seed``, ``phase``, ``pass_index``, ``hard_iter``,
    ``n_hard``, the sample (``sample``, ``sample_rows``) and ``centres`` during the
    initialisation, and per initialisation (leading axis ``n_init``) ``weights``,
    ``means``, ``covariances``, ``precisions_cholesky``, ``lower_bound``, ``n_iter``,
    ``converged``, ``active`` and ``lower_bounds`` (``(n_init, max_iter)``, NaN-padded).

    ``sample_weight`` (one weight per row, or ``None``) is input like the data, not state:
    every accumulator takes its batch's slice by offset and weights its statistics; the
    seeding sample is drawn and seeded with the weights.
    """

    def __init__(
        self,
        *,
        n_samples: int,
        n_features: int,
        n_components: int,
        covariance_type: str,
        tol: float,
        reg_covar: float,
        max_iter: int,
        n_init: int,
        init_params: str,
        seed: int,
        weights_init=None,
        means_init=None,
        precisions_init=None,
        warm: tuple | None = None,
        verbose: int = 0,
        verbose_interval: int = 10,
        sample_weight: np.ndarray | None = None,
        backend: Backend = NUMPY,
    ):
        self.backend = backend  # where the k-means initialisation's in-memory Lloyd runs (not state)
        self.n_samples, self.n_features, self.n_components = int(n_samples), int(n_features), int(n_components)
        self.sample_weight = sample_weight
        self.covariance_type = covariance_type
        self.tol, self.reg_covar, self.max_iter = float(tol), float(reg_covar), int(max_iter)
        self.init_params = init_params
        self.weights_init, self.means_init, self.precisions_init = weights_init, means_init, precisions_init
        self.verbose, self.verbose_interval = int(verbose), int(verbose_interval)
        self.seed = int(seed)
        all_given = weights_init is not None and means_init is not None and precisions_init is not None
        self.n_init = 1 if (warm is not None or all_given) else int(n_init)

        self.pass_index = 0
        self.hard_iter = 0
        self.sample: np.ndarray | None = None
        self.sample_rows: np.ndarray | None = None
        self.centres: np.ndarray | None = None
        self.weights = self.means = self.covariances = self.precisions_cholesky = None
        self.lower_bound = np.full(self.n_init, -np.inf)
        self.n_iter = np.zeros(self.n_init, dtype=np.int64)
        self.converged = np.zeros(self.n_init, dtype=bool)
        self.active = np.ones(self.n_init, dtype=bool)
        self.lower_bounds = np.full((self.n_init, self.max_iter), np.nan)

        if warm is not None:
            weights, means, covariances, prec_chol, lower_bound = warm
            self._set_params([(weights, means, covariances, prec_chol)])
            self.lower_bound[:] = lower_bound
            self._start_em()
        elif all_given:
            self._set_params([self._apply_user_init(None)])
            self._start_em()
        elif means_init is not None:
            # the given means are the centres of the nearest-centre initialisation pass
            self.centres = np.repeat(np.asarray(means_init, dtype=np.float64)[None], self.n_init, axis=0)
            self.phase = _PHASE_HARD
            self._n_hard = 1
        elif init_params == "random":
            self.phase = _PHASE_RANDOM
        else:
            self.phase = _PHASE_SAMPLE
        if not hasattr(self, "_n_hard"):
            self._n_hard = _KMEANS_MAX_PASSES if init_params == "kmeans" else 1

    # -- helpers ----------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.verbose:
            print(msg)

    def _start_em(self) -> None:
        self.sample = self.sample_rows = self.centres = self._tols = None
        if self.max_iter == 0:
            self.phase = _PHASE_DONE
        else:
            self.phase = _PHASE_EM
            for i in range(self.n_init):
                self._log(f"Initialization {i}")

    def _set_params(self, params: list[tuple]) -> None:
        self.weights = np.stack([np.asarray(p[0], dtype=np.float64) for p in params])
        self.means = np.stack([np.asarray(p[1], dtype=np.float64) for p in params])
        self.covariances = np.stack([np.asarray(p[2], dtype=np.float64) for p in params])
        self.precisions_cholesky = np.stack([np.asarray(p[3], dtype=np.float64) for p in params])

    def _apply_user_init(self, params: tuple | None) -> tuple:
        """Overwrite computed initial parameters by the user's, as scikit-learn does."""
        weights, means, covariances, prec_chol = params if params is not None else (None,) * 4
        if self.weights_init is not None:
            weights = np.asarray(self.weights_init, dtype=np.float64)
        if self.means_init is not None:
            means = np.asarray(self.means_init, dtype=np.float64)
        if self.precisions_init is not None:
            precisions = np.asarray(self.precisions_init, dtype=np.float64)
            prec_chol = precisions_cholesky_from_precisions(precisions, self.covariance_type)
            covariances = covariances_from_precisions(precisions, self.covariance_type)
        return weights, means, covariances, prec_chol

    def _sample_indices(self) -> list[np.ndarray]:
        """Per initialisation, the sampled row positions (in component order for random_from_data)."""
        out = []
        for i in range(self.n_init):
            rng = pass_rng(self.seed, 0, 1, i)
            if self.init_params == "random_from_data":
                w = self.sample_weight
                p = None if w is None else w / w.sum()
                out.append(rng.choice(self.n_samples, size=self.n_components, replace=False, p=p))
            else:
                m = init_sample_size(self.n_samples, self.n_components)
                out.append(np.sort(rng.choice(self.n_samples, size=m, replace=False)))
        return out

    def _samples(self) -> list[np.ndarray]:
        return [self.sample[np.searchsorted(self.sample_rows, idx)] for idx in self._sample_indices()]

    def _sample_weights(self) -> list[np.ndarray | None]:
        if self.sample_weight is None:
            return [None] * self.n_init
        return [self.sample_weight[idx] for idx in self._sample_indices()]

    # -- protocol ---------------------------------------------------------------------
    def next_pass(self):
        k, d, ct = self.n_components, self.n_features, self.covariance_type
        if self.phase == _PHASE_SAMPLE:
            rows = np.unique(np.concatenate(self._sample_indices()))
            return RowSampleAccumulator(rows, d)
        if self.phase == _PHASE_HARD:
            parts = [HardAssignAccumulator(self.centres[i], ct, sample_weight=self.sample_weight)
                     for i in range(self.n_init)]
            label = "k-means init pass" if self._n_hard > 1 else "nearest-centre init pass"
            return _MultiAccumulator(parts, f"{label} {self.hard_iter + 1}")
        if self.phase == _PHASE_RANDOM:
            parts = [
                RandomRespAccumulator(k, d, ct, seed=self.seed, pass_index=self.pass_index, stream=i,
                                      sample_weight=self.sample_weight)
                for i in range(self.n_init)
            ]
            return _MultiAccumulator(parts, "random init pass")
        if self.phase == _PHASE_EM:
            active = np.flatnonzero(self.active)
            parts = [
                GMMStatsAccumulator(self.weights[i], self.means[i], self.precisions_cholesky[i], ct,
                                    sample_weight=self.sample_weight)
                for i in active
            ]
            name = f"EM iteration {int(self.n_iter[active].max()) + 1}"
            best = float(np.max(self.lower_bound[active]))
            if np.isfinite(best):  # the progress bar shows the last average log-likelihood
                name += f" (log-lik {best:.6g})"
            return _MultiAccumulator(parts, name)
        return None

    def end_pass(self, acc) -> None:
        if self.phase == _PHASE_SAMPLE:
            self._end_sample(acc)
        elif self.phase == _PHASE_HARD:
            self._end_hard(acc)
        elif self.phase == _PHASE_RANDOM:
            self._init_from_stats(acc.parts)
        elif self.phase == _PHASE_EM:
            self._end_em(acc)
        self.pass_index += 1

    def _end_sample(self, acc: RowSampleAccumulator) -> None:
        self.sample, self.sample_rows, self._tols = acc.sample, acc.rows, None
        samples = self._samples()
        centres = []
        for i, (sample, w) in enumerate(zip(samples, self._sample_weights())):
            if self.init_params == "random_from_data":
                centres.append(sample)
                continue
            rs = int(pass_rng(self.seed, self.pass_index, 2, i).integers(np.iinfo(np.int32).max))
            extra = {} if w is None else {"sample_weight": w}
            where = seeding_sample(sample, self.backend)  # on a GPU, copied there once for both steps
            seeds, _ = kmeans_plusplus(where, self.n_components, random_state=rs, **extra)
            if self.init_params == "kmeans":
                seeds = lloyd_in_memory(where, seeds, _KMEANS_SAMPLE_ITER, _KMEANS_TOL, sample_weight=w,
                                        backend=self.backend)[0]
            centres.append(seeds)
        self.centres = np.stack(centres)
        if self.init_params != "kmeans":
            self.sample = self.sample_rows = self._tols = None  # only Lloyd passes still need it
        self.phase = _PHASE_HARD

    def _kmeans_tols(self) -> list[float]:
        """Per initialisation, the k-means tolerance of its sample (computed once a sample: not
        state, forgotten with the sample)."""
        if getattr(self, "_tols", None) is None:
            self._tols = [_KMEANS_TOL * float(np.mean(np.var(s, axis=0))) if s.size else 0.0 for s in self._samples()]
        return self._tols

    def _end_hard(self, acc: _MultiAccumulator) -> None:
        """Lloyd update of the centres; initialise from the cells once they are stable."""
        self.hard_iter += 1
        done = self.hard_iter >= self._n_hard
        if not done:
            tols, samples = self._kmeans_tols(), None
            all_stable = True
            for i, part in enumerate(acc.parts):
                empty = part.nk == 0
                nk = np.where(empty, 1.0, part.nk)
                new = np.where(empty[:, None], self.centres[i], part.shift + part.sx / nk[:, None])
                if np.any(empty):
                    samples = self._samples() if samples is None else samples
                    new = _relocate_empty(new, empty, samples[i])
                moved = float(np.sum((new - self.centres[i]) ** 2))
                all_stable &= moved <= tols[i] and not np.any(empty)
                self.centres[i] = new
            done = all_stable
        if done:
            # the cells of this pass's centres give the initial parameters
            self._init_from_stats(acc.parts)

    def _init_from_stats(self, parts: list[GMMSuffStats]) -> None:
        params = []
        for part in parts:
            weights, means, cov, prec_chol = m_step(part, self.reg_covar, self.covariance_type)
            params.append(self._apply_user_init((weights, means, cov, prec_chol)))
        self._set_params(params)
        self._start_em()

    def _end_em(self, acc: _MultiAccumulator) -> None:
        for part, i in zip(acc.parts, np.flatnonzero(self.active)):
            lower_bound = part.log_likelihood / part.weight_sum
            weights, means, cov, prec_chol = m_step(part, self.reg_covar, self.covariance_type)
            if not is_numpy(means) and not isinstance(self.means, list):
                # an M-step on a device: the models stay there, each start's its own (no copy)
                self.weights, self.means, self.covariances, self.precisions_cholesky = (
                    list(a) for a in (self.weights, self.means, self.covariances, self.precisions_cholesky))
            self.weights[i], self.means[i], self.covariances[i], self.precisions_cholesky[i] = (
                weights,
                means,
                cov,
                prec_chol,
            )
            self.n_iter[i] += 1
            n_iter = int(self.n_iter[i])
            self.lower_bounds[i, n_iter - 1] = lower_bound
            change = lower_bound - self.lower_bound[i]
            self.lower_bound[i] = lower_bound
            if n_iter % self.verbose_interval == 0:
                self._log(f"  Iteration {n_iter}\t ll change {change:.5f}" if self.verbose >= 2 else f"  Iteration {n_iter}")
            if abs(change) < self.tol:
                self.converged[i] = True
                self.active[i] = False
            elif n_iter >= self.max_iter:
                self.active[i] = False
            if not self.active[i]:
                msg = "converged" if self.converged[i] else "did not converge"
                self._log(f"Initialization {i} {msg}. lower bound {lower_bound:.5f}.")
        if not np.any(self.active):
            self.phase = _PHASE_DONE

    def best(self) -> int:
        """Index of the initialisation kept: scikit-learn's rule (the first largest lower
        bound), with lower bounds equal to rounding (:data:`TIE_RTOL`) counted as equal.

        Initialisations that end in the same solution (its components in another order)
        have lower bounds that differ in their last bits only, which the backend's and the
        batches' rounding decides: the first of them is kept whatever that rounding.
        """
        if self.max_iter == 0:
            return self.n_init - 1
        best, best_lb = 0, -np.inf
        for i in range(self.n_init):
            lb = self.lower_bound[i]
            if best_lb == -np.inf or lb - best_lb > TIE_RTOL * abs(best_lb):
                best, best_lb = i, lb
        return best

    # -- state ------------------------------------------------------------------------
    _ARRAYS = ("sample", "sample_rows", "centres", "weights", "means", "covariances", "precisions_cholesky")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "seed": np.int64(self.seed),
            "phase": np.int64(self.phase),
            "pass_index": np.int64(self.pass_index),
            "hard_iter": np.int64(self.hard_iter),
            "n_hard": np.int64(self._n_hard),
            "lower_bound": self.lower_bound.copy(),
            "n_iter": self.n_iter.copy(),
            "converged": self.converged.copy(),
            "active": self.active.copy(),
            "lower_bounds": self.lower_bounds.copy(),
        }
        for key in self._ARRAYS:
            value = getattr(self, key)
            if value is not None:
                state[key] = _host_stack(value)  # NumPy, also of models kept on a device
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._tols = None  # of the sample loaded below
        self.seed = int(state["seed"])
        self.phase = int(state["phase"])
        self.pass_index = int(state["pass_index"])
        self.hard_iter = int(state["hard_iter"])
        self._n_hard = int(state["n_hard"])
        self.lower_bound = np.array(state["lower_bound"], dtype=np.float64)
        self.n_iter = np.array(state["n_iter"], dtype=np.int64)
        self.converged = np.array(state["converged"], dtype=bool)
        self.active = np.array(state["active"], dtype=bool)
        self.lower_bounds = np.array(state["lower_bounds"], dtype=np.float64)
        self.n_init = self.lower_bound.size
        for key in self._ARRAYS:
            setattr(self, key, np.array(state[key]) if key in state else None)


# --------------------------------------------------------------------------------------
# the estimator


@document_parameters()
class StreamingGaussianMixture(DensityMixin, StreamingMixin, BaseEstimator):
    """Gaussian mixture fitted by exact EM streamed over arrays larger than memory.

    Same model, parameters and attributes as :class:`sklearn.mixture.GaussianMixture`,
    but ``fit`` reads ``X`` (a NumPy, zarr or dask array) ``batch_size`` rows at a time:
    each EM iteration is one pass accumulating float64 sufficient statistics, centred on
    the current means, followed by the M-step.  With the same initial parameters
    (``weights_init``, ``means_init``, ``precisions_init``) the iterates equal
    scikit-learn's up to rounding.  ``partial_fit`` does stepwise online EM instead.

    Parameters
    ----------
    n_components : int, default=1
        The number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        Each component has its own general covariance matrix ("full"), all share one
        ("tied"), each has a diagonal one ("diag") or a single variance ("spherical").
    tol : float, default=1e-3
        EM stops when the mean log-likelihood gains less than ``tol``.
    reg_covar : float, default=1e-6
        Non-negative regularisation added to the diagonal of the covariances.
    max_iter : int, default=100
        Maximum number of EM iterations (= passes over the data).
    n_init : int, default=1
        Number of initialisations; they share the data passes and the one with the
        largest lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How to initialise when not all of ``weights_init``, ``means_init`` and
        ``precisions_init`` are given:

        - "kmeans": k-means++ seeds on a random sample of rows, Lloyd iterations on the
          sample, then up to 5 streamed Lloyd passes; the final cells give the initial
          parameters.
        - "k-means++": k-means++ seeds on a random sample of rows; every row is assigned
          to its nearest seed in one pass.
        - "random": random responsibilities, drawn per batch (reproducible for a given
          ``random_state`` and ``batch_size``).
        - "random_from_data": ``n_components`` random rows as centres; every row is
          assigned to its nearest centre in one pass.

        When ``means_init`` is given (but not all three), its means are the centres of
        that nearest-centre pass and no sampling is done.
    weights_init : array-like of shape (n_components,), default=None
        User-provided initial weights.
    means_init : array-like of shape (n_components, n_features), default=None
        User-provided initial means.
    precisions_init : array-like, default=None
        User-provided initial precisions (inverse covariances), of shape
        ``(n_components,)`` spherical, ``(n_features, n_features)`` tied,
        ``(n_components, n_features)`` diag, ``(n_components, n_features, n_features)``
        full.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation (one integer is drawn from it; every random number
        of the fit derives from that seed and the pass number) and :meth:`sample`.
    warm_start : bool, default=False
        Reuse the previous solution as initialisation (``n_init`` is then ignored).
    verbose : int, default=0
        Print progress when positive.
    verbose_interval : int, default=10
        Iterations between messages.
    batch_size : int, default=4096
        Rows read and processed at a time.
    decay : float, default=0.7
        Step-size exponent of :meth:`partial_fit`: the ``t``-th online update (``t = 0,
        1, ...``) blends the batch statistics with weight ``(t + 2) ** -decay``; must
        lie in ``(0.5, 1]`` for the stochastic-approximation conditions to hold.
    {backend_parameters}

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
        Mixture weights.
    means_ : ndarray of shape (n_components, n_features)
        Component means.
    covariances_ : ndarray
        ``(n_components,)`` spherical, ``(n_features, n_features)`` tied,
        ``(n_components, n_features)`` diag, ``(n_components, n_features, n_features)``
        full.
    precisions_ : ndarray
        Inverse covariances, same shape as ``covariances_``.
    precisions_cholesky_ : ndarray
        Cholesky factors of the precisions, same shape as ``covariances_``.
    converged_ : bool
        Whether the kept run of EM converged (``False`` after :meth:`partial_fit`).
    n_iter_ : int
        EM iterations of the kept run (online updates after :meth:`partial_fit`).
    lower_bound_ : float
        Mean log-likelihood of the training data under the parameters before the last
        M-step (scikit-learn's convention); after :meth:`partial_fit`, the mean
        log-likelihood of the last batch.
    lower_bounds_ : list of float of length n_iter_
        ``lower_bound_`` of every iteration of the kept run.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when ``X`` had string column names.

    See Also
    --------
    sklearn.mixture.GaussianMixture : the in-memory estimator this one mirrors.

    Notes
    -----
    Memory: ``O(batch_size * n_components * n_features)`` for a batch's
    responsibilities and centred rows, plus ``O(batch_size * n_features ** 2)``
    temporaries for "full" / "tied", plus the model and the statistics, i.e.
    ``O(n_init * n_components * n_features ** 2)`` for "full" (``n_features ** 2`` for
    "tied", ``n_components * n_features`` otherwise).  The "kmeans" and "k-means++"
    initialisations also hold a sample of ``min(n_samples, max(2048, 16 *
    n_components))`` rows per initialisation.  ``X`` is never materialised.

    Each EM iteration reads the data once; initialisation costs one pass ("k-means++",
    "random", "random_from_data", or ``means_init`` given) plus one sampling pass,
    or up to 6 passes ("kmeans"), and none when all three ``*_init`` arrays are given.

    A component that loses all its responsibility keeps a weight of about
    ``10 * eps / n_samples`` (as scikit-learn), its mean stays where it was and its
    covariance becomes ``reg_covar * I``; no NaN is produced.  When a covariance is
    not positive definite (possible only with ``reg_covar=0``),
    :class:`~streamclust.models._gmm_stats.IllDefinedCovarianceError`, a
    :class:`~streamclust.errors.ConvergenceError` and ``ValueError``, is raised.

    The fitted arrays (``weights_``, ``means_``, ``covariances_``, ``precisions_``,
    ``precisions_cholesky_``) and the per-row outputs of :meth:`predict_proba` and
    :meth:`score_samples` are float32 for float32 input and float64 otherwise, as in
    scikit-learn; the statistics and the E-steps are float64 either way (the float64
    parameters behind float32 attributes are kept for later calls).  ``fit``'s
    ``sample_weight`` weights every sufficient statistic (an integer weight is the row
    repeated) and the seeding sample.

    :meth:`partial_fit` implements stepwise online EM (Cappé & Moulines, 2009,
    "On-line expectation-maximization algorithm for latent data models", JRSS-B).

    Examples
    --------
    >>> import numpy as np
    >>> from streamclust.models.gmm import StreamingGaussianMixture
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
    >>> gm = StreamingGaussianMixture(n_components=2, random_state=0, batch_size=4).fit(X)
    >>> np.round(gm.means_[np.argsort(gm.means_[:, 0])], 6)
    array([[ 1.,  2.],
           [10.,  2.]])
    >>> gm.predict([[0, 0], [12, 3]]).tolist() == gm.predict([[0.5, 1], [11, 2]]).tolist()
    True
    """

    _parameter_constraints: dict = {
        **GaussianMixture._parameter_constraints,
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "decay": [Interval(Real, 0.5, 1.0, closed="right")],
        **BACKEND_CONSTRAINTS,
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        batch_size=4096,
        decay=0.7,
        backend="auto",
        device="auto",
        precision="float64",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.batch_size = batch_size
        self.decay = decay
        self.backend = backend
        self.device = device
        self.precision = precision

    # -- fitting ----------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Estimate the parameters with exact EM, streaming over ``X``.

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)
            Training rows (trailing axes of image stacks are flattened).
        y : Ignored
            Not used, present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each row (non-negative; ``None``: all 1): every sufficient statistic
            and the lower bound are weighted, so an integer weight equals repeating the
            row.  Held in memory (8 bytes a row); each batch uses its slice.

        Returns
        -------
        self : StreamingGaussianMixture
            The fitted mixture.
        """
        return fit_streaming(self, X, sample_weight=sample_weight)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the component label of each row of ``X`` (two streams).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
            See :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def _check_init_arrays(self, n_features: int) -> tuple:
        k, ct = self.n_components, self.covariance_type
        weights = means = precisions = None
        if self.weights_init is not None:
            weights = check_array(self.weights_init, dtype=[np.float64, np.float32], ensure_2d=False)
            if weights.shape != (k,):
                raise ValueError(f"The parameter 'weights' should have the shape of {(k,)}, but got {weights.shape}")
            if np.any(weights < 0) or np.any(weights > 1):
                raise ValueError(
                    "The parameter 'weights' should be in the range [0, 1], but got max value "
                    f"{weights.max():.5f}, min value {weights.min():.5f}"
                )
            # the tolerance of the weights' own precision, as scikit-learn
            atol = 1e-6 if weights.dtype == np.float32 else 1e-8
            if not np.allclose(abs(1.0 - weights.sum()), 0.0, atol=atol):
                raise ValueError(f"The parameter 'weights' should be normalized, but got sum(weights) = {weights.sum():.5f}")
        if self.means_init is not None:
            means = check_array(self.means_init, dtype=np.float64, ensure_2d=False)
            if means.shape != (k, n_features):
                raise ValueError(f"The parameter 'means' should have the shape of {(k, n_features)}, but got {means.shape}")
        if self.precisions_init is not None:
            precisions = check_array(self.precisions_init, dtype=np.float64, ensure_2d=False, allow_nd=ct == "full")
            shape = covariance_shape(ct, k, n_features)
            if precisions.shape != shape:
                raise ValueError(f"The parameter '{ct} precision' should have the shape of {shape}, but got {precisions.shape}")
            if ct in ("full", "tied"):
                mats = precisions if ct == "full" else precisions[None]
                for p in mats:
                    if not (np.allclose(p, p.T) and np.all(np.linalg.eigvalsh(p) > 0.0)):
                        raise ValueError(f"'{ct} precision' should be symmetric, positive-definite")
            elif np.any(precisions <= 0.0):
                raise ValueError(f"'{ct} precision' should be positive")
        weights = None if weights is None else weights.astype(np.float64)
        return weights, means, precisions

    def _make_plan(self, source: RowSource, sample_weight=None) -> GMMPlan:
        self._validate_params()
        n, d = source.n_samples, source.n_features
        if n < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {n}; "
                "reduce n_components or provide more rows."
            )
        weights, means, precisions = self._check_init_arrays(d)
        warm = None
        if self.warm_start and hasattr(self, "converged_"):
            if self.means_.shape != (self.n_components, d):
                raise ValueError("warm_start=True but the previous fit has another shape; refit from scratch")
            warm = (*self._float64_params(), self.lower_bound_)
        self._fit_dtype = output_dtype(source)
        return GMMPlan(
            n_samples=n,
            n_features=d,
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            tol=self.tol,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            n_init=self.n_init,
            init_params=self.init_params,
            seed=draw_seed(self.random_state),
            weights_init=weights,
            means_init=means,
            precisions_init=precisions,
            warm=warm,
            verbose=self.verbose,
            verbose_interval=self.verbose_interval,
            sample_weight=sample_weight,
            backend=self._resolved_backend(),
        )

    def _finish_plan(self, plan: GMMPlan, source: RowSource) -> None:
        i = plan.best()
        self._set_model(plan.weights[i], plan.means[i], plan.covariances[i], plan.precisions_cholesky[i],
                        dtype=getattr(self, "_fit_dtype", np.float64))
        self.converged_ = bool(plan.converged[i])
        self.n_iter_ = int(plan.n_iter[i])
        self.lower_bound_ = float(plan.lower_bound[i]) if self.max_iter > 0 else -np.inf
        self.lower_bounds_ = [float(v) for v in plan.lower_bounds[i, : self.n_iter_]]
        for attr in ("_pf_stats", "_pf_t"):
            if hasattr(self, attr):
                delattr(self, attr)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )

    def _set_model(self, weights, means, covariances, precisions_cholesky, dtype=np.float64) -> None:
        """The fitted attributes in ``dtype`` (the input's float dtype), computed in float64.

        The float64 parameters are kept (``_params64``) for the E-steps of later calls, so
        that float32 attributes cost no precision in :meth:`predict` and the like.
        """
        params = tuple(np.array(host(a), dtype=np.float64) for a in (weights, means, covariances, precisions_cholesky))
        precisions = precisions_from_cholesky(params[3], self.covariance_type)
        self._params64 = (*params, precisions)
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = (
            a.astype(dtype) for a in params)
        self.precisions_ = precisions.astype(dtype)

    def _float64_params(self) -> tuple:
        """``(weights, means, covariances, precisions_cholesky)`` in float64: those the
        attributes were cast from, unless an attribute has been set to something else."""
        attrs = (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
        prev = getattr(self, "_params64", None)
        if prev is not None and all(
            p.shape == a.shape and np.array_equal(p.astype(a.dtype), a) for p, a in zip(prev, attrs)
        ):
            return prev[:4]
        return tuple(np.asarray(a, dtype=np.float64) for a in attrs)

    def partial_fit(self, X, y=None):
        """One or more stepwise online-EM updates (Cappé & Moulines, 2009).

        ``X`` is processed in ``batch_size`` chunks, each one update.  The first chunk
        ever seen initialises the model: k-means++ seeds on it (``means_init`` when
        given), one-hot responsibilities of the nearest seed (or, if the estimator was
        already fitted by :meth:`fit`, an E-step under that model).  Every later chunk is an E-step
        whose normalised sufficient statistics ``s_b`` are blended into the running
        averages, ``s <- (1 - g) s + g s_b`` with ``g = (t + 2) ** -decay``, followed
        by the M-step.

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        self : StreamingGaussianMixture
        """
        first = not hasattr(self, "_pf_stats")
        if first:
            self._validate_params()
        source = as_row_source(self, X, reset=first and not hasattr(self, "means_"))
        if first:
            self._check_init_arrays(source.n_features)  # validate shapes early
        dtype = output_dtype(source)
        for _, Xb in source.iter_batches(int(self.batch_size)):
            if not hasattr(self, "_pf_stats"):
                self._partial_init(Xb, dtype)
            else:
                self._partial_step(Xb, dtype)
        return self

    def _partial_init(self, X: np.ndarray, dtype) -> None:
        k, ct = self.n_components, self.covariance_type
        if hasattr(self, "means_"):
            weights, means, _, prec_chol = self._float64_params()
            stats = GMMStatsAccumulator(weights, means, prec_chol, ct)
            stats.update(X)
            lower_bound = stats.log_likelihood / X.shape[0]
        else:
            if X.shape[0] < k:
                raise ValueError(
                    f"The first partial_fit batch has {X.shape[0]} rows, fewer than "
                    f"n_components={k}; pass a larger first batch."
                )
            rs = int(pass_rng(draw_seed(self.random_state), 0, 3).integers(np.iinfo(np.int32).max))
            seeds, _ = kmeans_plusplus(X, k, random_state=rs)
            if self.means_init is not None:
                seeds = np.asarray(self.means_init, dtype=np.float64)
            stats = HardAssignAccumulator(seeds, ct)
            stats.update(X)
            lower_bound = -np.inf
        stats.scale(1.0 / X.shape[0])
        running = GMMSuffStats(k, X.shape[1], ct, stats.shift)
        running.merge(stats)
        self._set_model(*m_step(running, self.reg_covar, ct), dtype=dtype)
        self._pf_stats, self._pf_t = running, 0
        self.n_iter_, self.converged_ = 0, False
        self.lower_bound_, self.lower_bounds_ = lower_bound, []

    def _partial_step(self, X: np.ndarray, dtype) -> None:
        running = self._pf_stats
        weights, means, _, prec_chol = self._float64_params()
        batch = GMMStatsAccumulator(weights, means, prec_chol, self.covariance_type, shift=running.shift)
        batch.update(X)
        batch.scale(1.0 / X.shape[0])
        step = (self._pf_t + 2) ** (-float(self.decay))
        running.blend(batch, step)
        self._set_model(*m_step(running, self.reg_covar, self.covariance_type), dtype=dtype)
        self._pf_t += 1
        self.n_iter_ = self._pf_t
        self.lower_bound_ = float(batch.log_likelihood)
        self.lower_bounds_.append(self.lower_bound_)

    # -- inference --------------------------------------------------------------------
    def _batches(self, X):
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        return source, self._device_batches(source)

    def _log_resp_batches(self, X, source=None):
        if source is None:
            source, batches = self._batches(X)
        else:
            batches = self._device_batches(source)
        weights, means, _, prec_chol = self._float64_params()
        for _, Xb in batches:
            log_norm, log_resp = gmm_log_resp(Xb, weights, means, prec_chol, self.covariance_type)
            yield host(log_norm), host(log_resp)

    def score_samples(self, X):
        """Log-likelihood of each row of ``X`` (streamed).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)

        Returns
        -------
        log_prob : ndarray of shape (n_samples,)
            float32 for float32 input, float64 otherwise (computed in float64).
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        parts = [lpn for lpn, _ in self._log_resp_batches(X, source)]
        return (np.concatenate(parts) if parts else np.zeros(0)).astype(output_dtype(source), copy=False)

    def _log_likelihood_sum(self, X) -> tuple[float, int]:
        total, n = 0.0, 0
        for lpn, _ in self._log_resp_batches(X):
            total += float(lpn.sum())
            n += lpn.shape[0]
        return total, n

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of ``X`` (one streamed pass).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        log_likelihood : float
        """
        total, n = self._log_likelihood_sum(X)
        return total / n

    def predict(self, X):
        """Most probable component of each row of ``X`` (streamed).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        parts = [np.argmax(lr, axis=1) for _, lr in self._log_resp_batches(X)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)

    def predict_proba(self, X):
        """Posterior probability of each component for each row of ``X`` (streamed).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)

        Returns
        -------
        resp : ndarray of shape (n_samples, n_components)
            float32 for float32 input, float64 otherwise (computed in float64).
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        dtype = output_dtype(source)
        with np.errstate(under="ignore"):
            parts = [np.exp(lr).astype(dtype, copy=False) for _, lr in self._log_resp_batches(X, source)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_components), dtype=dtype)

    def _n_parameters(self) -> int:
        return n_parameters(self.covariance_type, self.n_components, self.means_.shape[1])

    def bic(self, X):
        """Bayesian information criterion of the model on ``X`` (one streamed pass).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)

        Returns
        -------
        bic : float
            The lower the better.
        """
        total, n = self._log_likelihood_sum(X)
        return -2 * total + self._n_parameters() * math.log(n)

    def aic(self, X):
        """Akaike information criterion of the model on ``X`` (one streamed pass).

        Parameters
        ----------
        X : array-like, zarr.Array or dask.array.Array of shape (n_samples, n_features)

        Returns
        -------
        aic : float
            The lower the better.
        """
        total, _ = self._log_likelihood_sum(X)
        return -2 * total + 2 * self._n_parameters()

    def sample(self, n_samples=1):
        """Draw random rows from the fitted mixture (as scikit-learn, same generator use).

        Parameters
        ----------
        n_samples : int, default=1
            Number of rows to generate.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of each row.
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least one sample.")
        weights, means, covariances, _ = self._float64_params()
        n_features = means.shape[1]
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, weights)
        if self.covariance_type == "full":
            X = np.vstack([rng.multivariate_normal(m, c, int(s)) for m, c, s in zip(means, covariances, counts)])
        elif self.covariance_type == "tied":
            X = np.vstack([rng.multivariate_normal(m, covariances, int(s)) for m, s in zip(means, counts)])
        else:
            X = np.vstack(
                [
                    m + rng.standard_normal(size=(s, n_features)) * np.sqrt(c)
                    for m, c, s in zip(means, covariances, counts)
                ]
            )
        y = np.concatenate([np.full(int(s), j, dtype=np.int64) for j, s in enumerate(counts)])
        return X, y

