"""The exact PCA method: one pass accumulating the centred scatter matrix, then an eigensolver.

The scatter matrix ``C = sum (x - m)(x - m)^T`` is accumulated around a shift ``s``
(the first batch's mean, rounded to integers for integer pixels) as
``C_s = sum (x - s)(x - s)^T`` and ``S1 = sum (x - s)``, then corrected to the exact
mean: ``C = C_s - S1 S1^T / n``.  Only the upper triangle is accumulated, in slabs of
rows of ``C`` (``C[a:b, a:] += X_c[:, a:b]^T X_c[:, a:]``) computed by one thread per
core; the slabs are disjoint, so the result does not depend on the threads.

Integer pixels of 8 bits are centred on an integer shift, so ``x - s`` is an integer in
``[-255, 255]``: a float32 product over at most :data:`EXACT_F32_ROWS` rows sums
integers below ``2**24`` and is exact, and these partial products are added in float64.
The scatter matrix of 8-bit images is therefore *exact* (at float32 product speed);
other data are multiplied in float64.

The eigensolver: a full symmetric eigendecomposition (``scipy.linalg.eigh``) up to
:data:`EIGH_MAX_FEATURES` features, which gives scikit-learn's exact PCA at any
fraction of the variance; above that, a randomized subspace iteration on ``C`` in
memory (no further pass over the data), grown until the requested fraction of the
exactly known total variance is reached.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import linalg

from ._passes import pass_rng

__all__ = ["ScatterAccumulator", "CovariancePlan", "EIGH_MAX_FEATURES", "EXACT_F32_ROWS", "scatter_bytes"]

logger = logging.getLogger(__name__)

#: rows per float32 product of 8-bit data centred on integers: 256 * 255**2 < 2**24 (exact)
EXACT_F32_ROWS = 256
#: full ``eigh`` up to this many features (3,072: ~3 s on 2 cores; 4,096: ~8 s); a
#: randomized subspace iteration on the in-memory scatter matrix above
EIGH_MAX_FEATURES = 4096
#: columns of ``C`` per slab of the upper triangle
_SLAB = 256


def scatter_bytes(n_features: int, n_components: int) -> int:
    """Bytes the covariance method holds besides its batches.

    The float64 scatter matrix; up to :data:`EIGH_MAX_FEATURES` features the full
    ``eigh`` adds a copy of it and the eigenvectors, above it the subspace iteration
    adds a few ``d x l`` bases.
    """
    d = int(n_features)
    if d <= EIGH_MAX_FEATURES:
        return 3 * d * d * 8
    return d * d * 8 + 4 * d * (int(n_components) + 10) * 8


def _pool():
    from .pca import _map_blocks  # the PCA's thread pool: one thread per core, single-threaded BLAS

    return _map_blocks


def _slabs(d: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + _SLAB, d)) for lo in range(0, d, _SLAB)]


class ScatterAccumulator:
    """One pass: the shifted sums ``S1`` and the upper triangle of ``C_s`` (float64)."""

    name = "PCA scatter matrix"

    def __init__(self, n_features: int, shift: np.ndarray | None = None):
        d = int(n_features)
        self.has_shift = shift is not None
        self.shift = np.zeros(d) if shift is None else np.asarray(shift, dtype=np.float64)
        self.n = 0
        self.s1 = np.zeros(d)
        self.C = np.zeros((d, d))  # upper triangle valid

    def update(self, X: np.ndarray, offset: int) -> None:
        from .pca import _integer_sums, _representable_shift

        if not self.has_shift:
            self.shift = _representable_shift(X.mean(axis=0, dtype=np.float64), X.dtype)
            self.has_shift = True
        b, d = X.shape
        exact32 = X.dtype.kind in "iub" and X.dtype.itemsize == 1
        if exact32:
            Xc = np.subtract(X, self.shift.astype(np.float32), dtype=np.float32)
            step = EXACT_F32_ROWS
            s1, _ = _integer_sums(X, False)
            self.s1 += s1 - b * self.shift
        else:
            Xc = np.subtract(X, self.shift, dtype=np.float64)
            step = b
            self.s1 += Xc.sum(axis=0)
        C = self.C
        row_blocks = [(lo, min(lo + step, b)) for lo in range(0, b, step)]

        def slab(a: int, e: int) -> None:
            for lo, hi in row_blocks:
                part = Xc[lo:hi, a:e].T @ Xc[lo:hi, a:]
                C[a:e, a:] += part

        _pool()(slab, _slabs(d))
        self.n += b

    def _shift_to(self, new_shift: np.ndarray) -> None:
        """Re-express the sums around ``new_shift``: ``x - new = (x - old) + e``."""
        e = self.shift - new_shift
        s1, n = self.s1, self.n
        for a, b in _slabs(e.size):  # slab by slab: no d x d temporaries
            self.C[a:b] += np.outer(e[a:b], s1) + np.outer(s1[a:b], e) + n * np.outer(e[a:b], e)
        self.s1 += self.n * e
        self.shift = np.array(new_shift, dtype=np.float64, copy=True)

    def merge(self, other: "ScatterAccumulator") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.load_state_dict(other.state_dict())
            return
        o = ScatterAccumulator(self.shift.size)
        o.load_state_dict(other.state_dict())
        o._shift_to(self.shift)
        self.C += o.C
        self.s1 += o.s1
        self.n += o.n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, C)``: the exact mean and the full symmetric scatter matrix around it.

        Consumes the accumulator: its matrix becomes ``C`` in place, slab by slab (no
        second ``d x d`` array is ever allocated).
        """
        n, C, s1 = self.n, self.C, self.s1
        slabs = _slabs(C.shape[0])
        for i, (a, e) in enumerate(slabs):
            for b, f in slabs[:i]:  # lower blocks from the upper ones
                C[a:e, b:f] = C[b:f, a:e].T
            block = C[a:e, a:e]
            block[...] = np.triu(block) + np.triu(block, 1).T
        for a, e in slabs:
            C[a:e] -= np.outer(s1[a:e], s1 / n)
        self.C = None
        return self.shift + s1 / n, C

    def state_dict(self) -> dict:
        return {"has_shift": np.bool_(self.has_shift), "shift": self.shift, "n": np.int64(self.n),
                "s1": self.s1, "C": self.C}

    def load_state_dict(self, state: dict) -> None:
        self.has_shift = bool(state["has_shift"])
        self.shift = np.array(state["shift"], dtype=np.float64, copy=True)
        self.n = int(state["n"])
        self.s1 = np.array(state["s1"], dtype=np.float64, copy=True)
        self.C = np.array(state["C"], dtype=np.float64, copy=True)


