"""One E-step for all the diagonal and spherical mixtures of a pass, on each batch.

A shared pass (select-k's candidates, a mixture's ``n_init`` models) feeds every batch to
many mixtures.  For diagonal and spherical covariances a mixture's E-step and its moments
are matrix products of the batch; here those of all the pass's mixtures (``K`` components
in all) are two products for the batch, whatever the number of mixtures (``Y`` is the
batch centred on its mean):

* ``[Y, Y²] @ W + c``, of shape ``(n, K)``: the weighted log-densities
  ``log w_k + log N(x_i | mu_k, diag(1 / p_k))`` of every component (for ``X`` itself,
  column ``k`` of ``W`` is ``mu_k p_k`` over ``-p_k / 2``, ``p_k`` the component's
  precisions, and ``c`` holds the terms without ``x``:
  ``-(d log 2 pi + sum mu_k² p_k) / 2 + log det + log w_k``; :meth:`DiagEStep._centred`
  moves both to ``Y``), turned in place, mixture by mixture (:class:`~streamclust.engine.arrays.Segments`),
  into responsibilities and the log-likelihood of each row;
* ``Rᵀ [Y, Y²]``, of shape ``(K, 2 d)``: the first and second moments of every component,
  re-centred on each component's shift.

Each mixture's part of the pass keeps its own sums (:class:`~._gmm_stats.GMMStatsAccumulator`);
while the pass feeds them, :class:`DiagEStep` holds them stacked (each batch adds to all of
them in a few operations) and splits them back into the parts when the engine settles the
pass (:func:`~streamclust.engine.settle`: before a checkpoint, a merge or the M-step).  The
terms are those of :func:`~._gmm_stats.gmm_log_prob` and
:meth:`~._gmm_stats.GMMSuffStats.accumulate`, added in another order: a mixture fitted
alone and the same mixture among others agree to rounding.  What it gains
(docs/benchmarks.md, "the diagonal mixtures' E-steps taken together"): two wide products
instead of four narrow ones per mixture and the batch centred and squared once; on
PyTorch about seventy operations a batch whatever the number of mixtures (each mixture's
own step: about seventy each), the log-sum-exps of all of them in a few
(:meth:`~streamclust.engine.arrays.Segments.softmax_`), and the model made on the device
from the stacked parameters.  On NumPy a mixture alone keeps its own step
(``GMMStatsAccumulator.update``), which on two cores is faster for one: the wide products
are what pays; on a device it takes such a step of its own, so that its sums and its M-step
stay there.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..engine import weight_slice
from ..engine.arrays import (Segments, empty, float64, host, is_numpy, like, matmul, multiply, namespace,
                             subtract, zeros)
from ._parallel import blocks as split_blocks, map_blocks

__all__ = ["DIAGONAL", "DiagEStep", "StackedMSteps", "stacked_parameters", "stacked_model"]

#: the covariance types whose E-step and moments :class:`DiagEStep` computes
DIAGONAL = ("diag", "spherical")


def stacked_parameters(parts) -> tuple:
    """``(log_weights (K,), means (K, d), precisions_cholesky (K, d))`` of ``parts`` stacked
    (float64; a spherical component's one value repeated over the ``d`` features), where the
    parts' models are: NumPy, or tensors of the device their last M-step ran on.

    ``parts`` have ``weights``, ``means``, ``precisions_cholesky`` and a ``covariance_type``
    in :data:`DIAGONAL`; components in the parts' order.
    """
    on = next((p.means for p in parts if not is_numpy(p.means)), None)  # a device's, if any part's is there
    xp = namespace(parts[0].means if on is None else on)

    def where(a):
        return a if on is None or not is_numpy(a) else like(on, a)

    d = parts[0].means.shape[1]
    with np.errstate(divide="ignore"):
        log_w = xp.log(xp.concat([where(p.weights) for p in parts]))
    pcs = [xp.broadcast_to(where(p.precisions_cholesky)[:, None], (p.n_components, d))
           if p.covariance_type == "spherical" else where(p.precisions_cholesky) for p in parts]
    return log_w, xp.concat([where(p.means) for p in parts]), xp.concat(pcs)


def stacked_model(log_w, means, pc) -> tuple:
    """``(W, c)`` of the module's docstring from :func:`stacked_parameters` (NumPy arrays or
    tensors of one device, float64): ``W`` is ``(2 d, K)``, ``c`` is ``(K,)``."""
    xp = namespace(means)
    d = means.shape[1]
    prec = pc * pc
    top = means * prec
    W = xp.concat([top.T, -0.5 * prec.T])
    if is_numpy(W):
        W = np.ascontiguousarray(W)
    log_det = xp.sum(xp.log(pc), axis=1)
    c = -0.5 * (d * math.log(2 * math.pi) + xp.sum(top * means, axis=1)) + log_det + log_w
    return W, c


class StackedMSteps:
    """The M-steps of a joint step's mixtures from their stacked sums on a device, taken
    together the first time one of them is asked for (:func:`~._gmm_stats.m_step`), in a
    few operations whatever the number of mixtures: the same elementwise arithmetic as
    each mixture's own, its weights normalised by a product with the one-hot matrix of its
    components (equal to its own sum to rounding).  :meth:`get` gives a mixture's
    ``(weights, means, covariances, precisions_cholesky)`` as views, or ``None`` when its
    parameters are not finite or a covariance not positive (its own M-step then says how).
    """

    def __init__(self, nk, sx, sxx, shifts, segments: Segments, spherical: list[bool]):
        self._sums = (nk, sx, sxx, shifts)
        self.segments = segments
        self.spherical = list(spherical)
        self._done: dict = {}

    def _all(self, reg_covar: float, eps: float):
        nk, sx, sxx, shift = self._sums
        xp = namespace(nk)
        ids, S = self.segments._on(nk)
        nk = nk + eps
        delta = sx / nk[:, None]
        means = shift + delta
        cov = sxx / nk[:, None] - delta**2 + reg_covar
        cov_sph = xp.mean(cov, axis=1) if any(self.spherical) else None
        weights = nk / (nk @ S)[ids]
        diag = [not s for s in self.spherical]
        # one flag a component: finite parameters, positive covariances (of either kind); the
        # components' failures counted per mixture, brought to the host in one copy
        checks = [xp.all(xp.isfinite(means), axis=1) & xp.isfinite(weights),
                  xp.all(cov > 0.0, axis=1) if any(diag) else None, cov_sph > 0.0 if cov_sph is not None else None]
        failed = host(xp.stack([(1.0 - c.to(S.dtype)) @ S for c in checks if c is not None]))  # (tensors only)
        failed = iter(failed)
        common, in_diag, in_sph = (next(failed) if c is not None else None for c in checks)
        good = [common[j] == 0 and (in_sph[j] == 0 if sph else in_diag[j] == 0)
                for j, sph in enumerate(self.spherical)]
        pc = 1.0 / xp.sqrt(cov) if any(diag) else None  # where not good, never handed out
        pc_sph = 1.0 / xp.sqrt(cov_sph) if cov_sph is not None else None
        return weights, means, (cov, pc), (cov_sph, pc_sph), good

    def get(self, j: int, reg_covar: float, eps: float):
        key = (float(reg_covar), float(eps))
        if key not in self._done:
            self._done[key] = self._all(reg_covar, eps)
        weights, means, diag, spherical, good = self._done[key]
        if not good[j]:
            return None
        lo, hi = self.segments.bounds[j]
        cov, pc = spherical if self.spherical[j] else diag
        return weights[lo:hi], means[lo:hi], cov[lo:hi], pc[lo:hi]


@functools.lru_cache(maxsize=16)
def _segments(sizes: tuple) -> Segments:
    """One :class:`Segments` per set of mixture sizes: a sweep's passes share its device indices."""
    return Segments(sizes)


