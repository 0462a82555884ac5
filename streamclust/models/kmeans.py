"""Streaming k-means.

:class:`StreamingKMeans` clusters an array (NumPy, zarr or dask) read ``batch_size``
rows at a time.  A fit is a plan of passes (see :mod:`streamclust.engine`):

1. *seeding* (``init="k-means++"`` or ``"random"``): one pass keeps a uniform random
   sample of ``init_sample_size`` rows (sorted random row positions, drawn from the plan
   seed); ``n_init`` seedings are each refined by Lloyd iterations on that sample and
   the one with the lowest sample inertia is kept.  Skipped for an array ``init``.
2. *iterations*: ``method="lloyd"``: exact Lloyd iterations, one pass each (per-cluster
   sums, counts, inertia); ``method="minibatch"``: epochs of
   :class:`sklearn.cluster.MiniBatchKMeans` ``partial_fit`` updates, one batch at a time.
3. *labelling*: one pass computing ``labels_``, the exact ``inertia_`` and cluster sizes.
"""

from __future__ import annotations

import copy
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ..engine.arrays import (bincount, DeviceState, float64, host, is_numpy, largest, like, namespace, one_hot,
                             sum_squares)
from ..engine.backend import Backend, document_parameters, NUMPY, PARAMETER_CONSTRAINTS as BACKEND_CONSTRAINTS
from ..engine import (RowSource, StreamingMixin, as_row_source, check_sample_weight, draw_seed, fit_streaming,
                      output_dtype, pass_rng, weight_slice)
from ._sampling import RowSampleAccumulator, sample_row_indices
from ._seeding import kmeans_plusplus

__all__ = ["StreamingKMeans", "nearest_centre", "squared_distances", "lloyd_in_memory", "seeding_sample"]

_INIT, _ITER, _FINAL, _DONE = 0, 1, 2, 3
_SEED_MAX = np.iinfo(np.int32).max
#: pass number of the generators used by partial_fit (never a real pass of a plan)
_PARTIAL_FIT_STREAM = 2**31 - 1


# ------------------------------------------------------------------------- kernels
def squared_distances(X, centers, centers_sq=None):
    """``||x - c||^2`` of every row and centre, ``(n, k)``, as ``-2 x.c + ||c||^2 + ||x||^2``.

    Not clipped: rounding may leave a value slightly below 0.  ``centers_sq`` (the
    centres' squared norms) may be passed when the same centres serve many batches.
    ``X`` and ``centers`` are NumPy arrays or tensors of one device.
    """
    if centers_sq is None:
        centers_sq = sum_squares(centers, axis=1)
    d2 = X @ centers.T
    d2 *= -2.0
    d2 += centers_sq
    d2 += sum_squares(X, axis=1)[:, None]
    return d2


def nearest_centre(X, centers, centers_sq=None):
    """Nearest centre of each row (ties: the lowest index) and the squared distance to it (``>= 0``).

    The one nearest-centre assignment of streamclust: Lloyd and mini-batch k-means, the
    mixtures' k-means initialisation and agglomerative clustering's sub-clusters.  The
    labels are ``int32`` NumPy arrays, or ``int64`` tensors on ``X``'s device.
    """
    xp = namespace(X)
    d2 = squared_distances(X, centers, centers_sq)
    labels = xp.argmin(d2, axis=1)
    if is_numpy(labels):
        labels = labels.astype(np.int32)
    mind = xp.take_along_axis(d2, labels[:, None], axis=1)[:, 0]
    return labels, xp.clip(mind, min=0.0)


def _cluster_sums(X, labels, k: int, sample_weight: np.ndarray | None = None):
    """Per-cluster row sums (float64, ``(k, d)``) and counts (``int64``).

    With ``sample_weight``: the weighted sums ``sum_i w_i x_i`` and the weight sums
    (float64) instead.  The sums are one product with the one-hot label matrix
    (:func:`~streamclust.engine.backend.one_hot`).
    """
    xp = namespace(X)
    sums = one_hot(labels, k, sample_weight, like_array=X) @ X
    sums = xp.astype(xp.asarray(sums), float64(X))
    if sample_weight is None:
        return sums, bincount(labels, k)
    return sums, bincount(labels, k, sample_weight)


def _tol_from_moments(tol, n, n_features, s1, s2) -> float:
    """sklearn's tolerance ``tol * mean(var(X, axis=0))`` from shifted sums."""
    if n == 0:
        return 0.0
    ss = max(float(s2) - float(s1 @ s1) / n, 0.0)
    return float(tol) * ss / (n * n_features)


class _ShiftedMoments(DeviceState):
    """Shifted first/second moments for the mean per-feature variance (tol scaling)."""

    _device_state = ("m_shift", "m_s1", "m_s2")

    def __init__(self, n_features: int):
        self.m_shift = np.zeros(n_features)
        self.m_has = False
        self.m_n = 0
        self.m_s1 = np.zeros(n_features)
        self.m_s2 = 0.0

    def add(self, X):
        xp = namespace(X)
        if not self.m_has:
            self.m_shift = host(xp.sum(X, axis=0, dtype=float64(X))) / X.shape[0]
            self.m_has = True
            self._follow(X)
        Xc = X - like(X, self.m_shift)
        self.m_s1 += xp.sum(Xc, axis=0)
        self.m_s2 = self.m_s2 + sum_squares(Xc)
        self.m_n += X.shape[0]

    def merge_moments(self, other: "_ShiftedMoments"):
        if other.m_n == 0:
            return
        if self.m_n == 0:
            self.m_shift, self.m_has = other.m_shift.copy(), True
            self.m_n, self.m_s1, self.m_s2 = other.m_n, other.m_s1.copy(), other.m_s2
            return
        e = other.m_shift - self.m_shift  # x - self.shift = (x - other.shift) + e
        self.m_s2 += other.m_s2 + 2.0 * float(e @ other.m_s1) + other.m_n * float(e @ e)
        self.m_s1 += other.m_s1 + other.m_n * e
        self.m_n += other.m_n

    def moments_state(self) -> dict:
        return {"m_shift": self.m_shift, "m_has": np.bool_(self.m_has), "m_n": np.int64(self.m_n),
                "m_s1": self.m_s1, "m_s2": np.float64(self.m_s2)}

    def load_moments(self, state: dict):
        self.m_shift = np.array(state["m_shift"], dtype=np.float64, copy=True)
        self.m_has = bool(state["m_has"])
        self.m_n = int(state["m_n"])
        self.m_s1 = np.array(state["m_s1"], dtype=np.float64, copy=True)
        self.m_s2 = float(state["m_s2"])


