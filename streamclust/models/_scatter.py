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

from ..engine import pass_rng
from ..engine.arrays import DeviceState, float64, host, is_numpy, like, namespace, numpy_dtype
from ..engine.backend import Backend, NUMPY, symmetric_eigh
from ._parallel import map_blocks

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


def _slabs(d: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + _SLAB, d)) for lo in range(0, d, _SLAB)]


class ScatterAccumulator(DeviceState):
    """One pass: the shifted sums ``S1`` and the upper triangle of ``C_s`` (float64).

    The triangle is held as slabs of rows, slab ``[a, e)`` holding ``C_s[a:e, a:]``: half
    the memory of the square matrix (600 MB at 12,288 features), and each slab its own
    allocation, so :meth:`result` can free them one by one.
    """

    name = "PCA scatter matrix"
    _device_state = ("s1", "slabs")

    def __init__(self, n_features: int, shift: np.ndarray | None = None):
        d = int(n_features)
        self.d = d
        self.has_shift = shift is not None
        self.shift = np.zeros(d) if shift is None else np.asarray(shift, dtype=np.float64)
        self.n = 0
        self.s1 = np.zeros(d)
        self.slabs = [np.zeros((e - a, d - a)) for a, e in _slabs(d)]

    def update(self, X: np.ndarray, offset: int) -> None:
        from .pca import _integer_sums, _representable_shift

        xp = namespace(X)
        f64 = float64(X)
        if not self.has_shift:
            self.shift = _representable_shift(host(xp.sum(X, axis=0, dtype=f64)) / X.shape[0], numpy_dtype(X))
            self.has_shift = True
        self._follow(X)
        b, d = X.shape
        exact32 = is_numpy(X) and X.dtype.kind in "iub" and X.dtype.itemsize == 1
        if exact32:
            Xc = np.subtract(X, self.shift.astype(np.float32), dtype=np.float32)
            step = EXACT_F32_ROWS
            s1, _ = _integer_sums(X, False)
            self.s1 += s1 - b * self.shift
        else:
            # (the exact method: float64 products on every backend and precision)
            Xc = np.subtract(X, self.shift, dtype=np.float64) if is_numpy(X) else xp.astype(X, f64) - like(X, self.shift, f64)
            step = b
            self.s1 += xp.sum(Xc, axis=0, dtype=f64)
        row_blocks = [(lo, min(lo + step, b)) for lo in range(0, b, step)]
        bounds = _slabs(d)

        def slab(i: int, _: int) -> None:
            a, e = bounds[i]
            out = self.slabs[i]
            for lo, hi in row_blocks:
                out += Xc[lo:hi, a:e].T @ Xc[lo:hi, a:]

        if is_numpy(X):
            map_blocks(slab, [(i, i + 1) for i in range(len(bounds))])
        else:
            for i in range(len(bounds)):
                slab(i, i + 1)
        self.n += b

    def _shift_to(self, new_shift: np.ndarray) -> None:
        """Re-express the sums around ``new_shift``: ``x - new = (x - old) + e``."""
        e = self.shift - new_shift
        s1, n = self.s1, self.n
        for (a, b), C in zip(_slabs(self.d), self.slabs):
            C += np.outer(e[a:b], s1[a:]) + np.outer(s1[a:b], e[a:]) + n * np.outer(e[a:b], e[a:])
        self.s1 += n * e
        self.shift = np.array(new_shift, dtype=np.float64, copy=True)

    def merge(self, other: "ScatterAccumulator") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.load_state_dict(other.state_dict())
            return
        o = ScatterAccumulator(self.d)
        o.load_state_dict(other.state_dict())
        o._shift_to(self.shift)
        for mine, theirs in zip(self.slabs, o.slabs):
            mine += theirs
        self.s1 += o.s1
        self.n += o.n

    def result(self, dtype=np.float64, *, consume: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, C)``: the exact mean and the full symmetric scatter matrix around it.

        ``C`` is built in ``dtype`` (float32 halves the memory of the eigensolver's
        products) slab by slab, each float64 slab freed once copied: the peak is the
        triangle plus the square in ``dtype``, never two float64 squares.  Consumes the
        accumulator, unless ``consume=False`` (``partial_fit``: the sums go on growing;
        each slab is then corrected in a temporary copy).
        """
        n, s1, d = self.n, self.s1, self.d
        C = np.empty((d, d), dtype=dtype)
        self.diagonal = np.empty(d)  # exact (float64) whatever ``dtype``: the total variance
        for i, (a, e) in enumerate(_slabs(d)):
            slab = self.slabs[i]
            if consume:
                slab -= np.outer(s1[a:e], s1[a:] / n)
            else:
                slab = slab - np.outer(s1[a:e], s1[a:] / n)
            self.diagonal[a:e] = np.diagonal(slab[:, : e - a])
            C[a:e, a:] = slab
            C[a:, a:e] = slab.T
            if consume:
                self.slabs[i] = None
            del slab
        if consume:
            self.slabs = []
        return self.shift + s1 / n, C

    def state_dict(self) -> dict:
        state = {"has_shift": np.bool_(self.has_shift), "shift": self.shift, "n": np.int64(self.n), "s1": self.s1}
        state.update({f"C{i}": c for i, c in enumerate(self.slabs)})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.has_shift = bool(state["has_shift"])
        self.shift = np.array(state["shift"], dtype=np.float64, copy=True)
        self.n = int(state["n"])
        self.s1 = np.array(state["s1"], dtype=np.float64, copy=True)
        self.d = self.s1.size
        self.slabs = [np.array(state[f"C{i}"], dtype=np.float64, copy=True) for i in range(len(_slabs(self.d)))]


def _k_for_fraction(eigvals: np.ndarray, total: float, fraction: float) -> int:
    """scikit-learn's rule: the fewest leading components whose ratio sum exceeds ``fraction``."""
    ratio = eigvals / total if total > 0 else np.zeros_like(eigvals)
    return int(np.searchsorted(np.cumsum(ratio), fraction, side="right") + 1)