def _k_for_fraction(eigvals: np.ndarray, total: float, fraction: float) -> int:
    """scikit-learn's rule: the fewest leading components whose ratio sum exceeds ``fraction``."""
    ratio = eigvals / total if total > 0 else np.zeros_like(eigvals)
    return int(np.searchsorted(np.cumsum(ratio), fraction, side="right") + 1)


def top_eigenpairs(C: np.ndarray, *, n_keep: int | None, fraction: float | None, cap: int,
                   seed: int, n_oversamples: int = 10, n_iter: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Leading eigenvalues (decreasing) and eigenvectors ``(d, k)`` of the symmetric ``C``.

    ``n_keep`` components, or enough for ``fraction`` of ``trace(C)`` (at most ``cap``).
    Up to :data:`EIGH_MAX_FEATURES` a full ``eigh``; above, a randomized subspace
    iteration in memory, its width doubled (warm-started) until the fraction is reached
    or ``cap`` components are computed.
    """
    d = C.shape[0]
    if d <= EIGH_MAX_FEATURES:
        w, V = linalg.eigh(C, overwrite_a=False, check_finite=False)
        order = np.argsort(w)[::-1]
        return np.maximum(w[order], 0.0), V[:, order]
    total = float(np.trace(C))
    want = cap if n_keep is None else min(int(n_keep), cap)
    width = min(d, (want if fraction is None else min(cap, 256)) + n_oversamples)
    rng = pass_rng(seed, 0)
    Q = linalg.qr(rng.standard_normal((d, width)), mode="economic")[0]
    while True:
        for _ in range(n_iter):
            Q = linalg.qr(C @ Q, mode="economic")[0]
        M = Q.T @ C @ Q
        w, V = linalg.eigh(0.5 * (M + M.T))
        order = np.argsort(w)[::-1]
        w, V = np.maximum(w[order], 0.0), Q @ V[:, order]
        usable = min(width - n_oversamples, cap) if width < d else width
        if fraction is None or width >= d or usable >= cap:
            return w, V
        if _k_for_fraction(w[:usable], total, fraction) <= usable:
            return w, V
        new_width = min(d, 2 * width, cap + n_oversamples)
        logger.info("PCA: %d components explain %.4f of the variance, less than %s; widening to %d",
                    usable, w[:usable].sum() / total if total > 0 else 0.0, fraction, new_width)
        extra = pass_rng(seed, width).standard_normal((d, new_width - width))
        Q = linalg.qr(np.hstack([V, extra]), mode="economic")[0]
        width = new_width


class CovariancePlan:
    """One pass accumulating the scatter matrix, then its leading eigenpairs.

    ``n_keep`` (an int) or ``fraction`` decides how many eigenvectors are kept (at most
    ``cap``); every eigenvalue that was computed is kept, for the variance figures.
    """

    def __init__(self, n_features: int, *, n_keep: int | None, fraction: float | None, cap: int, seed: int):
        self.d = int(n_features)
        self.n_keep, self.fraction, self.cap, self.seed = n_keep, fraction, int(cap), int(seed)
        self.done = False
        self.n = 0
        self.mean = np.zeros(self.d)
        self.scatter = np.zeros(self.d)
        self.eigvals = np.zeros(0)
        self.eigvecs = np.zeros((self.d, 0))
        self.projection_sink = None  # no sketch projections: the scores are computed from the data

    def next_pass(self):
        return None if self.done else ScatterAccumulator(self.d)

    def end_pass(self, acc: ScatterAccumulator) -> None:
        mean, C = acc.result()
        self.n, self.mean = acc.n, mean
        self.scatter = np.maximum(np.diag(C).copy(), 0.0)
        w, V = top_eigenpairs(C, n_keep=self.n_keep, fraction=self.fraction, cap=self.cap, seed=self.seed)
        del C
        total = float(self.scatter.sum())
        if self.n_keep is not None:
            keep = min(self.n_keep, self.cap)
        elif self.fraction is not None:
            keep = min(_k_for_fraction(w, total, self.fraction), self.cap, w.size)
        else:
            keep = min(self.cap, w.size)
        self.eigvals = w
        self.eigvecs = np.ascontiguousarray(V[:, :keep])
        self.done = True

    def state_dict(self) -> dict:
        return {"n": np.int64(self.n), "mean": self.mean, "scatter": self.scatter, "eigvals": self.eigvals,
                "eigvecs": self.eigvecs, "done": np.bool_(self.done)}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        self.mean = np.array(state["mean"], dtype=np.float64, copy=True)
        self.scatter = np.array(state["scatter"], dtype=np.float64, copy=True)
        self.eigvals = np.array(state["eigvals"], dtype=np.float64, copy=True)
        self.eigvecs = np.array(state["eigvecs"], dtype=np.float64, copy=True)
        self.done = bool(state["done"])