class DiagEStep:
    """The E-step of a batch for ``parts`` together (diagonal or spherical
    :class:`~._gmm_stats.GMMStatsAccumulator` fed the same rows with the same
    ``sample_weight``); each part's sums get what its own ``update`` would add.

    The parts' sums are gathered into stacked arrays (``(K,)``, ``(K, d)`` twice, and a
    log-likelihood per mixture, float64, where the batches are) that take each batch in a
    few operations whatever the number of mixtures, and are split back into the parts by
    :meth:`to_host` (which the engine calls before a checkpoint and at the end of the pass,
    :func:`~streamclust.engine.settle`): each element is summed in the order of the parts'
    own sums, so where the split happens changes nothing.  On a device the parts keep their
    sums there, as views (their ``state_dict`` copies them to NumPy; the M-step of diagonal
    sums runs where they are, :func:`~._gmm_stats.m_step`), and their log-likelihoods come
    back in one copy.  The stacked model is made where the batches are, in float64, from the
    parts' stacked parameters (copied there once a pass with the pass's other inputs,
    ``_device_inputs``, see :func:`~streamclust.engine.arrays.to_device_all`; not copied
    when the last M-step left them there).
    """

    _inputs_keep_dtype = True  # the model is made in float64 on the device, then cast to the batches' dtype

    def __init__(self, parts):
        self.parts = list(parts)
        for part in self.parts:
            part._in_joint_step = True  # its model and sums cross to a device stacked with the others'
        self.sample_weight = self.parts[0].sample_weight
        self.segments = _segments(tuple(p.n_components for p in self.parts))
        self.bounds = self.segments.bounds
        self._params = stacked_parameters(self.parts)
        self._model_host = None
        self._nk = self._sx = self._sxx = self._ll = None
        self._dev = None
        self._work = None
        self._centred_W = None
        self._shift = None

    # -- the stacked sums: gathered from the parts, split back into them ------------------
    def _gather(self, X) -> None:
        """The parts' sums stacked where ``X`` is: zeros made there when no part has any yet
        (the start of a pass), else the parts' joined (and copied there if they are not)."""
        if self._nk is not None:
            return
        for part in self.parts:
            part._m_steps = None  # the sums go on: an M-step taken together before is not theirs
        if all(p.n_rows == 0 and float(p.log_likelihood) == 0.0 for p in self.parts):
            K, d, C = int(self._params[0].shape[0]), self.parts[0].n_features, len(self.parts)
            f64 = float64(X)
            self._nk, self._sx, self._sxx, self._ll = (zeros(shape, X, f64) for shape in ((K,), (K, d), (K, d), (C,)))
            return
        xp = namespace(self.parts[0].nk)
        sums = [xp.concat([getattr(p, name) for p in self.parts]) for name in ("nk", "sx", "sxx")]
        lls = np.array([float(p.log_likelihood) for p in self.parts])
        self._nk, self._sx, self._sxx, self._ll = (like(X, a, float64(X)) for a in (*sums, lls))

    def to_host(self) -> None:
        """Split the stacked sums back into the parts (views: the step lets go of them; on a
        device they stay there) with their log-likelihoods as floats (one copy); they are
        gathered again when a batch follows."""
        if self._nk is None:
            return
        lls = host(self._ll)
        together = None
        if not is_numpy(self._nk):  # the M-steps of all the parts in a few operations (StackedMSteps)
            shifts = self._shifts(None)
            together = StackedMSteps(self._nk, self._sx, self._sxx, shifts, self.segments,
                                     [p.covariance_type == "spherical" for p in self.parts])
        for j, (part, (lo, hi)) in enumerate(zip(self.parts, self.bounds)):
            part.nk, part.sx, part.sxx = self._nk[lo:hi], self._sx[lo:hi], self._sxx[lo:hi]
            part.log_likelihood = float(lls[j])
            if together is not None:
                if is_numpy(part.shift):
                    part.shift = shifts[lo:hi]  # the same values, where the sums are (the M-step runs there)
                part._m_steps = (together, j)
        self._nk = self._sx = self._sxx = self._ll = None

    # -- the stacked model where the batches are, once a pass -----------------------------
    def _device_inputs(self, X) -> list:
        """The stacked parameters, once a pass and device (:func:`stacked_model` makes the
        model of them there), unless they are there already (then taken at once)."""
        if self._dev is not None and self._dev[0] == (str(X.device), str(X.dtype)):
            return []
        if not is_numpy(self._params[1]):  # left on the device by the last M-step
            self._take_device_inputs(X, [like(X, a, float64(X)) for a in self._params])
            return []
        return list(self._params)

    def _take_device_inputs(self, X, tensors) -> None:
        log_w, means, pc = tensors  # float64: the model is made in it, the means are the sums' shifts
        W, c = stacked_model(log_w, means, pc)
        self._dev = ((str(X.device), str(X.dtype)), (like(X, W), like(X, c)), means)

    def _model(self, X) -> tuple:
        if is_numpy(X):
            if self._model_host is None:
                self._model_host = stacked_model(*self._params)
            return self._model_host
        needed = self._device_inputs(X)
        if needed:  # not staged with a shared pass's other inputs
            self._take_device_inputs(X, [like(X, a, float64(X)) for a in needed])
        return self._dev[1]

    def _buffers(self, X, K: int) -> list:
        """The batch's work arrays: ``(n, K)`` and ``(n, 2 d)`` (tens of MiB: allocated once a
        pass and reused, not mapped afresh for every batch), ``(n, mixtures)`` twice."""
        n, d = X.shape
        key = (str(X.dtype), str(getattr(X, "device", "cpu")))
        if self._work is None or self._work[0] != key or self._work[1].shape[0] < n:
            C = len(self.parts)
            self._work = (key, empty((n, K), X), empty((n, 2 * d), X), empty((n, C), X), empty((n, C), X))
        return [a[:n] for a in self._work[1:]]

    def _centred(self, X, g) -> tuple:
        """``(W, c)`` for the batch centred on its mean ``g``: with ``x = y + g``,
        ``x mu p - x² p / 2 = y (mu - g) p - y² p / 2 + (g mu p - g² p / 2)``, so the top half
        of ``W`` gains ``2 g`` times its bottom half and ``c`` gains ``g W_top + g² W_bottom``.
        The products then take ``Y = X - g`` and ``Y²`` (needed for the moments anyway),
        whose terms cancel less than those of ``X`` and ``X²``."""
        W, c = self._model(X)
        d = W.shape[0] // 2
        top, bottom = W[:d], W[d:]
        if self._centred_W is None or self._centred_W.dtype != W.dtype or \
                getattr(self._centred_W, "device", None) != getattr(W, "device", None):
            self._centred_W = empty(tuple(W.shape), W)  # kept: its bottom half is the model's
            self._centred_W[d:] = bottom
        centred = self._centred_W
        multiply(bottom, 2.0 * g[:, None], centred[:d])
        centred[:d] += top
        return centred, c + g @ top + (g * g) @ bottom

    def _shifts(self, xp=None):
        """The parts' shifts stacked (float64, where the sums are), once a pass and device:
        the stacked means when every part's moments are centred on its means (an EM pass)."""
        numpy = is_numpy(self._nk)
        if self._shift is None or is_numpy(self._shift) != numpy or \
                (not numpy and self._shift.device != self._nk.device):
            if all(getattr(p, "shift_is_means", False) for p in self.parts):
                self._shift = self._params[1] if numpy else self._dev[2]
            else:
                self._shift = like(self._nk, np.concatenate([p.shift for p in self.parts]))
        return self._shift

    # -- one batch -----------------------------------------------------------------------
    def update(self, X, offset: int = 0) -> None:
        if is_numpy(X):
            X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        if n == 0:
            return
        self._gather(X)
        xp = namespace(X)
        g = xp.mean(X, axis=0)
        W, c = self._centred(X, g)
        K = W.shape[1]
        R, XX, tops, totals = self._buffers(X, K)  # R: log-densities, then responsibilities
        numpy = is_numpy(X)
        seg = self.segments

        def e_step(lo: int, hi: int) -> None:  # rows lo:hi (the thread pool's blocks)
            Y = XX[lo:hi, :d]
            subtract(X[lo:hi], g, Y)
            multiply(Y, Y, XX[lo:hi, d:])
            Rb = R[lo:hi]
            matmul(XX[lo:hi], W, Rb)
            Rb += c
            with np.errstate(under="ignore", divide="ignore"):
                seg.softmax_(Rb, tops[lo:hi], totals[lo:hi])  # a log-sum-exp per mixture

        map_blocks(e_step, split_blocks(n, 4.0 * n * d * K) if numpy else [(0, n)])
        with np.errstate(divide="ignore"):
            log_norm = xp.log(totals) + tops  # log p(x_i) under each mixture, (n, mixtures)
        w = weight_slice(self.sample_weight, offset, n)
        if w is not None:
            R *= like(R, w)[:, None]
        nk = xp.sum(R, axis=0)
        M = empty((K, 2 * d), X)  # [R'Y, R'Y²]

        def moments(lo: int, hi: int) -> None:  # components lo:hi
            matmul(R[:, lo:hi].T, XX, M[lo:hi])

        map_blocks(moments, split_blocks(K, 4.0 * n * d * K) if numpy else [(0, K)])
        a = self._shifts(xp) - like(self._nk, g)  # each component's shift from the batch mean
        RY, RY2 = M[:, :d], M[:, d:]
        self._nk += nk
        self._sx += RY - nk[:, None] * a
        self._sxx += RY2 - 2.0 * a * RY + nk[:, None] * a**2
        self._ll += xp.sum(log_norm, axis=0) if w is None else like(log_norm, w) @ log_norm
        rows, weight = int(n), float(n) if w is None else float(np.sum(w))
        for part in self.parts:
            part.n_rows += rows
            part.weight_sum += weight