# ------------------------------------------------------------------------ lloyd
class _LloydAccumulator(_ShiftedMoments):
    """One Lloyd pass: per-cluster sums, weights, inertia and the ``n_clusters`` farthest points.

    The farthest points (squared distance to their centre; ties broken by row position)
    are where empty clusters are relocated at the end of the pass, as scikit-learn does.
    With ``sample_weight`` (one weight per row of the source; each batch takes its slice
    by offset) the sums, cluster weights and inertia are weighted, as scikit-learn's; a
    cluster is empty when its weight is zero.  The moments for the tolerance stay
    unweighted, as scikit-learn's tolerance is.
    """

    _device_state = _ShiftedMoments._device_state + (
        "sums", "counts", "weights", "inertia", "top_dist", "top_row", "top_label", "top_x", "top_w")

    def __init__(self, centers: np.ndarray, *, track_moments: bool, name: str = "k-means iteration",
                 sample_weight: np.ndarray | None = None):
        k, d = centers.shape
        super().__init__(d)
        self.name = name
        self.centers = centers
        self._centers_sq = np.einsum("ij,ij->i", centers, centers)
        self.track_moments = bool(track_moments)
        self.sample_weight = sample_weight
        self.sums = np.zeros((k, d))
        self.counts = np.zeros(k, dtype=np.int64)
        self.weights = np.zeros(k)
        self.inertia = 0.0
        self.top_dist = np.full(k, -np.inf)
        self.top_row = np.full(k, -1, dtype=np.int64)
        self.top_label = np.full(k, -1, dtype=np.int32)
        self.top_x = np.zeros((k, d))
        self.top_w = np.zeros(k)

    def _centres_like(self, X) -> tuple:
        """The centres and their squared norms on the batch's device (copied once a pass)."""
        if is_numpy(X):
            return self.centers, self._centers_sq
        if getattr(self, "_dev", None) is None or self._dev[0].device != X.device:
            self._dev = (like(X, self.centers), like(X, self._centers_sq))
        return self._dev

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_dev", None)  # device copies, never shipped
        return state

    def update(self, X, offset: int) -> None:
        self._follow(X)
        xp = namespace(X)
        w = weight_slice(self.sample_weight, offset, X.shape[0])
        labels, mind = nearest_centre(X, *self._centres_like(X))
        k = self.centers.shape[0]
        if w is None:
            sums, counts = _cluster_sums(X, labels, k)
            self.weights += xp.astype(counts, float64(X))
            self.inertia = self.inertia + xp.sum(mind)
        else:
            sums, wsums = _cluster_sums(X, labels, k, w)
            counts = bincount(labels, k)
            self.weights += wsums
            self.inertia = self.inertia + mind @ like(mind, w)
        self.sums += sums
        self.counts += counts
        idx = largest(mind, self.top_dist.shape[0])
        ws = like(X, np.ones(idx.shape[0]), float64(X)) if w is None else like(X, w, float64(X))[idx]
        self._merge_top(mind[idx], offset + idx, labels[idx], X[idx], ws)
        if self.track_moments:
            self.add(X)

    def _merge_top(self, dist, rows, labels, xs, ws) -> None:
        """Keep the ``k`` farthest points seen: by distance, then by row (NumPy or one device)."""
        xp = namespace(self.top_dist)
        f64, m = float64(self.top_dist), self.top_dist.shape[0]
        all_d = xp.concat([self.top_dist, xp.astype(dist, f64)])
        all_r = xp.concat([self.top_row, xp.astype(rows, self.top_row.dtype)])
        by_row = xp.argsort(all_r, stable=True)
        order = by_row[xp.argsort(-all_d[by_row], stable=True)][:m]
        all_l = xp.concat([self.top_label, xp.astype(labels, self.top_label.dtype)])
        all_x = xp.concat([self.top_x, xp.astype(xs, f64)])
        all_w = xp.concat([self.top_w, xp.astype(ws, f64)])
        self.top_dist, self.top_row = all_d[order], all_r[order]
        self.top_label, self.top_x, self.top_w = all_l[order], all_x[order], all_w[order]

    def merge(self, other: "_LloydAccumulator") -> None:
        """Add the statistics of an accumulator that saw other batches of the same pass."""
        self.sums += other.sums
        self.counts += other.counts
        self.weights += other.weights
        self.inertia += other.inertia
        self._merge_top(other.top_dist, other.top_row, other.top_label, other.top_x, other.top_w)
        if self.track_moments:
            self.merge_moments(other)

    def new_centers(self):
        """Centres after this pass (with empty clusters relocated) and the cluster weights used."""
        sums, weights, counts = self.sums.copy(), self.weights.copy(), self.counts.copy()
        centers = self.centers.copy()
        empty = np.flatnonzero(weights == 0)
        cand = 0
        for j in empty:
            # farthest remaining point whose cluster keeps at least one point
            while cand < self.top_row.size and (
                self.top_row[cand] < 0 or counts[self.top_label[cand]] <= 1
            ):
                cand += 1
            if cand >= self.top_row.size:
                break
            x, old, wx = self.top_x[cand], self.top_label[cand], self.top_w[cand]
            sums[old] -= wx * x
            weights[old] -= wx
            counts[old] -= 1
            centers[j] = x
            sums[j] = wx * x
            weights[j] = wx
            counts[j] = 1
            cand += 1
        filled = weights > 0
        centers[filled] = sums[filled] / weights[filled, None]
        return centers, weights

    def state_dict(self) -> dict:
        state = {
            "sums": self.sums,
            "counts": self.counts,
            "weights": self.weights,
            "inertia": np.float64(self.inertia),
            "top_dist": self.top_dist,
            "top_row": self.top_row,
            "top_label": self.top_label,
            "top_x": self.top_x,
            "top_w": self.top_w,
        }
        state.update(self.moments_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sums = np.array(state["sums"], dtype=np.float64, copy=True)
        self.counts = np.array(state["counts"], dtype=np.int64, copy=True)
        # checkpoints of unweighted fits written before the weights existed
        self.weights = np.array(state.get("weights", self.counts), dtype=np.float64, copy=True)
        self.inertia = float(state["inertia"])
        self.top_dist = np.array(state["top_dist"], dtype=np.float64, copy=True)
        self.top_row = np.array(state["top_row"], dtype=np.int64, copy=True)
        self.top_label = np.array(state["top_label"], dtype=np.int32, copy=True)
        self.top_x = np.array(state["top_x"], dtype=np.float64, copy=True)
        self.top_w = np.array(state.get("top_w", np.ones(self.top_row.size)), dtype=np.float64, copy=True)
        self.load_moments(state)


# -------------------------------------------------------------------- mini-batch
def _minibatch_step(X, centers, counts, n_since, rng, *, reassignment_ratio, sample_weight=None):
    """One :class:`~sklearn.cluster.MiniBatchKMeans` step on ``X``, in place.

    ``counts`` are the cluster weight sums (counts with unit weights); with
    ``sample_weight`` the update is scikit-learn's weighted one (as its ``partial_fit``).
    Returns ``(inertia_before_update, n_since_last_reassign)``, the inertia weighted.
    """
    k = centers.shape[0]
    # sklearn's _random_reassign: every 10 * n_clusters rows, or whenever a count is 0
    n_since += X.shape[0]
    reassign = bool((counts == 0).any() or n_since >= 10 * k)
    if reassign:
        n_since = 0
    labels, mind = nearest_centre(X, centers)
    sums, bcounts = _cluster_sums(X, labels, k, sample_weight)
    hit = bcounts > 0
    new_counts = counts[hit] + bcounts[hit]
    centers[hit] = (centers[hit] * counts[hit, None] + sums[hit]) / new_counts[:, None]
    counts[hit] = new_counts
    if reassign and reassignment_ratio > 0:
        to_reassign = counts < reassignment_ratio * counts.max()
        if to_reassign.sum() > 0.5 * X.shape[0]:
            to_reassign[np.argsort(counts, kind="stable")[int(0.5 * X.shape[0]) :]] = False
        n_re = int(to_reassign.sum())
        if n_re:
            picks = rng.choice(X.shape[0], size=n_re, replace=False)
            centers[to_reassign] = X[picks]
            if (~to_reassign).any():
                counts[to_reassign] = np.min(counts[~to_reassign])
    inertia = float(mind.sum()) if sample_weight is None else float(mind @ sample_weight)
    return inertia, n_since


class _MiniBatchConvergence:
    """scikit-learn's ``MiniBatchKMeans._mini_batch_convergence``, one call per mini-batch.

    The inertia of each batch (before its update, divided by the batch's weight) is
    smoothed by an exponentially weighted average with ``alpha = min(2 b / (n + 1), 1)``
    (``b`` the batch's rows); the fit stops when the squared centre change of a step is
    at most ``tol`` (when ``tol > 0``), or when the average has not reached a new minimum
    for ``max_no_improvement`` consecutive steps.  The first step (inertia of the
    initial centres) is ignored, as in scikit-learn.

    The batches come in storage order rather than drawn at random, which changes two
    things.  During the first epoch part of the data has not been seen yet: the average
    is tracked from the start, but neither test stops the fit before every row has been
    used once (``armed``).  And the same batches come back in the same order every
    epoch, so the average swings with the batch position while the centres creep: each
    epoch it touches a slightly lower minimum and scikit-learn's rule ("a new minimum")
    would never fire (random batches drown that creep in noise).  A new minimum
    therefore counts only when it is below the previous one by more than the standard
    error of the average, ``sqrt(alpha / (2 - alpha) * var)`` with ``var`` the
    exponentially weighted variance of the batch inertia around it.
    """

    _STATE = ("steps", "ewa", "ewvar", "ewa_min", "no_improvement")

    def __init__(self, n_samples: int, max_no_improvement):
        self.n_samples = int(n_samples)
        self.max_no_improvement = max_no_improvement
        self.steps = 0
        self.ewa = np.nan
        self.ewvar = 0.0
        self.ewa_min = np.nan
        self.no_improvement = 0

    def step(self, batch_inertia: float, batch_weight: float, batch_rows: int, centers_sq_diff: float,
             tol: float, armed: bool = True) -> bool:
        """Record one step; ``True`` when the fit has converged (only when ``armed``)."""
        self.steps += 1
        if self.steps == 1:
            return False
        inertia = batch_inertia / batch_weight if batch_weight > 0 else 0.0
        alpha = min(batch_rows * 2.0 / (self.n_samples + 1), 1.0)
        if np.isnan(self.ewa):
            self.ewa = inertia
        else:
            delta = inertia - self.ewa
            self.ewa = self.ewa * (1 - alpha) + inertia * alpha
            self.ewvar = (1 - alpha) * (self.ewvar + alpha * delta * delta)
        if armed and tol > 0.0 and centers_sq_diff <= tol:
            return True
        margin = np.sqrt(alpha / (2.0 - alpha) * self.ewvar) if alpha < 1 else 0.0
        if np.isnan(self.ewa_min) or self.ewa < self.ewa_min - margin:
            self.no_improvement, self.ewa_min = 0, self.ewa
        else:
            self.no_improvement += 1
        return armed and self.max_no_improvement is not None and self.no_improvement >= self.max_no_improvement

    def state(self) -> dict:
        return {f"conv_{k}": np.asarray(getattr(self, k)) for k in self._STATE}

    def load(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, np.asarray(state[f"conv_{k}"]).item())


class _MiniBatchAccumulator(_ShiftedMoments):
    """One epoch of mini-batch updates; the accumulator *is* the model while it runs.

    Sequential, hence no ``merge``: the batches must be fed in order.  Once the
    convergence test (:class:`_MiniBatchConvergence`, carried over from epoch to epoch)
    fires, the remaining batches of the epoch are read but not used, and ``converged``
    is set.  ``tol`` is the scaled tolerance, ``NaN`` while it is unknown (during the
    first epoch, whose moments give it).
    """

    def __init__(self, centers, counts, n_since, n_steps, seed, pass_index, *, reassignment_ratio,
                 track_moments, name, convergence: _MiniBatchConvergence, tol: float,
                 sample_weight: np.ndarray | None = None):
        super().__init__(centers.shape[1])
        self.name = name
        self.centers = np.array(centers, dtype=np.float64, copy=True)
        self.counts = np.array(counts, dtype=np.float64, copy=True)
        self.n_since = int(n_since)
        self.n_steps = int(n_steps)
        self.seed, self.pass_index = int(seed), int(pass_index)
        self.reassignment_ratio = float(reassignment_ratio)
        self.track_moments = bool(track_moments)
        self.sample_weight = sample_weight
        self.convergence = convergence
        self.tol = float(tol)
        self.converged = False
        self.inertia = 0.0

    def update(self, X, offset: int) -> None:
        X = host(X, np.float64)  # the mini-batch steps run with NumPy (sequential, tiny products)
        if self.track_moments:
            self.add(X)
        if self.converged:
            return
        w = weight_slice(self.sample_weight, offset, X.shape[0])
        rng = pass_rng(self.seed, self.pass_index, offset)
        before = self.centers.copy() if self.tol > 0 else None
        inertia, self.n_since = _minibatch_step(
            X, self.centers, self.counts, self.n_since, rng, reassignment_ratio=self.reassignment_ratio,
            sample_weight=w,
        )
        self.inertia += inertia
        self.n_steps += 1
        diff = float(np.sum((self.centers - before) ** 2)) if before is not None else 0.0
        weight = float(X.shape[0]) if w is None else float(w.sum())
        # tol is NaN (unknown) during the first epoch, whose rows are not all seen yet
        armed = bool(np.isfinite(self.tol))
        self.converged = self.convergence.step(inertia, weight, X.shape[0], diff, self.tol if armed else 0.0,
                                               armed=armed)

    def state_dict(self) -> dict:
        state = {
            "centers": self.centers,
            "counts": self.counts,
            "n_since": np.int64(self.n_since),
            "n_steps": np.int64(self.n_steps),
            "inertia": np.float64(self.inertia),
            "converged": np.bool_(self.converged),
        }
        state.update(self.convergence.state())
        state.update(self.moments_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.centers = np.array(state["centers"], dtype=np.float64, copy=True)
        self.counts = np.array(state["counts"], dtype=np.float64, copy=True)
        self.n_since = int(state["n_since"])
        self.n_steps = int(state["n_steps"])
        self.inertia = float(state["inertia"])
        self.converged = bool(state["converged"])
        self.convergence.load(state)
        self.load_moments(state)


# ---------------------------------------------------------------------- labelling
class _LabelAccumulator(DeviceState):
    """Final pass: labels, exact inertia (``sum w ||x - c_label||^2``) and cluster sizes (rows)."""

    name = "k-means labels"

    def __init__(self, centers: np.ndarray, n_samples: int, *, sample_weight: np.ndarray | None = None):
        self.centers = centers
        self._centers_sq = np.einsum("ij,ij->i", centers, centers)
        self.sample_weight = sample_weight
        self.labels = np.full(int(n_samples), -1, dtype=np.int32)
        self.inertia = 0.0
        self.counts = np.zeros(centers.shape[0], dtype=np.int64)

    __getstate__ = _LloydAccumulator.__getstate__
    _device_state = ("inertia",)

    def update(self, X, offset: int) -> None:
        self._follow(X)
        centers, centers_sq = _LloydAccumulator._centres_like(self, X)
        labels, _ = nearest_centre(X, centers, centers_sq)
        diff = X - centers[labels]
        w = weight_slice(self.sample_weight, offset, X.shape[0])
        if w is None:
            self.inertia = self.inertia + sum_squares(diff)
        else:
            self.inertia = self.inertia + sum_squares(diff, axis=1) @ like(diff, w)
        labels = host(labels).astype(np.int32, copy=False)
        self.labels[offset : offset + X.shape[0]] = labels
        self.counts += np.bincount(labels, minlength=self.counts.size)

    def merge(self, other: "_LabelAccumulator") -> None:
        seen = other.labels >= 0
        self.labels[seen] = other.labels[seen]
        self.inertia += other.inertia
        self.counts += other.counts

    def state_dict(self) -> dict:
        return {"labels": self.labels, "inertia": np.float64(self.inertia), "counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        self.labels = np.array(state["labels"], dtype=np.int32, copy=True)
        self.inertia = float(state["inertia"])
        self.counts = np.array(state["counts"], dtype=np.int64, copy=True)


# ------------------------------------------------------------------------- seeding
def seeding_sample(sample, backend: Backend = NUMPY):
    """The float64 sample where a seeding's arithmetic runs (k-means++ and the in-memory Lloyd):
    on a GPU copied there once (a tensor already on a device stays), otherwise NumPy."""
    if not is_numpy(sample):
        return sample.to(dtype=float64(sample))
    return backend.asarray(sample, backend.xp.float64) if backend.on_gpu else np.asarray(sample, dtype=np.float64)


def lloyd_in_memory(X, centers, max_iter, tol, chunk=8192, sample_weight=None, backend: Backend = NUMPY):
    """Lloyd iterations on an in-memory array (a seeding sample), ``chunk`` rows at a time.

    Large chunks keep the per-chunk overhead (Python calls, small matrix products) low;
    the temporaries are ``chunk x n_clusters``.

    Stops when the centres move less (squared) than ``tol`` times the mean per-feature
    variance of ``X``, as scikit-learn's ``KMeans``; an emptied cluster takes the row
    farthest from its centre.  The seeding of :class:`StreamingKMeans` and the ``"kmeans"``
    initialisation of :class:`~streamclust.models.gmm.StreamingGaussianMixture` both refine
    their sample with it.

    Returns ``(centers, inertia, cluster weights)`` (the weights are the cluster sizes
    for unit weights).  With a GPU ``backend`` the sample is copied there once (float64)
    and every iteration runs there, in one chunk.
    """
    tol_ = None
    X = seeding_sample(X, backend)
    if not is_numpy(X):
        chunk = X.shape[0]
    for _ in range(int(max_iter)):
        acc = _LloydAccumulator(centers, track_moments=tol_ is None, sample_weight=sample_weight)
        for lo in range(0, X.shape[0], chunk):
            acc.update(X[lo : lo + chunk], lo)
        acc.to_host()
        if tol_ is None:
            tol_ = _tol_from_moments(tol, acc.m_n, X.shape[1], acc.m_s1, acc.m_s2)
        new, _ = acc.new_centers()
        shift = float(np.sum((new - centers) ** 2))
        centers = new
        if shift <= tol_:
            break
    final = _LabelAccumulator(centers, X.shape[0], sample_weight=sample_weight)
    for lo in range(0, X.shape[0], chunk):
        final.update(X[lo : lo + chunk], lo)
    final.to_host()
    if sample_weight is None:
        return centers, final.inertia, final.counts.astype(np.float64)
    return centers, final.inertia, np.bincount(final.labels, weights=sample_weight, minlength=centers.shape[0])


def _check_init_shape(centers: np.ndarray, n_clusters: int, n_features: int) -> None:
    """scikit-learn's ``_validate_center_shape`` (same messages)."""
    if centers.ndim != 2 or centers.shape[0] != n_clusters:
        raise ValueError(
            f"The shape of the initial centers {centers.shape} does not match the number of clusters {n_clusters}."
        )
    if centers.shape[1] != n_features:
        raise ValueError(
            f"The shape of the initial centers {centers.shape} does not match the number of features "
            f"of the data {n_features}."
        )


def _seed_centers(sample, n_clusters, init, n_init, max_iter, tol, seed, sample_weight=None, backend: Backend = NUMPY):
    """Best of ``n_init`` seedings refined on the sample: ``(centers, sample cluster weights)``.

    ``init`` is "k-means++" (weighted by ``sample_weight`` when given), "random" (rows
    drawn with probability proportional to their weight) or a callable
    ``init(sample, n_clusters, random_state)`` returning the centres.
    """
    best, best_inertia, best_sizes = None, np.inf, None
    w = sample_weight
    where = seeding_sample(sample, backend)  # on a GPU, copied there once for all the seedings
    for i in range(int(n_init)):
        rng = pass_rng(seed, 0, i + 1)
        if callable(init):
            centers = check_array(init(sample, n_clusters, random_state=np.random.RandomState(
                int(rng.integers(_SEED_MAX)))), dtype=np.float64, copy=True, input_name="init")
            _check_init_shape(centers, n_clusters, sample.shape[1])
        elif init == "random":
            p = None if w is None else w / w.sum()
            centers = sample[rng.choice(sample.shape[0], size=n_clusters, replace=False, p=p)].copy()
        else:
            extra = {} if w is None else {"sample_weight": w}
            centers, _ = kmeans_plusplus(where, n_clusters, random_state=int(rng.integers(_SEED_MAX)), **extra)
        centers, inertia, sizes = lloyd_in_memory(where, np.asarray(centers, dtype=np.float64), max_iter, tol,
                                                   sample_weight=w, backend=backend)
        if inertia < best_inertia or best is None:
            best, best_inertia, best_sizes = centers, inertia, sizes
    return best, best_sizes


# ---------------------------------------------------------------------------- plan
class _KMeansPlan:
    """Seeding pass (optional), iteration passes, labelling pass.

    ``sample_weight`` (one weight per row, or ``None``) is input like the data: it is
    handed to every accumulator, which takes its batch's slice by offset, and is not part
    of the state.
    """

    def __init__(self, *, n_samples, n_features, n_clusters, method, init_centers, init, n_init,
                 max_iter, tol, sample_size, reassignment_ratio, max_no_improvement, seed, sample_weight=None,
                 backend: Backend = NUMPY):
        self.backend = backend  # where the seeding's in-memory Lloyd runs (not state)
        self.n_samples, self.n_features, self.k = int(n_samples), int(n_features), int(n_clusters)
        self.method, self.init, self.n_init = method, init, int(n_init)
        self.max_iter, self.tol, self.sample_size = int(max_iter), float(tol), int(sample_size)
        self.reassignment_ratio = float(reassignment_ratio)
        self.max_no_improvement = max_no_improvement
        self.seed = int(seed)
        self.sample_weight = sample_weight
        # state
        self.phase = _INIT if init_centers is None else _ITER
        self.centers = (
            np.zeros((self.k, self.n_features)) if init_centers is None else np.array(init_centers, dtype=np.float64)
        )
        self.pass_index = 0
        self.n_iter = 0
        self.tol_ = np.nan
        self.counts = np.zeros(self.k)
        self.n_since = 0
        self.n_steps = 0
        self.convergence = _MiniBatchConvergence(self.n_samples, max_no_improvement)
        self.labels = np.zeros(0, dtype=np.int32)
        self.inertia = np.nan
        self.sizes = np.zeros(self.k, dtype=np.int64)

    def _sample_rows(self) -> np.ndarray:
        return sample_row_indices(self.n_samples, self.sample_size, pass_rng(self.seed, 0))

    def next_pass(self):
        w = self.sample_weight
        if self.phase == _INIT:
            return RowSampleAccumulator(self._sample_rows(), self.n_features, name="k-means seeding sample")
        if self.phase == _ITER:
            track = bool(np.isnan(self.tol_))
            if self.method == "lloyd":
                return _LloydAccumulator(self.centers, track_moments=track,
                                         name=f"k-means iteration {self.n_iter + 1}", sample_weight=w)
            return _MiniBatchAccumulator(
                self.centers, self.counts, self.n_since, self.n_steps, self.seed, self.pass_index,
                reassignment_ratio=self.reassignment_ratio, track_moments=track,
                name=f"mini-batch k-means epoch {self.n_iter + 1}",
                convergence=copy.deepcopy(self.convergence), tol=self.tol_, sample_weight=w,
            )
        if self.phase == _FINAL:
            return _LabelAccumulator(self.centers, self.n_samples, sample_weight=w)
        return None

    def end_pass(self, acc) -> None:
        if self.phase == _INIT:
            w = None if self.sample_weight is None else self.sample_weight[self._sample_rows()]
            self.centers, sizes = _seed_centers(
                acc.sample, self.k, self.init, self.n_init, self.max_iter, self.tol, self.seed, sample_weight=w,
                backend=self.backend)
            if self.method == "minibatch":
                # the sample was the first mini-batch: its cluster weights are the initial counts
                self.counts = sizes
            self.phase = _ITER
        elif self.phase == _ITER:
            if np.isnan(self.tol_):
                self.tol_ = _tol_from_moments(self.tol, acc.m_n, self.n_features, acc.m_s1, acc.m_s2)
            self.n_iter += 1
            if self.method == "lloyd":
                new, _ = acc.new_centers()
                shift = float(np.sum((new - self.centers) ** 2))
                self.centers = new
                stop = shift <= self.tol_
            else:
                self.centers, self.counts = acc.centers.copy(), acc.counts.copy()
                self.n_since, self.n_steps = acc.n_since, acc.n_steps
                self.convergence = acc.convergence
                stop = acc.converged
            if stop or self.n_iter >= self.max_iter:
                self.phase = _FINAL
        elif self.phase == _FINAL:
            self.labels, self.inertia, self.sizes = acc.labels, acc.inertia, acc.counts
            self.phase = _DONE
        self.pass_index += 1

    _STATE = ("phase", "centers", "pass_index", "n_iter", "tol_", "counts", "n_since", "n_steps",
              "labels", "inertia", "sizes", "seed")

    def state_dict(self) -> dict:
        state = {name: np.asarray(getattr(self, name)) for name in self._STATE}
        state.update(self.convergence.state())
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in self._STATE:
            value = np.array(state[name], copy=True)
            if value.ndim == 0:
                value = value.item()
            setattr(self, name, value)
        if "conv_steps" in state:
            self.convergence.load(state)


# ----------------------------------------------------------------------- estimator
@document_parameters()
class StreamingKMeans(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, StreamingMixin,
                      BaseEstimator):
    """K-means clustering of data streamed from NumPy, zarr or dask arrays.

    The data are read ``batch_size`` rows at a time and never materialised; image stacks
    of shape ``(n_samples, h, w, c)`` are flattened per batch.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    method : {"minibatch", "lloyd"}, default="minibatch"
        ``"lloyd"``: exact Lloyd iterations, one pass over the data each; given the same
        initial centres the result equals :class:`sklearn.cluster.KMeans` with
        ``algorithm="lloyd"``.  ``"minibatch"``: epochs of
        :meth:`sklearn.cluster.MiniBatchKMeans.partial_fit` updates over the batches,
        in storage order.
    init : {"k-means++", "random"}, callable or array-like of shape (n_clusters, n_features), \
            default="k-means++"
        Initial centres.  ``"k-means++"`` seeds as :func:`sklearn.cluster.kmeans_plusplus`
        (the same seeds for float64 rows; on a GPU computed there, the same to rounding) on a random sample of ``init_sample_size`` rows; ``"random"`` picks sample rows
        (with probability proportional to their weight); a callable is called as
        ``init(sample, n_clusters, random_state)`` on that sample and returns the centres.
    n_init : int or "auto", default=1
        Number of seedings tried on the sample; each is refined with Lloyd iterations
        on the sample and the one with the lowest sample inertia is kept.  Only one
        full-data run is made.  ``"auto"``: 1 for "k-means++" and an array, 10
        (``"lloyd"``) or 3 (``"minibatch"``) otherwise, as scikit-learn.  An array ``init`` is one seeding
        (a ``RuntimeWarning`` says so when ``n_init > 1``).
    max_iter : int, default=100
        Maximum number of passes over the data: Lloyd iterations (``"lloyd"``) or
        epochs (``"minibatch"``).
    tol : float, default=1e-4
        Relative tolerance, times the mean per-feature variance of the data (computed
        during the first pass), as scikit-learn does.  ``"lloyd"`` stops when the
        squared centre movement of a pass (summed over clusters) is at most that;
        ``"minibatch"`` when the squared centre movement of one mini-batch step is (from
        the second epoch on, once the variance is known; ``tol=0`` disables this test).
    batch_size : int, default=1024
        Rows read per batch (and mini-batch size).
    init_sample_size : int or None, default=None
        Rows sampled for seeding (scikit-learn's ``init_size``); ``None`` means
        ``3 * batch_size``, or ``3 * n_clusters`` when that is fewer than
        ``n_clusters``.  A value below ``n_clusters`` is raised to ``3 * n_clusters``
        with a ``RuntimeWarning``.  At most ``n_samples`` rows are used.
    reassignment_ratio : float, default=0.01
        ``"minibatch"``: centres whose count falls below this fraction of the largest
        count are moved to random rows of the current batch, as in
        :class:`~sklearn.cluster.MiniBatchKMeans`.
    max_no_improvement : int or None, default=10
        ``"minibatch"``: stop after this many consecutive mini-batches without a new
        minimum of the smoothed mini-batch inertia (an exponentially weighted average,
        as :class:`~sklearn.cluster.MiniBatchKMeans`); ``None`` disables this criterion.
    random_state : int, RandomState instance or None, default=None
        Seeds the sample, the seeding and the mini-batch reassignments.  Pass an int
        for reproducible (and resumable with a fresh estimator) fits.
    {backend_parameters}

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Cluster centres, float32 for float32 input and float64 otherwise (the sums are
        accumulated in float64 either way).
    labels_ : ndarray of shape (n_samples,), dtype=int32
        Label of each training row (by :meth:`fit`; by :meth:`partial_fit`, of the last
        batch), consistent with ``cluster_centers_``.
    inertia_ : float
        Sum of squared distances of the training rows to their centre (exact).
    cluster_sizes_ : ndarray of shape (n_clusters,), dtype=int64
        Number of training rows per cluster.
    n_iter_ : int
        Number of Lloyd iterations or mini-batch epochs run.
    n_steps_ : int
        Number of mini-batch updates (``"minibatch"`` and :meth:`partial_fit`).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when the input had string column names.

    See Also
    --------
    sklearn.cluster.KMeans : In-memory k-means.
    sklearn.cluster.MiniBatchKMeans : In-memory mini-batch k-means.

    Notes
    -----
    Memory (``k = n_clusters``, ``d = n_features``, ``b = batch_size``): the centres,
    per-cluster sums and the ``k`` farthest points (``3 k d`` float64), per-batch
    temporaries of ``b d`` and ``b k`` float64, the seeding sample
    (``init_sample_size * d`` float64, during seeding only) and ``labels_``
    (4 bytes per row).

    With a k-means++ or random seeding, the mini-batch counts start at the cluster
    sizes of the seeding sample (whose cluster means the seeded centres are), as if the
    sample had been the first mini-batch; this keeps the first batches, read in storage
    order, from dragging all centres.  With an array ``init`` they start at zero, as in
    :class:`~sklearn.cluster.MiniBatchKMeans`.

    Empty clusters in a Lloyd pass are relocated deterministically, as scikit-learn
    does: the pass keeps the ``k`` points farthest from their centre (ties by row
    position), and each empty cluster takes the farthest remaining one whose cluster
    keeps at least one point.  Mini-batch epochs stop on ``tol``,
    ``max_no_improvement`` (checked after every mini-batch, as scikit-learn; the rest of
    the epoch is then read but not used) or ``max_iter``; the batches are visited in
    storage order.  ``sample_weight`` weights every sum, count and inertia as in
    scikit-learn; the mini-batch updates use the weights of the batch's rows (as
    :meth:`~sklearn.cluster.MiniBatchKMeans.partial_fit` does), since the batches are
    read in order rather than drawn with probabilities proportional to the weights.
    A Lloyd fit that ends with fewer distinct clusters than ``n_clusters`` (duplicate
    points) warns with a ``ConvergenceWarning``, as :class:`~sklearn.cluster.KMeans`.
    On data stored in class order the mini-batch updates (and their random
    reassignments, which pick rows of the current batch) are biased towards the class
    being read: keep a large seeding sample (the default), set
    ``reassignment_ratio=0``, use ``method="lloyd"`` or shuffle the rows at ingestion.

    Examples
    --------
    >>> import numpy as np
    >>> from streamclust.models.kmeans import StreamingKMeans
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)
    >>> km = StreamingKMeans(n_clusters=2, method="lloyd", batch_size=4, random_state=0).fit(X)
    >>> sorted(km.cluster_centers_[:, 0].tolist())
    [1.0, 10.0]
    >>> int(km.predict([[0.0, 0.0]])[0]) == int(km.labels_[0])
    True
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "method": [StrOptions({"minibatch", "lloyd"})],
        "init": [StrOptions({"k-means++", "random"}), callable, "array-like"],
        "n_init": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "init_sample_size": [Interval(Integral, 1, None, closed="left"), None],
        "reassignment_ratio": [Interval(Real, 0, None, closed="left")],
        "max_no_improvement": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        **BACKEND_CONSTRAINTS,
    }

    def __init__(
        self,
        n_clusters=8,
        *,
        method="minibatch",
        init="k-means++",
        n_init=1,
        max_iter=100,
        tol=1e-4,
        batch_size=1024,
        init_sample_size=None,
        reassignment_ratio=0.01,
        max_no_improvement=10,
        random_state=None,
        backend="auto",
        device="auto",
        precision="float64",
    ):
        self.n_clusters = n_clusters
        self.method = method
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.init_sample_size = init_sample_size
        self.reassignment_ratio = reassignment_ratio
        self.max_no_improvement = max_no_improvement
        self.random_state = random_state
        self.backend = backend
        self.device = device
        self.precision = precision

    # ------------------------------------------------------------------ helpers
    def _batches_may_grow(self) -> bool:
        return self.method != "minibatch"  # a mini-batch is a batch: its size is the algorithm's

    def _check_n_samples(self, n_samples: int) -> None:
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")

    def _init_array(self, n_features: int):
        if isinstance(self.init, str) or callable(self.init):
            return None
        centers = check_array(self.init, dtype=np.float64, copy=True, input_name="init")
        _check_init_shape(centers, self.n_clusters, n_features)
        return centers

    def _resolve_n_init(self) -> int:
        """``n_init`` resolved as scikit-learn does (``"auto"``; one run for an array ``init``)."""
        n_init = self.n_init
        explicit = not (isinstance(self.init, str) or callable(self.init))
        if n_init == "auto":
            if explicit or self.init == "k-means++":
                n_init = 1
            else:
                n_init = 3 if self.method == "minibatch" else 10
        if explicit:
            if n_init != 1:
                warnings.warn(
                    "Explicit initial center position passed: performing only one init in "
                    f"{type(self).__name__} instead of n_init={n_init}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            n_init = 1
        return int(n_init)

    def _sample_size(self, n_samples: int) -> int:
        """Rows of the seeding sample: scikit-learn's ``_init_size`` rule."""
        k = int(self.n_clusters)
        if self.init_sample_size is None:
            size = 3 * int(self.batch_size)
            if size < k:
                size = 3 * k
        else:
            size = int(self.init_sample_size)
            if size < k:
                warnings.warn(
                    f"init_sample_size (MiniBatchKMeans' init_size)={size} should be larger than "
                    f"n_clusters={k}. Setting it to min(3*n_clusters, n_samples)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                size = 3 * k
        return min(size, int(n_samples))

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, sample_weight=None):
        """Compute the clustering by streaming over ``X``.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Training data; trailing axes are flattened into features.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each row (non-negative; ``None``: all 1).  Held in memory (8 bytes a
            row); each batch uses its slice.

        Returns
        -------
        self : StreamingKMeans
            The fitted estimator.
        """
        return fit_streaming(self, X, sample_weight=sample_weight)

    def _make_plan(self, source: RowSource, sample_weight=None):
        self._validate_params()
        n, d = source.n_samples, source.n_features
        self._check_n_samples(n)
        init_centers = self._init_array(d)
        n_init = self._resolve_n_init()
        if isinstance(self.init, str) or callable(self.init):
            init = self.init
        else:
            init = "array"
        self._fit_dtype = output_dtype(source)
        # the resolved values, under scikit-learn's names for them
        self._n_init = n_init
        self._init_size = self._sample_size(n)
        return _KMeansPlan(
            n_samples=n, n_features=d, n_clusters=self.n_clusters, method=self.method,
            init_centers=init_centers, init=init, n_init=n_init, max_iter=self.max_iter, tol=self.tol,
            sample_size=self._init_size, reassignment_ratio=self.reassignment_ratio,
            max_no_improvement=self.max_no_improvement, seed=draw_seed(self.random_state),
            sample_weight=sample_weight, backend=self._resolved_backend(),
        )

    def _finish_plan(self, plan: _KMeansPlan, source: RowSource) -> None:
        dtype = getattr(self, "_fit_dtype", np.dtype(np.float64))
        self.cluster_centers_ = np.array(plan.centers, dtype=dtype, copy=True)
        self.labels_ = np.asarray(plan.labels, dtype=np.int32)
        self.inertia_ = float(plan.inertia)
        self.cluster_sizes_ = np.asarray(plan.sizes, dtype=np.int64)
        self.n_iter_ = int(plan.n_iter)
        self.n_steps_ = int(plan.n_steps)
        # state for later partial_fit calls (float64, whatever the attributes' dtype)
        self._seed = int(plan.seed)
        self._centers64 = np.array(plan.centers, dtype=np.float64, copy=True)
        if self.method == "minibatch":
            self._counts = np.asarray(plan.counts, dtype=np.float64).copy()
        elif plan.sample_weight is not None:
            self._counts = np.bincount(self.labels_, weights=plan.sample_weight, minlength=self.n_clusters)
        else:
            self._counts = self.cluster_sizes_.astype(np.float64)
        self._n_since_last_reassign = int(plan.n_since)
        distinct = int(np.count_nonzero(self.cluster_sizes_))
        if self.method == "lloyd" and distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than n_clusters ({self.n_clusters}). "
                "Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def partial_fit(self, X, y=None, sample_weight=None):
        """Update the centres with one mini-batch (:class:`~sklearn.cluster.MiniBatchKMeans` step).

        The first call (on an unfitted estimator) seeds the centres from ``X`` with
        k-means++ (or ``init``).  ``labels_`` and ``inertia_`` then describe ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A batch of rows (in memory).
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each row of the batch (``None``: all 1).

        Returns
        -------
        self : StreamingKMeans
            The updated estimator.
        """
        self._validate_params()
        has_centers = hasattr(self, "cluster_centers_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=not has_centers)
        dtype = X.dtype
        X = X.astype(np.float64, copy=False)
        w = check_sample_weight(sample_weight, X.shape[0])
        if not has_centers:
            self._check_n_samples(X.shape[0])
            self._seed = draw_seed(self.random_state)
            centers = self._init_array(X.shape[1])
            self._resolve_n_init()  # the warning for an array init with n_init > 1
            if centers is None:
                rng = pass_rng(self._seed, 0, 1)
                if callable(self.init):
                    centers = check_array(self.init(X, self.n_clusters, random_state=np.random.RandomState(
                        int(rng.integers(_SEED_MAX)))), dtype=np.float64, copy=True, input_name="init")
                    _check_init_shape(centers, self.n_clusters, X.shape[1])
                elif self.init == "random":
                    p = None if w is None else w / w.sum()
                    centers = X[rng.choice(X.shape[0], size=self.n_clusters, replace=False, p=p)].copy()
                else:
                    extra = {} if w is None else {"sample_weight": w}
                    centers, _ = kmeans_plusplus(X, self.n_clusters, random_state=int(rng.integers(_SEED_MAX)),
                                                 **extra)
            centers = np.array(centers, dtype=np.float64)
            self._counts = np.zeros(self.n_clusters)
            self._n_since_last_reassign = 0
            self.n_steps_ = 0
        else:
            centers = self._float64_centers().copy()
        rng = pass_rng(self._seed, _PARTIAL_FIT_STREAM, self.n_steps_)
        _, self._n_since_last_reassign = _minibatch_step(
            X, centers, self._counts, self._n_since_last_reassign, rng,
            reassignment_ratio=self.reassignment_ratio, sample_weight=w,
        )
        self._centers64 = centers
        self.cluster_centers_ = centers.astype(dtype)
        labels, mind = nearest_centre(X, centers)
        self.labels_ = labels
        self.inertia_ = float(mind.sum()) if w is None else float(mind @ w)
        self.n_steps_ += 1
        return self

    def _float64_centers(self) -> np.ndarray:
        """The centres in float64: the full-precision ones ``cluster_centers_`` was cast from,
        unless the attribute has been set to something else since."""
        attr = self.cluster_centers_
        prev = getattr(self, "_centers64", None)
        if prev is not None and prev.shape == attr.shape and np.array_equal(prev.astype(attr.dtype), attr):
            return prev
        return np.asarray(attr, dtype=np.float64)

    # --------------------------------------------------------------- predicting
    def predict(self, X):
        """Index of the nearest centre of each row, streaming over lazy input.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Rows to label.

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype=int32
            Cluster index of each row.
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        out = np.empty(source.n_samples, dtype=np.int32)
        for lo, _, d2 in self._iter_distances(source):
            out[lo : lo + d2.shape[0]] = host(namespace(d2).argmin(d2, axis=1))
        return out

    def transform(self, X):
        """Euclidean distances of each row to every centre, streaming over lazy input.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Rows to transform.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_clusters)
            Distances to the centres, float32 for float32 input, float64 otherwise.
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        out = np.empty((source.n_samples, self.cluster_centers_.shape[0]), dtype=output_dtype(source))
        for lo, _, d2 in self._iter_distances(source):
            out[lo : lo + d2.shape[0]] = host(namespace(d2).sqrt(d2))
        return out

    def score(self, X, y=None):
        """Opposite of the inertia of ``X`` with respect to the centres (exact).

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Rows to score.
        y : None
            Ignored.

        Returns
        -------
        score : float
            ``-sum ||x - nearest centre||^2``.
        """
        check_is_fitted(self)
        source = as_row_source(self, X, reset=False)
        total = 0.0
        for _, batch, d2 in self._iter_distances(source):
            diff = batch - like(batch, self._float64_centers())[namespace(d2).argmin(d2, axis=1)]
            total += float(sum_squares(diff))
        return -total

    def _iter_distances(self, source: RowSource):
        """``(offset, batch, squared distances to the centres)`` on the estimator's backend."""
        centers = self._float64_centers()
        centers_sq = np.einsum("ij,ij->i", centers, centers)
        for lo, batch in self._device_batches(source, np.float64):
            d2 = squared_distances(batch, like(batch, centers), like(batch, centers_sq))
            yield lo, batch, namespace(d2).clip(d2, min=0.0)

    @property
    def _n_features_out(self):
        return self.cluster_centers_.shape[0]