def components_lower_bound(eigvals: np.ndarray, total: float, fraction: float) -> int:
    """A count of leading components that ``fraction`` of ``total`` needs *at least*.

    The variance still missing after the computed (decreasing) ``eigvals`` must come from
    further eigenvalues, none larger than the last computed one: so at least
    ``missing / eigvals[-1]`` more.  Never above the true count, so widening a sketch to
    it never overshoots.
    """
    lam = np.asarray(eigvals, dtype=np.float64)
    k = _k_for_fraction(lam, total, fraction)
    if k <= lam.size or lam.size == 0 or lam[-1] <= 0:
        return k
    missing = fraction * total - lam.sum()
    return int(lam.size + np.ceil(missing / lam[-1]))


def top_eigenpairs(C: np.ndarray, *, n_keep: int | None, fraction: float | None, cap: int,
                   seed: int, n_oversamples: int = 10, n_iter: int = 4,
                   backend: Backend = NUMPY) -> tuple[np.ndarray, np.ndarray]:
    """Leading eigenvalues (decreasing) and eigenvectors ``(d, k)`` of the symmetric ``C``.

    ``n_keep`` components, or enough for ``fraction`` of ``trace(C)`` (at most ``cap``).
    Up to :data:`EIGH_MAX_FEATURES` a full ``eigh`` (float64: exact); above, a randomized
    subspace iteration in memory, in ``C``'s dtype, started on 256 components for a
    fraction and widened, warm-started, while short of it: to a quarter wider at least,
    or to the count the fraction needs at least (:func:`components_lower_bound`).
    With a GPU ``backend`` the factorisations and products run there (same algorithm,
    same random starts); the results are NumPy arrays.
    """
    d = C.shape[0]
    gpu = backend.on_gpu
    if d <= EIGH_MAX_FEATURES:
        w, V = symmetric_eigh(C, backend) if gpu else linalg.eigh(C, overwrite_a=False, check_finite=False)
        order = np.argsort(w)[::-1]
        return np.maximum(w[order], 0.0), V[:, order]
    total = float(np.trace(C, dtype=np.float64))
    want = cap if n_keep is None else min(int(n_keep), cap)
    if gpu:
        import torch

        Cd = backend.asarray(C, dtype=getattr(torch, np.dtype(C.dtype).name))

        def qr(A):
            return torch.linalg.qr(A, mode="reduced")[0]

        def dev(a):
            return backend.asarray(a, dtype=Cd.dtype)

        def concat(parts):
            return torch.cat(parts, dim=1)
    else:
        Cd = C

        def qr(A):
            return linalg.qr(A, mode="economic", overwrite_a=True)[0]

        def dev(a):
            return np.asarray(a).astype(C.dtype)

        def concat(parts):
            return np.hstack(parts)

    def wide(k: int) -> int:  # a sketch for k components: the trailing Ritz values are the least accurate
        return min(d, k + max(n_oversamples, k // 8))

    width = wide(want if fraction is None else min(cap, 256))
    Q = qr(dev(pass_rng(seed, 0).standard_normal((d, width))))
    iters = n_iter
    while True:
        for _ in range(iters):
            Q = qr(Cd @ Q)
        M = host(Q.T @ (Cd @ Q)).astype(np.float64)
        w, V = symmetric_eigh(0.5 * (M + M.T), backend) if gpu else linalg.eigh(0.5 * (M + M.T))
        order = np.argsort(w)[::-1]
        w, V = np.maximum(w[order], 0.0), Q @ dev(V[:, order])
        usable = min(width - max(n_oversamples, width // 9), cap) if width < d else width
        if fraction is None or width >= d or usable >= cap:
            return w, host(V)
        if _k_for_fraction(w[:usable], total, fraction) <= usable:
            return w, host(V)
        need = components_lower_bound(w[:usable], total, fraction)
        new_width = min(wide(cap), max(wide(need), int(1.25 * width)))
        logger.info("PCA: %d components explain %.4f of the variance, less than %s; widening to %d",
                    usable, w[:usable].sum() / total if total > 0 else 0.0, fraction, new_width)
        extra = dev(pass_rng(seed, width).standard_normal((d, new_width - width)))
        Q = qr(concat([V, extra]))
        width = new_width
        iters = max(2, n_iter - 1)  # warm-started: the leading directions have converged already


class CovariancePlan:
    """One pass accumulating the scatter matrix, then its leading eigenpairs.

    ``n_keep`` (an int) or ``fraction`` decides how many eigenvectors are kept (at most
    ``cap``); every eigenvalue that was computed is kept, for the variance figures.
    """

    def __init__(self, n_features: int, *, n_keep: int | None, fraction: float | None, cap: int, seed: int,
                 backend: Backend = NUMPY):
        self.backend = backend  # where the eigendecomposition runs (not state)
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

    def end_pass(self, acc: ScatterAccumulator, *, consume: bool = True) -> None:
        # float64 for the exact eigh; above EIGH_MAX_FEATURES the subspace iteration runs in float32
        mean, C = acc.result(np.float64 if self.d <= EIGH_MAX_FEATURES else np.float32, consume=consume)
        self.n, self.mean = acc.n, mean
        self.scatter = np.maximum(acc.diagonal, 0.0)
        w, V = top_eigenpairs(C, n_keep=self.n_keep, fraction=self.fraction, cap=self.cap, seed=self.seed,
                              backend=self.backend)
        del C
        total = float(self.scatter.sum())
        if self.n_keep is not None:
            keep = min(self.n_keep, self.cap)
        elif self.fraction is not None:
            keep = min(_k_for_fraction(w, total, self.fraction), self.cap, w.size)
        else:
            keep = min(self.cap, w.size)
        self.eigvals = w
        self.eigvecs = np.ascontiguousarray(V[:, :keep], dtype=np.float64)
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
