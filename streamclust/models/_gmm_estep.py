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
  moves both to ``Y``), turned in place, mixture by mixture, into responsibilities and
  the log-likelihood of each row;
* ``Rᵀ [Y, Y²]``, of shape ``(K, 2 d)``: the first and second moments of every component,
  re-centred on each component's shift.

Each mixture's part of the pass keeps its own sums (:class:`~._gmm_stats.GMMStatsAccumulator`);
:class:`DiagEStep` only computes them together.  The terms are those of
:func:`~._gmm_stats.gmm_log_prob` and :meth:`~._gmm_stats.GMMSuffStats.accumulate`, added
in another order: a mixture fitted alone and the same mixture among others agree to
rounding.  What it gains (docs/benchmarks.md, "the diagonal mixtures' E-steps taken
together"): two wide products instead of four narrow ones per mixture and the batch
centred and squared once; on PyTorch about twenty operations a batch per mixture instead
of seventy.  A mixture alone keeps its own step (``GMMStatsAccumulator.update``), which
on two cores is faster for one: the wide products are what pays.
"""

from __future__ import annotations

import math

import numpy as np

from ..engine import weight_slice
from ..engine.arrays import empty, exp_, finite_or_zero, is_numpy, like, matmul, multiply, namespace, subtract
from ._parallel import blocks as split_blocks, map_blocks

__all__ = ["DIAGONAL", "DiagEStep", "stacked_model"]

#: the covariance types whose E-step and moments :class:`DiagEStep` computes
DIAGONAL = ("diag", "spherical")


def stacked_model(parts) -> tuple[np.ndarray, np.ndarray]:
    """``(W, c)`` of the module's docstring for the models of ``parts`` (float64, NumPy).

    ``parts`` have ``weights``, ``means``, ``precisions_cholesky`` and a ``covariance_type``
    in :data:`DIAGONAL`; ``W`` is ``(2 d, K)``, ``c`` is ``(K,)``, components in the parts' order.
    """
    d = parts[0].means.shape[1]
    columns, consts = [], []
    for part in parts:
        pc = part.precisions_cholesky
        if part.covariance_type == "spherical":
            log_det = d * np.log(pc)
            prec = np.repeat((pc**2)[:, None], d, axis=1)
        else:
            log_det = np.sum(np.log(pc), axis=1)
            prec = pc**2
        with np.errstate(divide="ignore"):
            log_w = np.log(part.weights)
        columns.append(np.concatenate([(part.means * prec).T, -0.5 * prec.T]))
        consts.append(-0.5 * (d * math.log(2 * math.pi) + np.sum(part.means**2 * prec, axis=1)) + log_det + log_w)
    return np.ascontiguousarray(np.concatenate(columns, axis=1)), np.concatenate(consts)


class DiagEStep:
    """The E-step of a batch for ``parts`` together (diagonal or spherical
    :class:`~._gmm_stats.GMMStatsAccumulator` fed the same rows with the same
    ``sample_weight``); each part's sums get what its own ``update`` would add.

    The stacked model is built once (on the host, float64) and copied to a batch's device
    once a pass, with the pass's other inputs (``_device_inputs``, see
    :func:`~streamclust.engine.arrays.to_device_all`).
    """

    def __init__(self, parts):
        self.parts = list(parts)
        for part in self.parts:
            part._in_joint_step = True  # its model crosses to a device stacked with the others'
        self.sample_weight = self.parts[0].sample_weight
        ends = np.cumsum([0] + [p.n_components for p in self.parts])
        self.bounds = [(int(lo), int(hi)) for lo, hi in zip(ends[:-1], ends[1:])]
        self._model_host = stacked_model(self.parts)
        self._dev = None
        self._work = None
        self._centred_W = None
        self._shift = None

    # -- the stacked model on the batch's device, once a pass ----------------------------
    def _device_inputs(self, X) -> list:
        if self._dev is not None and self._dev[0] == (str(X.device), str(X.dtype)):
            return []
        return list(self._model_host)

    def _take_device_inputs(self, X, tensors) -> None:
        self._dev = ((str(X.device), str(X.dtype)), tuple(tensors))

    def _model(self, X) -> tuple:
        if is_numpy(X):
            return self._model_host
        needed = self._device_inputs(X)
        if needed:  # not staged with a shared pass's other inputs
            self._take_device_inputs(X, [like(X, a) for a in needed])
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

    def _shifts(self, xp):
        """The parts' shifts stacked (float64, where their sums are), once a pass and device."""
        first = self.parts[0].shift
        if self._shift is None or getattr(self._shift, "device", None) != getattr(first, "device", None):
            self._shift = xp.concat([p.shift for p in self.parts])
        return self._shift

    # -- one batch -----------------------------------------------------------------------
    def update(self, X, offset: int = 0) -> None:
        if is_numpy(X):
            X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        if n == 0:
            return
        for part in self.parts:
            part._begin(X)  # the sums (and shifts) on the batch's device
        xp = namespace(X)
        g = xp.mean(X, axis=0)
        W, c = self._centred(X, g)
        K = W.shape[1]
        R, XX, tops, totals = self._buffers(X, K)  # R: log-densities, then responsibilities
        numpy = is_numpy(X)

        def e_step(lo: int, hi: int) -> None:  # rows lo:hi (the thread pool's blocks)
            Y = XX[lo:hi, :d]
            subtract(X[lo:hi], g, Y)
            multiply(Y, Y, XX[lo:hi, d:])
            Rb = R[lo:hi]
            matmul(XX[lo:hi], W, Rb)
            Rb += c
            with np.errstate(under="ignore", divide="ignore"):
                for j, (a, b) in enumerate(self.bounds):  # a log-sum-exp per mixture
                    seg = Rb[:, a:b]
                    top = finite_or_zero(xp.max(seg, axis=1, keepdims=True))
                    seg -= top
                    exp_(seg)
                    total = xp.sum(seg, axis=1, keepdims=True)
                    seg /= total
                    tops[lo:hi, j:j + 1] = top
                    totals[lo:hi, j:j + 1] = total

        map_blocks(e_step, split_blocks(n, 4.0 * n * d * K) if numpy else [(0, n)])
        with np.errstate(divide="ignore"):
            log_norm = xp.log(totals) + tops  # log p(x_i) under each mixture
        w = weight_slice(self.sample_weight, offset, n)
        if w is not None:
            R *= like(R, w)[:, None]
        nk = xp.sum(R, axis=0)
        M = empty((K, 2 * d), X)  # [R'Y, R'Y²]

        def moments(lo: int, hi: int) -> None:  # components lo:hi
            matmul(R[:, lo:hi].T, XX, M[lo:hi])

        map_blocks(moments, split_blocks(K, 4.0 * n * d * K) if numpy else [(0, K)])
        shift = self._shifts(xp)
        a = shift - like(shift, g)  # each component's shift from the batch mean, float64
        RY, RY2 = M[:, :d], M[:, d:]
        dsx = RY - nk[:, None] * a
        dsxx = RY2 - 2.0 * a * RY + nk[:, None] * a**2
        for j, (part, (lo, hi)) in enumerate(zip(self.parts, self.bounds)):
            part.nk += nk[lo:hi]
            part.sx += dsx[lo:hi]
            part.sxx += dsxx[lo:hi]
            part._count(X, log_norm[:, j], w)
