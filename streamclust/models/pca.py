"""Streaming principal component analysis.

:class:`StreamingPCA` fits a PCA by streaming over an array (NumPy, zarr or dask)
``batch_size`` rows at a time.  Two methods:

``"randomized"``
    A randomized subspace iteration (Halko, Martinsson & Tropp, 2011) done in the
    *feature* space, so that nothing of size ``n_samples x k`` is ever held.  Each pass
    computes ``Z = C Q`` (``C`` the centred scatter matrix, ``Q`` a ``d x l``
    orthonormal basis) as ``sum_batches X_c.T @ (X_c @ Q)``; the first pass also
    computes the mean and the per-feature variance, exactly, with shifted sums
    (every product is done around a shift and corrected to the exact mean when the pass
    ends).  ``Q`` is re-orthonormalised (QR) between passes; the last pass gives the
    Rayleigh-Ritz matrix ``Q.T C Q = sum P.T @ P`` (``P = X_c @ Q``: half the products
    of the other passes) whose eigendecomposition yields the components.
    ``n_power_iter + 1`` passes in all.

    Integer pixels are read unconverted and centred (on an integer shift, exactly)
    straight into a reused buffer of the compute dtype; their sums are exact integer
    sums.  A large batch's products are split into blocks of rows (``X_c @ Q``) and of
    features (``X_c.T @ P``) computed by one thread per core with single-threaded BLAS,
    so the result does not depend on the number of threads.

``"incremental"``
    :class:`sklearn.decomposition.IncrementalPCA` fed the same chunks as
    ``IncrementalPCA(batch_size=max(batch_size, n_components)).fit`` would use (one pass).
"""

from __future__ import annotations

import logging
import warnings
from numbers import Integral

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.decomposition import IncrementalPCA
from sklearn.utils import gen_batches
from sklearn.utils.extmath import fast_logdet
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted

from ..engine.arrays import (as_dtype, DeviceState, empty, float64, host, is_numpy, like, matmul, namespace,
                             numpy_dtype, subtract, sum_squares)
from ..engine.backend import (Backend, document_parameters, NUMPY, PARAMETER_CONSTRAINTS as BACKEND_CONSTRAINTS,
                              qr_basis, symmetric_eigh)
from ..engine import (RowSource, StreamingMixin, as_row_source, draw_seed, fit_streaming, is_lazy_array, output_dtype,
                      pass_rng)
from ._parallel import blocks as split_blocks, map_blocks, single_threaded_blas

__all__ = ["StreamingPCA", "choose_method"]

logger = logging.getLogger(__name__)

#: components tracked first by the randomized method for a fraction of the variance (then doubled)
_FIRST_TRACKED = 256


def _flip_rows(components: np.ndarray) -> np.ndarray:
    """Sign convention of ``svd_flip(u_based_decision=False)``: the largest |entry| of each row is positive."""
    if components.size == 0:
        return components
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def _small_exact_dtype(dtype) -> bool:
    """True when every value of ``dtype`` is exactly a float32."""
    dtype = np.dtype(dtype)
    return (dtype.kind in "iub" and dtype.itemsize <= 2) or dtype in (np.float16, np.float32)


# --------------------------------------------------------------------------- randomized
def _orthonormal_basis(Z: np.ndarray, backend: Backend = NUMPY) -> np.ndarray:
    """An orthonormal basis of the columns of ``Z`` (Householder QR, single-threaded BLAS;
    on the backend's GPU when it has one).

    Householder QR of a tall, skinny matrix is mostly level-2 work: more threads gain
    little, and lose a lot when another process holds a core.
    """
    if backend.on_gpu:
        return qr_basis(Z, backend)
    with single_threaded_blas():
        return linalg.qr(Z, mode="economic")[0]


def _representable_shift(shift: np.ndarray, batch_dtype) -> np.ndarray:
    """``shift`` rounded so that centring a batch on it loses nothing to the shift itself.

    Integer batches are centred on the nearest integers (``x - s`` is then exact in
    float32 as well as float64); float batches on the shift rounded to their dtype.
    """
    batch_dtype = np.dtype(batch_dtype)
    if batch_dtype.kind in "iub":
        return np.round(shift)
    return np.asarray(shift).astype(batch_dtype).astype(np.float64)


def _integer_sums(X: np.ndarray, squares: bool):
    """Exact per-column sums (and sums of squares) of an integer batch, as float64."""
    kind, size = X.dtype.kind, X.dtype.itemsize
    top = 1 if kind == "b" else max(abs(int(np.iinfo(X.dtype).min)), int(np.iinfo(X.dtype).max))
    rows = X.shape[0]
    acc = np.int32 if rows * top < 2**31 else np.int64
    s1 = np.add.reduce(X, axis=0, dtype=acc).astype(np.float64)
    if not squares:
        return s1, None
    if size == 1:  # squares of 8-bit values fit 16 bits (unsigned for uint8/bool)
        Y = X.astype(np.uint16 if kind in "ub" else np.int16)
        np.multiply(Y, Y, out=Y)
        acc2 = np.int32 if rows * top * top < 2**31 else np.int64
    else:
        Y = X.astype(np.int64)
        np.multiply(Y, Y, out=Y)
        acc2 = np.int64
    s2 = np.add.reduce(Y, axis=0, dtype=acc2).astype(np.float64)
    return s1, s2


class _SketchAccumulator(DeviceState):
    """One pass of the randomized method: ``Z_s = sum (x - s)(x - s)^T Q`` and shifted moments.

    ``s`` is the pass's shift (the first batch's mean on the first pass, the mean rounded
    to the dtype the batches are centred in afterwards).  :meth:`result` corrects to the
    exact mean: ``Z = Z_s - S1 (S1^T Q) / n`` and ``sum (x - m)^2 = S2 - S1^2 / n`` with
    ``S1 = sum (x - s)``, ``S2 = sum (x - s)^2``.

    With ``rayleigh=True`` (the last pass) only the ``l x l`` matrix
    ``M_s = sum P^T P`` with ``P = (x - s) Q`` is accumulated (half the products of a
    power iteration): :meth:`result` then returns ``M = Q^T C Q = M_s - (Q^T S1)(S1^T Q) / n``
    in place of ``Z``.  ``projection_sink(offset, P)``, when set, receives each batch's
    ``P`` on that pass, computed in float64 (from the centred batch in the compute dtype).

    Integer batches (e.g. uint8 pixels, passed through unconverted) are centred on an
    integer shift, exactly, straight into a reused buffer of the compute dtype, and
    their sums ``S1``, ``S2`` are taken exactly in integer arithmetic.
    """

    _device_state = ("Zs", "s1", "s2")

    def __init__(self, Q: np.ndarray, shift: np.ndarray | None, compute_dtype, name: str, *, moments: bool = True,
                 rayleigh: bool = False, projection_sink=None):
        self.name = name
        self.moments = bool(moments)  # accumulate S2 (only the first pass needs it)
        self.rayleigh = bool(rayleigh)
        self.projection_sink = projection_sink
        self.Q = Q
        self._Qc = Q.astype(compute_dtype)
        self.compute_dtype = np.dtype(compute_dtype)
        d, l = Q.shape
        self.has_shift = shift is not None
        self.shift = np.zeros(d) if shift is None else np.asarray(shift, dtype=np.float64)
        self.n = 0
        self.Zs = np.zeros((l, l) if self.rayleigh else (d, l))
        self.s1 = np.zeros(d)
        self.s2 = np.zeros(d)
        self._buf: np.ndarray | None = None
        self._proj: np.ndarray | None = None

    def __getstate__(self) -> dict:
        # the work buffers and device copies are scratch space, not state: never pickled
        state = self.__dict__.copy()
        state["_buf"] = state["_proj"] = state["_dev"] = None
        return state

    def _buffers(self, X, centred: bool, cdt) -> tuple:
        """The centred batch ``(rows, d)`` (if ``centred``) and its projection ``(rows, l)``, reused."""
        rows, n_features = X.shape
        if self._proj is None or self._proj.shape[0] < rows or is_numpy(self._proj) != is_numpy(X):
            proj_dtype = np.float64 if self.projection_sink is not None else self.compute_dtype
            self._proj = empty((rows, self.Q.shape[1]), X, as_dtype(X, proj_dtype))
        if centred and (self._buf is None or self._buf.shape[0] < rows or is_numpy(self._buf) != is_numpy(X)
                        or self._buf.dtype != as_dtype(X, cdt)):
            self._buf = empty((rows, n_features), X, as_dtype(X, cdt))
        return (self._buf[:rows] if centred else None), self._proj[:rows]

    def _bases(self, X) -> tuple:
        """``Q`` in float64 and in the compute dtype, on the batch's device (copied once)."""
        if is_numpy(X):
            return self.Q, self._Qc
        if getattr(self, "_dev", None) is None:
            self._dev = (like(X, self.Q, float64(X)), like(X, self._Qc, as_dtype(X, self._Qc.dtype)))
        return self._dev

    def update(self, X, offset: int) -> None:
        xp = namespace(X)
        xdt = numpy_dtype(X)
        cdt = xdt if xdt.kind == "f" else self.compute_dtype  # dtype the batch is centred in
        if not self.has_shift:
            self.shift = _representable_shift(host(xp.sum(X, axis=0, dtype=float64(X))) / X.shape[0], xdt)
            self.has_shift = True
        self._follow(X)
        f64 = float64(X)
        shift64 = like(X, self.shift, f64)
        shift_c = like(X, self.shift, as_dtype(X, cdt))
        Q, Qc = self._bases(X)
        b, d = X.shape
        # float64 projections for the sink: the rows are centred in float64, block by block
        exact = self.projection_sink is not None
        Xc, P = self._buffers(X, not exact, cdt)
        integer = xdt.kind in "iub"
        moments = self.moments

        def rows_block(lo: int, hi: int):  # centre, project, column sums of rows lo:hi
            if exact:
                xc = xp.astype(X[lo:hi], f64) - shift64
                matmul(xc, Q, out=P[lo:hi])
            else:
                xc = Xc[lo:hi]
                subtract(X[lo:hi], shift_c, out=xc)  # never in place: X may be the caller's array
                matmul(xc, Qc, out=P[lo:hi])
            if integer:
                return _integer_sums(X[lo:hi], moments)
            s2 = sum_squares(xc, axis=0, dtype=np.float64) if moments else None
            return xp.sum(xc, axis=0, dtype=f64), s2

        work = 2.0 * b * d * Qc.shape[1]
        blocks = split_blocks(b, work) if is_numpy(X) else [(0, b)]
        for (lo, hi), (s1, s2) in zip(blocks, map_blocks(rows_block, blocks)):
            if integer:  # exact integer sums, shifted here
                rows = hi - lo
                self.s1 += s1 - rows * self.shift
                if moments:
                    self.s2 += s2 - 2.0 * self.shift * s1 + rows * self.shift**2
            else:
                self.s1 += s1
                if moments:
                    self.s2 += s2
        if self.rayleigh:
            P64 = xp.astype(P, f64)
            self.Zs += P64.T @ P64
        else:
            Zs = self.Zs

            def features_block(lo: int, hi: int):  # rows lo:hi of Z (disjoint: no reduction)
                Zs[lo:hi] += Xc[:, lo:hi].T @ P

            map_blocks(features_block, split_blocks(d, work) if is_numpy(X) else [(0, d)])
        if self.projection_sink is not None:
            self.projection_sink(offset, host(P))
        self.n += b

    def _shift_to(self, new_shift: np.ndarray) -> None:
        """Re-express the shifted sums around ``new_shift`` (exact algebra)."""
        e = self.shift - new_shift  # (x - new) = (x - old) + e
        n = self.n
        eQ = e @ self.Q
        s1Q = self.s1 @ self.Q
        if self.rayleigh:  # P_new = P_old + 1 (e Q)
            self.Zs += np.outer(eQ, s1Q) + np.outer(s1Q, eQ) + n * np.outer(eQ, eQ)
        else:
            self.Zs += np.outer(e, s1Q) + np.outer(self.s1, eQ) + n * np.outer(e, eQ)
        self.s2 += 2.0 * e * self.s1 + n * e * e
        self.s1 += n * e
        self.shift = np.array(new_shift, dtype=np.float64, copy=True)

    def merge(self, other: "_SketchAccumulator") -> None:
        """Add the sums of an accumulator that saw other batches (same ``Q``)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.load_state_dict(other.state_dict())
            return
        other = _SketchAccumulator(
            other.Q, None, other.compute_dtype, other.name, moments=other.moments, rayleigh=other.rayleigh
        )._copy_from(other)
        other._shift_to(self.shift)
        self.Zs += other.Zs
        self.s1 += other.s1
        self.s2 += other.s2
        self.n += other.n

    def _copy_from(self, other: "_SketchAccumulator") -> "_SketchAccumulator":
        self.load_state_dict(other.state_dict())
        return self

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, scatter_diag, Z)`` around the exact mean (``M = Q^T C Q`` for ``rayleigh``)."""
        n = self.n
        mean = self.shift + self.s1 / n
        scatter = np.maximum(self.s2 - self.s1**2 / n, 0.0)
        s1Q = self.s1 @ self.Q
        if self.rayleigh:
            Z = self.Zs - np.outer(s1Q, s1Q / n)
        else:
            Z = self.Zs - np.outer(self.s1, s1Q / n)
        return mean, scatter, Z

    def state_dict(self) -> dict:
        return {
            "has_shift": np.bool_(self.has_shift),
            "shift": self.shift,
            "n": np.int64(self.n),
            "Zs": self.Zs,
            "s1": self.s1,
            "s2": self.s2,
        }

    def load_state_dict(self, state: dict) -> None:
        self.has_shift = bool(state["has_shift"])
        self.shift = np.array(state["shift"], dtype=np.float64, copy=True)
        self.n = int(state["n"])
        self.Zs = np.array(state["Zs"], dtype=np.float64, copy=True)
        self.s1 = np.array(state["s1"], dtype=np.float64, copy=True)
        self.s2 = np.array(state["s2"], dtype=np.float64, copy=True)


class _RandomizedPCAPlan:
    """``n_power_iter + 1`` passes of subspace iteration on the covariance, then Rayleigh-Ritz.

    The last pass accumulates only ``Q^T C Q`` (see :class:`_SketchAccumulator`);
    ``projection_sink``, when set, receives that pass's projections ``(x - s) Q`` batch by
    batch (``s`` = :attr:`last_shift`, ``Q`` = the final :attr:`Q`).
    """

    def __init__(self, n_features, n_track, n_power_iter, seed, compute_dtype, batch_dtype, *,
                 n_oversamples=10, fraction=None, cap=None, min_width=0, backend: Backend = NUMPY):
        self.backend = backend  # where the dense linear algebra between passes runs (not state)
        self.n_power_iter = int(n_power_iter)
        self.compute_dtype = np.dtype(compute_dtype)
        self.batch_dtype = np.dtype(batch_dtype)
        self.seed = int(seed)
        self.pass_index = 0
        self.d = int(n_features)
        self.n_oversamples = int(n_oversamples)
        # components tracked; with a fraction, grown (up to ``cap``) until they explain it
        self.n_track = int(n_track)
        self.fraction = fraction
        self.cap = int(cap if cap is not None else n_track)
        self.round = 0
        self.min_width = int(min_width)  # e.g. every sample: the sketch then spans the data, exactly
        G = pass_rng(self.seed, 0).standard_normal((self.d, self._width()))
        self.Q = _orthonormal_basis(G, backend)
        self.n = 0
        self.mean = np.zeros(n_features)
        self.scatter = np.zeros(n_features)
        self.eigvals = np.zeros(0)
        self.eigvecs = np.zeros((n_features, 0))
        self.last_shift = np.zeros(n_features)
        self.done = False
        self.projection_sink = None

    def _width(self) -> int:
        return min(max(self.n_track + self.n_oversamples, self.min_width), self.d)

    def _short_of_fraction(self) -> bool:
        """Whether the tracked components explain less than the fraction, and more may be tracked."""
        if self.fraction is None or self.n_track >= self.cap:
            return False
        total = float(self.scatter.sum())
        lam = self.eigvals[: self.n_track]
        return total > 0 and int(np.searchsorted(np.cumsum(lam) / total, self.fraction, side="right")) >= lam.size

    def next_pass(self):
        if self.done:
            return None
        shift = None
        if self.pass_index > 0:
            shift = _representable_shift(self.mean, self.batch_dtype)
        last = self.pass_index >= self.n_power_iter
        if self.pass_index == 0:
            name = "PCA mean + power iteration 1" if self.n_power_iter else "PCA mean + projection"
        elif not last:
            name = f"PCA power iteration {self.pass_index + 1}"
        else:
            name = "PCA projection"
        return _SketchAccumulator(self.Q, shift, self.compute_dtype, name, moments=self.pass_index == 0,
                                  rayleigh=last, projection_sink=self.projection_sink if last else None)

    def end_pass(self, acc: _SketchAccumulator) -> None:
        mean, scatter, Z = acc.result()
        if self.pass_index == 0:
            self.n, self.mean, self.scatter = acc.n, mean, scatter
        if self.pass_index < self.n_power_iter:
            self.Q = _orthonormal_basis(Z, self.backend)
        else:
            M = 0.5 * (Z + Z.T)
            w, V = symmetric_eigh(M, self.backend) if self.backend.on_gpu else linalg.eigh(M)
            order = np.argsort(w)[::-1]
            self.eigvals = np.maximum(w[order], 0.0)
            self.eigvecs = self.Q @ V[:, order]
            self.last_shift = acc.shift.copy()
            self.done = True
            if self._short_of_fraction():
                self._grow()
                return
        self.pass_index += 1

    def _grow(self) -> None:
        """Track twice the components, or as many as the fraction needs at least (at most
        ``cap``), warm-started from the Ritz vectors.

        The mean pass is not repeated: the next passes are ``n_power_iter`` power
        iterations (the last of them the Rayleigh-Ritz pass) on the wider basis.
        """
        from ._scatter import components_lower_bound

        old = self.n_track
        need = components_lower_bound(self.eigvals[:old], float(self.scatter.sum()), self.fraction)
        self.n_track = min(self.cap, max(need, 2 * self.n_track))
        self.round += 1
        extra = pass_rng(self.seed, 0, self.round).standard_normal((self.d, self._width() - self.eigvecs.shape[1]))
        self.Q = _orthonormal_basis(np.hstack([self.eigvecs, extra]), self.backend)
        logger.info("PCA: %d components explain %.4f of the variance, less than %s: tracking %d",
                    old, self.eigvals[:old].sum() / self.scatter.sum(), self.fraction, self.n_track)
        self.pass_index = 1
        self.done = False

    def state_dict(self) -> dict:
        return {
            "seed": np.int64(self.seed),
            "pass_index": np.int64(self.pass_index),
            "Q": self.Q,
            "n": np.int64(self.n),
            "mean": self.mean,
            "scatter": self.scatter,
            "eigvals": self.eigvals,
            "eigvecs": self.eigvecs,
            "last_shift": self.last_shift,
            "done": np.bool_(self.done),
            "n_track": np.int64(self.n_track),
            "round": np.int64(self.round),
        }

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.pass_index = int(state["pass_index"])
        self.Q = np.array(state["Q"], dtype=np.float64, copy=True)
        self.n = int(state["n"])
        self.mean = np.array(state["mean"], dtype=np.float64, copy=True)
        self.scatter = np.array(state["scatter"], dtype=np.float64, copy=True)
        self.eigvals = np.array(state["eigvals"], dtype=np.float64, copy=True)
        self.eigvecs = np.array(state["eigvecs"], dtype=np.float64, copy=True)
        self.last_shift = np.array(state.get("last_shift", np.zeros_like(self.mean)), dtype=np.float64, copy=True)
        self.done = bool(state["done"])
        self.n_track = int(state.get("n_track", self.n_track))
        self.round = int(state.get("round", 0))


# ------------------------------------------------------------------------- the choice
#: ``method="auto"`` uses the exact covariance method up to this many features (64x64 RGB):
#: its scatter matrix is then at most 1.2 GB
COVARIANCE_MAX_FEATURES = 12288
#: fewer samples than features, up to this many: the randomized sketch is as wide as the
#: samples (exact PCA, e.g. 400 face photos of 12,288 pixels)
SPAN_ALL_MAX_SAMPLES = 2048


#: float64 ``d x l`` arrays the randomized method holds: ``Q``, ``Z``, the float32 copy of ``Q``
#: (counted as one) and the Ritz vectors
_RANDOMIZED_BASES = 4


def randomized_bytes(n_features: int, n_track: int) -> int:
    """Bytes the randomized method holds besides its batches (its ``d x (k + 10)`` bases)."""
    return _RANDOMIZED_BASES * int(n_features) * (int(n_track) + 10) * 8


def randomized_max_components(n_features: int, room: int) -> int:
    """The most components whose randomized bases fit in ``room`` bytes (inverse of :func:`randomized_bytes`)."""
    return int(room // (_RANDOMIZED_BASES * int(n_features) * 8)) - 10


def choose_method(n_samples: int, n_features: int, n_components, *, n_power_iter: int = 3,
                  max_bytes: int | None = None) -> str:
    """The PCA method ``method="auto"`` runs: ``"covariance"`` (exact) or ``"randomized"``.

    The exact method costs one pass of ``n d^2 / 2`` multiply-adds (the upper triangle)
    and an eigensolver; the randomized one ``n_power_iter + 1`` passes of ``2 n d l``
    (``l`` the sketch width; the last pass half that).  Measured (docs/benchmarks.md, real images): for a fraction of the
    variance or all components the exact method wins whenever its ``d x d`` matrix fits,
    and it needs no guess at the number of components.  For a fixed, small number of
    components the randomized one does fewer operations.  With fewer samples than
    features (up to :data:`SPAN_ALL_MAX_SAMPLES`) the randomized sketch is widened to
    every sample, which makes it exact too, at less memory.
    """
    n, d = int(n_samples), int(n_features)
    from ._scatter import scatter_bytes

    k = n_components if isinstance(n_components, Integral) else None
    cov_bytes = scatter_bytes(d, k if k is not None else min(n, d))
    if d > COVARIANCE_MAX_FEATURES or n < d or (max_bytes is not None and cov_bytes > max_bytes):
        return "randomized"
    if k is not None:
        l = min(k + 10, d)
        # multiply-adds: a power pass does 2 n d l, the last pass n d l; eigh ~ 5 d^3
        randomized = (2 * int(n_power_iter) + 1) * float(n) * d * l
        covariance = float(n) * d * d / 2 + (5.0 * d**3 if d <= 4096 else 5.0 * d * d * l)
        return "covariance" if covariance <= randomized else "randomized"
    return "covariance"


# -------------------------------------------------------------------------- incremental
_IPCA_ATTRS = (
    "components_",
    "singular_values_",
    "mean_",
    "var_",
    "explained_variance_",
    "explained_variance_ratio_",
    "noise_variance_",
    "n_samples_seen_",
    "n_components_",
)


class _IncrementalAccumulator:
    """Feeds :meth:`IncrementalPCA.partial_fit` the chunks ``gen_batches(n, chunk, min_batch_size=k)``.

    Rows are buffered until a chunk is complete, so a short last batch is merged with
    the previous chunk and every call sees at least ``k`` rows.
    """

    name = "incremental PCA"

    def __init__(self, n_samples: int, n_features: int, n_components: int, chunk: int):
        self.n_features = int(n_features)
        self.n_components = int(n_components)
        self.ends = np.array(
            [s.stop for s in gen_batches(int(n_samples), int(chunk), min_batch_size=self.n_components)],
            dtype=np.int64,
        )
        self.ipca = IncrementalPCA(n_components=self.n_components)
        self._buf: list[np.ndarray] = []
        self._buf_rows = 0
        self.fed = 0  # rows already passed to partial_fit
        self.next_chunk = 0

    def update(self, X: np.ndarray, offset: int) -> None:
        X = host(X)  # the incremental method runs with NumPy
        self._buf.append(X)
        self._buf_rows += X.shape[0]
        while self.next_chunk < self.ends.size and self.fed + self._buf_rows >= self.ends[self.next_chunk]:
            size = int(self.ends[self.next_chunk] - self.fed)
            data = self._buf[0] if len(self._buf) == 1 else np.concatenate(self._buf)
            with np.errstate(divide="ignore", invalid="ignore"):
                self.ipca.partial_fit(data[:size])  # copies (copy=True): caller's rows untouched
            rest = data[size:]
            self._buf = [rest] if rest.shape[0] else []
            self._buf_rows = rest.shape[0]
            self.fed += size
            self.next_chunk += 1

    def state_dict(self) -> dict:
        buf = np.concatenate(self._buf) if self._buf else np.zeros((0, self.n_features))
        state = {
            "buf": buf,
            "fed": np.int64(self.fed),
            "next_chunk": np.int64(self.next_chunk),
            "fitted": np.bool_(hasattr(self.ipca, "components_")),
        }
        if state["fitted"]:
            for attr in _IPCA_ATTRS:
                state[attr] = np.asarray(getattr(self.ipca, attr))
        return state

    def load_state_dict(self, state: dict) -> None:
        buf = np.array(state["buf"], copy=True)
        self._buf = [buf] if buf.shape[0] else []
        self._buf_rows = buf.shape[0]
        self.fed = int(state["fed"])
        self.next_chunk = int(state["next_chunk"])
        self.ipca = IncrementalPCA(n_components=self.n_components)
        if bool(state["fitted"]):
            for attr in _IPCA_ATTRS:
                value = np.array(state[attr], copy=True)
                if value.ndim == 0:
                    value = value[()]
                    if attr == "n_components_":
                        value = int(value)
                setattr(self.ipca, attr, value)
            self.ipca.n_features_in_ = self.n_features


class _IncrementalPCAPlan:
    def __init__(self, n_samples, n_features, n_components, chunk):
        self.args = (int(n_samples), int(n_features), int(n_components), int(chunk))
        self.done = False
        self.result: dict = {}

    def next_pass(self):
        return None if self.done else _IncrementalAccumulator(*self.args)

    def end_pass(self, acc: _IncrementalAccumulator) -> None:
        ipca = acc.ipca
        self.result = {attr: np.asarray(getattr(ipca, attr)) for attr in _IPCA_ATTRS}
        self.done = True

    def state_dict(self) -> dict:
        state = {"done": np.bool_(self.done)}
        state.update({f"result_{k}": v for k, v in self.result.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state["done"])
        self.result = {
            k[len("result_") :]: np.array(v, copy=True) for k, v in state.items() if k.startswith("result_")
        }


# ---------------------------------------------------------------------------- estimator
@document_parameters(precision=False)
class StreamingPCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, StreamingMixin, BaseEstimator):
    """Principal component analysis of data streamed from NumPy, zarr or dask arrays.

    The data are read ``batch_size`` rows at a time and never materialised; image stacks
    of shape ``(n_samples, h, w, c)`` are flattened per batch.  The fitted attributes
    follow :class:`sklearn.decomposition.PCA`.

    Parameters
    ----------
    n_components : int, float, "mle" or None, default=None
        Number of components to keep.  ``None`` keeps ``min(n_samples, n_features)``; an
        int must lie in ``[0, min(n_samples, n_features)]`` (``[1, ...]`` for the
        randomized and incremental methods, as scikit-learn's randomized solver and
        IncrementalPCA; 0 keeps the mean and the noise variance only); a float in
        ``(0, 1)`` keeps the smallest number of components whose explained variance
        ratio exceeds it (scikit-learn's rule), at most ``max_components``; ``"mle"``
        Minka's estimate, as :class:`~sklearn.decomposition.PCA` (the covariance method,
        ``n_samples >= n_features``).
    method : {"auto", "covariance", "randomized", "incremental"}, default="auto"
        ``"covariance"``: exact; one pass accumulating the centred scatter matrix in
        float64 (exactly, for 8-bit pixels), then its eigendecomposition: the same
        components and explained variances as :class:`sklearn.decomposition.PCA`, at
        any fraction of the variance.  ``"randomized"``: streaming randomized subspace
        iteration on the covariance (``n_power_iter + 1`` passes; with fewer samples than
        features, up to 2,048, the sketch spans them all and is exact); for a fraction it
        tracks 256 components first and doubles them (warm-started, ``n_power_iter``
        passes each time) until they explain the fraction.  ``"incremental"``: one
        pass of :class:`~sklearn.decomposition.IncrementalPCA`.  ``"auto"`` chooses
        between the first two by the shape (:func:`choose_method`): ``"covariance"``
        up to 12,288 features (64x64 RGB) unless a small fixed ``n_components`` makes
        the randomized passes cheaper, or there are fewer samples than features (up to
        2,048 samples the sketch then spans them all, which makes it exact).  The
        method run is in ``method_``.
    batch_size : int, default=1024
        Rows read per batch.  With ``"incremental"`` the chunks given to ``partial_fit``
        hold ``max(batch_size, n_components)`` rows (the last chunk, if shorter than
        ``n_components``, is merged with the previous one).
    n_oversamples : int, default=10
        Extra sketch columns of the randomized method (sketch width
        ``l = min(n_components + n_oversamples, n_features)``).
    n_power_iter : int, default=3
        Power (subspace) iterations of the randomized method; each costs one pass.
    max_components : int or None, default=None
        When ``n_components`` is a float, the most components it may keep; ``None``
        means ``min(n_samples, n_features)``: as many as the fraction needs.  When
        the cap stops short of the fraction a ``UserWarning`` says so (asked, reached,
        with how many).  Ignored for an int or ``None`` ``n_components``.
    whiten : bool, default=False
        Scale the projections to unit variance in :meth:`transform`.
    random_state : int, RandomState instance or None, default=None
        Seeds the random sketch of the randomized method.  Pass an int for reproducible
        (and resumable with a fresh estimator) fits.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the big matrix products of the randomized method (the sums are
        always accumulated in float64).  With ``"float32"``, integer pixels up to 16 bits
        and float32 data are also read as float32 batches.  It is also the precision of
        the PyTorch backend's products.
    {backend_parameters}

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_features)
        Principal axes, by decreasing explained variance; the sign makes the largest
        absolute entry of each axis positive.
    explained_variance_ : ndarray of shape (n_components_,)
        Variance explained by each component (``ddof=1``).
    explained_variance_ratio_ : ndarray of shape (n_components_,)
        Fraction of the total variance explained by each component.
    singular_values_ : ndarray of shape (n_components_,)
        Singular values of the centred data matrix.
    mean_ : ndarray of shape (n_features,)
        Per-feature mean.
    n_components_ : int
        Number of components kept.
    method_ : str
        The method that was run (``"auto"`` resolved).
    n_samples_ : int
        Number of rows fitted.
    noise_variance_ : float
        Average variance of the discarded directions (probabilistic PCA model), from
        the exact total variance; 0 when all components are kept.
    n_samples_seen_ : int
        Rows seen by :meth:`partial_fit` (and by ``fit`` with ``method="incremental"``).
    var_ : ndarray of shape (n_features,)
        Per-feature variance (``ddof=0``), ``method="incremental"`` only: the state
        IncrementalPCA's :meth:`partial_fit` goes on from.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when the input had string column names.

    See Also
    --------
    sklearn.decomposition.PCA : In-memory PCA.
    sklearn.decomposition.IncrementalPCA : The incremental method.

    Notes
    -----
    Memory (``d = n_features``, ``b = batch_size``, ``l`` the sketch width, ``k``
    the number of components): ``"randomized"`` holds the basis ``Q`` and the product
    ``Z`` (``2 d l`` float64) plus per-batch temporaries of ``b d`` and ``b l`` values
    in ``dtype``; nothing grows with ``n_samples``.  ``"covariance"`` holds the ``d x d``
    float64 scatter matrix (75 MB for 32x32 RGB, 1.2 GB for 64x64 RGB) and, up to 4,096
    features, the eigensolver's copy of it.  ``"incremental"`` holds up to two
    chunks of ``max(b, k)`` rows and the SVD of a ``(k + chunk + 1) x d`` matrix.

    The randomized method's accuracy is that of a randomized SVD with
    ``n_power_iter`` power iterations; the mean and the total variance (hence
    ``explained_variance_ratio_`` and ``noise_variance_``) are exact.  The fit can be
    checkpointed and resumed at batch granularity with
    :func:`streamclust.engine.fit_streaming`.

    The float attributes are float32 for float32 input (NumPy, zarr or dask) and float64
    otherwise, as scikit-learn keeps them; the sums behind them are float64 either way.

    :meth:`partial_fit` updates a model with new rows (a store that grows), as
    :meth:`IncrementalPCA.partial_fit`: exactly with the covariance method (its sums
    merge), IncrementalPCA's merge with the incremental one.  :meth:`score`,
    :meth:`score_samples`, :meth:`get_covariance` and :meth:`get_precision` are those of
    scikit-learn's probabilistic PCA model, the scores streamed batch by batch.

    References
    ----------
    N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with randomness:
    probabilistic algorithms for constructing approximate matrix decompositions",
    SIAM Review 53(2), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from streamclust.models.pca import StreamingPCA
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 20))
    >>> pca = StreamingPCA(n_components=3, batch_size=128, random_state=0).fit(X)
    >>> pca.components_.shape
    (3, 20)
    >>> bool(pca.explained_variance_ratio_.sum() > 0.999)
    True
    >>> pca.transform(X[:2]).shape
    (2, 3)
    """

    _parameter_constraints: dict = {
        "n_components": [
            Interval(Integral, 0, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
            StrOptions({"mle"}),
            None,
        ],
        "method": [StrOptions({"auto", "covariance", "randomized", "incremental"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_oversamples": [Interval(Integral, 0, None, closed="left")],
        "n_power_iter": [Interval(Integral, 0, None, closed="left")],
        "max_components": [Interval(Integral, 1, None, closed="left"), None],
        "whiten": ["boolean"],
        "random_state": ["random_state"],
        "dtype": [StrOptions({"float32", "float64"})],
        "backend": BACKEND_CONSTRAINTS["backend"],
        "device": BACKEND_CONSTRAINTS["device"],
    }

    _precision_param = "dtype"  # the products' dtype on every backend

    def __init__(
        self,
        n_components=None,
        *,
        method="auto",
        batch_size=1024,
        n_oversamples=10,
        n_power_iter=3,
        max_components=None,
        whiten=False,
        random_state=None,
        dtype="float32",
        backend="auto",
        device="auto",
    ):
        self.n_components = n_components
        self.method = method
        self.batch_size = batch_size
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.max_components = max_components
        self.whiten = whiten
        self.random_state = random_state
        self.dtype = dtype
        self.backend = backend
        self.device = device

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
        self : StreamingPCA
            The fitted estimator.
        """
        self.__dict__.pop("_partial", None)  # a fit starts afresh: no partial_fit sums
        return fit_streaming(self, X)

    def _cap(self, n_samples: int, n_features: int) -> int:
        """The most components a fractional ``n_components`` may keep."""
        limit = min(n_samples, n_features)
        return limit if self.max_components is None else min(limit, int(self.max_components))

    def _n_tracked(self, n_samples: int, n_features: int) -> int:
        """Components computed first (a fraction may grow them, up to :meth:`_cap`)."""
        limit = min(n_samples, n_features)
        k = self.n_components
        if k is None:
            return limit
        if k == "mle":  # Minka's rule on the whole spectrum: the exact method only
            method = self._resolved_method(n_samples, n_features)
            if method != "covariance":
                raise ValueError(f"n_components='mle' cannot be a string with method={method!r}")
            if n_samples < n_features:
                raise ValueError("n_components='mle' is only supported if n_samples >= n_features")
            return limit
        if isinstance(k, Integral):
            if self.method == "incremental":  # IncrementalPCA's checks and messages
                if not 1 <= k <= n_features:
                    raise ValueError(
                        f"n_components={k!r} invalid for n_features={n_features}, need more rows than "
                        "columns for IncrementalPCA processing"
                    )
                if k > n_samples:
                    raise ValueError(
                        f"n_components={k} must be less or equal to the batch number of samples "
                        f"{n_samples} for the first partial_fit call."
                    )
                return int(k)
            # PCA's: 0 components (the mean and the noise variance only) except for the
            # randomized sketch, as scikit-learn's full / arpack and randomized solvers
            low = 1 if self.method == "randomized" else 0
            if not low <= k <= limit:
                raise ValueError(
                    f"n_components={k} must be between {low} and min(n_samples, n_features)="
                    f"{limit} with method={self.method!r} (n_samples={n_samples}, "
                    f"n_features={n_features}); lower n_components."
                )
            return int(k)
        cap = self._cap(n_samples, n_features)
        if self.max_components is None and self._resolved_method(n_samples, n_features) == "randomized":
            return min(cap, _FIRST_TRACKED)
        return cap

    def _fraction(self):
        """``n_components`` when it is a fraction of the variance, else ``None``."""
        k = self.n_components
        return None if k is None or k == "mle" or isinstance(k, Integral) else k

    def _resolved_method(self, n_samples: int, n_features: int) -> str:
        if self.method != "auto":
            return self.method
        if self.n_components == "mle":
            return "covariance"
        return choose_method(n_samples, n_features, self.n_components, n_power_iter=self.n_power_iter)

    def _make_plan(self, source: RowSource):
        self._validate_params()
        n, d = source.n_samples, source.n_features
        if n < 2:
            raise ValueError(
                f"StreamingPCA needs at least 2 samples to estimate a covariance, got n_samples={n}."
            )
        k = self._n_tracked(n, d)
        method = self.method_ = self._resolved_method(n, d)
        if method == "incremental":
            self._batch_dtype = np.float64
            return _IncrementalPCAPlan(n, d, k, max(int(self.batch_size), k))
        compute = np.float32 if self.dtype == "float32" else np.float64
        src_dtype = np.dtype(getattr(source.array, "dtype", np.float64))
        fraction = self._fraction()
        seed = draw_seed(self.random_state)
        if method == "covariance":
            from ._scatter import CovariancePlan

            # 8-bit pixels come unconverted (their products are exact in float32); the rest in float64
            self._batch_dtype = src_dtype if src_dtype.kind in "iub" and src_dtype.itemsize == 1 else np.float64
            n_keep = None if fraction is not None else k
            return CovariancePlan(d, n_keep=n_keep, fraction=fraction, cap=self._cap(n, d) if fraction else k,
                                  backend=self._resolved_backend(),
                                  seed=seed)
        if src_dtype.kind in "iub" and src_dtype.itemsize <= 2:
            # small integers (pixels) come unconverted: centred straight into the compute dtype
            self._batch_dtype = src_dtype
        else:
            self._batch_dtype = np.float32 if compute == np.float32 and _small_exact_dtype(src_dtype) else np.float64
        # fewer samples than features, and not many: a sketch as wide as the samples spans
        # them all, and the method is exact (at n d n multiply-adds a pass)
        span_all = n if n < d and n <= SPAN_ALL_MAX_SAMPLES else 0
        plan = _RandomizedPCAPlan(d, k, self.n_power_iter, seed, compute, self._batch_dtype,
                                  backend=self._resolved_backend(),
                                  n_oversamples=self.n_oversamples, fraction=fraction,
                                  cap=self._cap(n, d) if fraction is not None else k, min_width=span_all)
        # private hook (streamclust fit): receives the last pass's projections, see _SketchAccumulator
        plan.projection_sink = getattr(self, "_projection_sink", None)
        return plan

    def _finish_plan(self, plan, source: RowSource) -> None:
        self._set_fitted(plan, source.n_samples, source.n_features, output_dtype(source))

    def _set_fitted(self, plan, n: int, d: int, dtype) -> None:
        """The fitted attributes from a finished plan over ``n`` rows of ``d`` features.

        Computed in float64; stored in ``dtype`` (float32 for float32 input, as
        scikit-learn keeps them).
        """
        limit = min(n, d)
        if isinstance(plan, _RandomizedPCAPlan):
            k = plan.n_track
        elif isinstance(plan, _IncrementalPCAPlan):
            k = self._n_tracked(n, d)
        else:
            k = plan.eigvecs.shape[1]
        if isinstance(plan, _IncrementalPCAPlan):
            r = plan.result
            mean = r["mean_"]
            total_var = float(np.sum(r["var_"]) * n / (n - 1))
            components = r["components_"]
            sv = r["singular_values_"]
            ev, ratio, noise = r["explained_variance_"], r["explained_variance_ratio_"], float(r["noise_variance_"])
            ratio = np.where(np.isfinite(ratio), ratio, 0.0)  # constant data: 0 / 0
        else:
            if plan.projection_sink is not None:  # what turns the sink's projections into scores
                self._sketch_basis, self._sketch_shift = plan.Q, plan.last_shift
            mean = plan.mean
            total_var = float(plan.scatter.sum() / (n - 1))
            lam = plan.eigvals[:k]
            components = _flip_rows(plan.eigvecs[:, :k].T)
            sv = np.sqrt(lam)
            ev = lam / (n - 1)
            ratio = ev / total_var if total_var > 0 else np.zeros_like(ev)
            noise = None  # from the exact total: the mean of the other eigenvalues, as PCA's
        if self.n_components == "mle":
            from sklearn.decomposition._pca import _infer_dimension

            k = int(_infer_dimension(np.asarray(ev, dtype=np.float64)[:limit], n))
            noise = None
        elif self._fraction() is not None:
            cum = np.cumsum(ratio[:k])
            k_frac = int(np.searchsorted(cum, self.n_components, side="right") + 1)
            if k_frac > k and k < limit:
                warnings.warn(
                    f"asked for {self.n_components} of the variance, reached {cum[-1] if cum.size else 0.0:.4f} "
                    f"with {k} components: max_components={self.max_components} stops them; raise it "
                    "(or set it to None) to keep more.",
                    UserWarning,
                    stacklevel=3,
                )
            k = min(k_frac, k)
            noise = None
        components, sv, ev, ratio = components[:k], sv[:k], ev[:k], ratio[:k]
        if noise is None:
            noise = (total_var - float(ev.sum())) / (limit - k) if k < limit else 0.0
            noise = max(noise, 0.0)
        dtype = np.dtype(dtype)
        self.components_ = np.array(np.reshape(components, (k, d)), dtype=dtype, order="C")
        self.singular_values_ = np.array(sv, dtype=dtype)
        self.explained_variance_ = np.array(ev, dtype=dtype)
        self.explained_variance_ratio_ = np.array(ratio, dtype=dtype)
        self.mean_ = np.array(mean, dtype=dtype)
        self.n_components_ = int(k)
        self.n_samples_ = int(n)
        self.noise_variance_ = dtype.type(noise)
        if isinstance(plan, _IncrementalPCAPlan):  # IncrementalPCA's state, which partial_fit goes on from
            self.var_ = np.array(plan.result["var_"], dtype=dtype)
            self.n_samples_seen_ = int(plan.result["n_samples_seen_"])
        else:
            for attr in ("var_", "n_samples_seen_"):
                self.__dict__.pop(attr, None)

    # --------------------------------------------------------------- transforming
    def _input_source(self, X) -> tuple[RowSource, np.dtype]:
        """The rows of ``X`` and the float dtype of the outputs: float32 for float32 input
        (NumPy, zarr or dask), float64 otherwise."""
        source = as_row_source(self, X, reset=False)
        return source, output_dtype(source)

    def transform(self, X):
        """Project ``X`` on the principal components, streaming over lazy input.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Data with ``n_features_in_`` features (trailing axes flattened).

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components_)
            Projections (float32 for float32 input, float64 otherwise).
        """
        check_is_fitted(self)
        source, dtype = self._input_source(X)
        comps = self.components_.astype(dtype, copy=False)
        offset = (self.mean_.astype(np.float64) @ self.components_.astype(np.float64).T).astype(dtype)
        scale = None
        if self.whiten:
            scale = np.sqrt(self.explained_variance_.astype(np.float64))
            eps = float(np.finfo(self.explained_variance_.dtype).eps)
            scale[scale < eps] = eps
            scale = scale.astype(dtype)
        out = np.empty((source.n_samples, self.n_components_), dtype=dtype)
        for lo, batch in self._device_batches(source, dtype):
            Y = batch @ like(batch, comps).T
            Y -= like(batch, offset)
            if scale is not None:
                Y /= like(batch, scale)
            out[lo : lo + batch.shape[0]] = host(Y)
        return out

    def inverse_transform(self, X):
        """Map projections back to the feature space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components_)
            Projections, as returned by :meth:`transform`.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features_in_)
            Reconstruction ``X @ components_ + mean_`` (undoing whitening).
        """
        check_is_fitted(self)
        X = check_array(X, input_name="X", dtype=[np.float64, np.float32])
        comps = self.components_
        if self.whiten:
            comps = np.sqrt(self.explained_variance_)[:, None] * comps
        return X @ comps.astype(X.dtype, copy=False) + self.mean_.astype(X.dtype, copy=False)

    # ------------------------------------------------------------ partial_fit
    def partial_fit(self, X, y=None, check_input=True):
        """Update the model with the rows of ``X``, as :meth:`IncrementalPCA.partial_fit`.

        Successive calls give the model that one :meth:`fit` over the concatenation of
        their rows gives, within the method's tolerance:

        - ``method="covariance"`` (and ``"auto"`` up to 12,288 features): the float64
          scatter sums of every row seen are kept (``d x d / 2`` values) and merge
          exactly, so the model after each call is the exact PCA of all the rows so far
          (equal to :meth:`fit` on them to rounding), ``n_components`` of any kind
          (int, fraction or ``None``: ``min(n_samples_seen_, n_features)``).
        - ``method="incremental"`` (and ``"auto"`` above 12,288 features): one step of
          :class:`~sklearn.decomposition.IncrementalPCA` per call (its truncated merge,
          its checks and messages); the state is the public attributes (``var_``,
          ``n_samples_seen_``, ...), so a saved model can go on.
        - ``method="randomized"`` raises ``ValueError``: its sketch needs several passes
          over all the rows.

        After :meth:`fit` (covariance or ``"auto"``-chosen method, up to 12,288 features),
        the rows it saw stand as the sums of the fitted model's covariance
        (:meth:`get_covariance` times ``n_samples_ - 1`` around ``mean_``): exact when
        every component was kept, the kept components plus the noise variance otherwise.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            New rows (lazy input is streamed ``batch_size`` rows at a time).
        y : None
            Ignored.
        check_input : bool, default=True
            Validate ``X`` (NumPy input); as in scikit-learn, ``False`` trusts it.

        Returns
        -------
        self : StreamingPCA
            The updated estimator.
        """
        self._validate_params()
        first = not hasattr(self, "components_")
        if first:
            self.__dict__.pop("_partial", None)
        if check_input or is_lazy_array(X):
            source = as_row_source(self, X, reset=first)
        else:
            source = RowSource(np.asarray(X))
        d = source.n_features
        if first:
            method = self.method
            if method == "auto":
                method = "covariance" if d <= COVARIANCE_MAX_FEATURES else "incremental"
        elif self.method_ == "incremental" or hasattr(self, "_partial"):
            method = self.method_
        elif self.method != "randomized" and d <= COVARIANCE_MAX_FEATURES:
            method = "covariance"  # after fit: the sums of the fitted model (see _model_sums)
        else:
            method = "randomized"
        if method == "randomized":
            raise ValueError(
                "partial_fit needs method='covariance' (exact, d x d sums) or 'incremental' "
                "(IncrementalPCA's merge); method='randomized' sketches in several passes over all the rows."
            )
        if method == "covariance":
            self._partial_fit_covariance(source, first)
        else:
            self._partial_fit_incremental(source, first)
        self.method_ = method
        return self

    def _partial_fit_covariance(self, source: RowSource, first: bool) -> None:
        from ._scatter import CovariancePlan, EIGH_MAX_FEATURES, ScatterAccumulator

        d = source.n_features
        acc = None if first else self._partial["acc"] if hasattr(self, "_partial") else self._model_sums()
        n = source.n_samples + (0 if acc is None else acc.n)
        if n < 2:
            raise ValueError(
                f"StreamingPCA needs at least 2 samples to estimate a covariance, got n_samples={n}."
            )
        k = self._n_tracked(n, d)  # checked before any row is added: a refused call changes nothing
        fraction = self._fraction()
        src_dtype = np.dtype(getattr(source.array, "dtype", np.float64))
        batch_dtype = src_dtype if src_dtype.kind in "iub" and src_dtype.itemsize == 1 else np.float64
        new = ScatterAccumulator(d)
        if acc is not None:  # around the same shift: the sums just add
            new.load_state_dict(acc.state_dict())
        for offset, batch in source.iter_batches(int(self.batch_size), dtype=batch_dtype):
            new.update(batch, offset)
        plan = CovariancePlan(d, n_keep=None if fraction is not None else k, fraction=fraction,
                              cap=self._cap(n, d) if fraction else k, seed=0)
        plan.end_pass(new, consume=False)
        dtype = output_dtype(source) if first else self.components_.dtype
        self._set_fitted(plan, n, d, dtype)
        self._partial = {"acc": new}
        self.n_samples_seen_ = int(n)
        if d > EIGH_MAX_FEATURES:
            logger.debug("partial_fit: %d features, subspace iteration on the scatter matrix", d)

    def _model_sums(self):
        """Scatter sums standing for the rows a :meth:`fit` saw, rebuilt from the fitted model.

        Around ``mean_``: ``S1 = 0`` and ``C = (n - 1) get_covariance()`` (float64), the
        covariance of the probabilistic PCA model: the exact scatter matrix when every
        component was kept (``n_components_ = min(n_samples, n_features)``), else its
        kept components plus the noise variance in every discarded direction.
        """
        from ._scatter import ScatterAccumulator, _slabs

        d = self.components_.shape[1]
        W = np.asarray(self.components_, dtype=np.float64)
        ev = np.asarray(self.explained_variance_, dtype=np.float64)
        sigma2 = float(self.noise_variance_)
        n = int(self.n_samples_)
        C = (W.T * (np.maximum(ev - sigma2, 0.0) * (n - 1))) @ W
        C.flat[:: d + 1] += sigma2 * (n - 1)
        acc = ScatterAccumulator(d, shift=np.asarray(self.mean_, dtype=np.float64))
        acc.n = n
        acc.slabs = [np.array(C[a:e, a:]) for a, e in _slabs(d)]
        return acc

    def _partial_fit_incremental(self, source: RowSource, first: bool) -> None:
        n_new, d = source.n_samples, source.n_features
        if self.n_components is not None and not isinstance(self.n_components, Integral):
            raise ValueError(
                f"n_components={self.n_components!r} (a fraction or 'mle') needs method='covariance' in partial_fit; "
                "IncrementalPCA keeps a fixed number of components."
            )
        ipca = IncrementalPCA(n_components=self.n_components)
        if not first:
            if not hasattr(self, "var_"):
                raise ValueError("this model has no var_ (IncrementalPCA's state): it cannot go on with "
                                 "partial_fit; fit again on all the rows")
            for attr in ("components_", "singular_values_", "mean_", "var_", "explained_variance_",
                         "explained_variance_ratio_", "noise_variance_", "n_components_"):
                setattr(ipca, attr, getattr(self, attr))
            ipca.n_samples_seen_ = getattr(self, "n_samples_seen_", self.n_samples_)
        # a NumPy X is one partial_fit step (as IncrementalPCA); lazy input one per chunk of
        # max(batch_size, n_components) rows, the last short chunk merged with the one before
        k = ipca.n_components if ipca.n_components is not None else (
            min(n_new, d) if first else self.components_.shape[0])
        if is_lazy_array(source.array):
            bounds = [(s.start, s.stop) for s in gen_batches(n_new, max(int(self.batch_size), k), min_batch_size=k)]
        else:
            bounds = [(0, n_new)]
        for lo, batch in source.iter_ranges(bounds, dtype=np.float64 if source.array.dtype != np.float32 else np.float32):
            with np.errstate(divide="ignore", invalid="ignore"):
                ipca.partial_fit(np.array(batch, copy=True), check_input=False)
        n = int(ipca.n_samples_seen_) if float(ipca.n_samples_seen_).is_integer() else ipca.n_samples_seen_
        dtype = output_dtype(source) if first else self.components_.dtype
        self.components_ = ipca.components_.astype(dtype, copy=False)
        self.singular_values_ = ipca.singular_values_.astype(dtype, copy=False)
        self.explained_variance_ = ipca.explained_variance_.astype(dtype, copy=False)
        ratio = np.where(np.isfinite(ipca.explained_variance_ratio_), ipca.explained_variance_ratio_, 0.0)
        self.explained_variance_ratio_ = ratio.astype(dtype, copy=False)
        self.mean_ = np.asarray(ipca.mean_).astype(dtype, copy=False)
        self.var_ = np.asarray(ipca.var_).astype(dtype, copy=False)
        noise = float(ipca.noise_variance_)
        self.noise_variance_ = dtype.type(noise if np.isfinite(noise) else 0.0)
        self.n_components_ = int(ipca.n_components_)
        self.n_samples_seen_ = n
        self.n_samples_ = int(n)

    # ------------------------------------------------- probabilistic PCA model
    def _model_axes(self):
        """The model's axes (scaled by the root explained variances when whitening, as
        scikit-learn's) and the variance above the noise along each (0 where none)."""
        components_ = self.components_
        exp_var = self.explained_variance_
        if self.whiten:
            components_ = components_ * np.sqrt(exp_var[:, np.newaxis])
        exp_var_diff = np.where(exp_var > self.noise_variance_, exp_var - self.noise_variance_,
                                np.asarray(0.0, dtype=exp_var.dtype))
        return components_, exp_var_diff

    def get_covariance(self):
        """Data covariance of the probabilistic PCA model, as :meth:`PCA.get_covariance`.

        ``cov = components_.T * S**2 * components_ + sigma2 * eye(n_features)``, ``S**2``
        the explained variances and ``sigma2`` the noise variance.

        Returns
        -------
        cov : ndarray of shape (n_features, n_features)
            Estimated covariance of the data.
        """
        check_is_fitted(self)
        components_, exp_var_diff = self._model_axes()
        cov = (components_.T * exp_var_diff) @ components_
        cov.flat[:: cov.shape[0] + 1] += self.noise_variance_
        return cov

    def get_precision(self):
        """Data precision matrix of the probabilistic PCA model, as :meth:`PCA.get_precision`.

        The inverse of :meth:`get_covariance`, by the matrix inversion lemma.

        Returns
        -------
        precision : ndarray of shape (n_features, n_features)
            Estimated precision of the data.
        """
        check_is_fitted(self)
        n_features = self.components_.shape[1]
        if self.n_components_ == 0:
            return np.eye(n_features) / self.noise_variance_
        if self.noise_variance_ == 0.0:
            return linalg.inv(self.get_covariance())
        components_, exp_var_diff = self._model_axes()
        precision = components_ @ components_.T / self.noise_variance_
        precision.flat[:: precision.shape[0] + 1] += 1.0 / exp_var_diff
        precision = components_.T @ linalg.inv(precision) @ components_
        precision /= -(self.noise_variance_**2)
        precision.flat[:: precision.shape[0] + 1] += 1.0 / self.noise_variance_
        return precision

    def _loglik_model(self):
        """What the per-row log-likelihood needs, in float64, without a ``d x d`` matrix when
        the noise variance is positive.

        The covariance is ``sigma2 I + G^T G`` with ``G = sqrt(D) W`` (``W`` the components,
        scaled by the root explained variances when whitening, as scikit-learn's
        :meth:`get_covariance`; ``D`` the variances above the noise).  Then
        ``x^T P x = (|x|^2 - (G x)^T (sigma2 I + G G^T)^{-1} (G x)) / sigma2`` and
        ``log det cov = (d - k) log sigma2 + log det (sigma2 I + G G^T)``.
        """
        d = self.components_.shape[1]
        sigma2 = float(self.noise_variance_)
        mean = np.asarray(self.mean_, dtype=np.float64)
        if sigma2 <= 0.0:  # scikit-learn's way: the inverse of the covariance
            precision = np.asarray(self.get_precision(), dtype=np.float64)
            return {"mean": mean, "precision": precision, "logdet": fast_logdet(precision)}
        W = np.asarray(self.components_, dtype=np.float64)
        ev = np.asarray(self.explained_variance_, dtype=np.float64)
        if self.whiten:
            W = W * np.sqrt(ev[:, None])
        diff = ev - sigma2
        keep = diff > 0
        G = np.sqrt(diff[keep])[:, None] * W[keep]
        M = G @ G.T
        M.flat[:: M.shape[0] + 1] += sigma2
        factor = linalg.cho_factor(M, lower=True) if M.size else None
        logdet_m = 2.0 * float(np.sum(np.log(np.diag(factor[0])))) if M.size else 0.0
        logdet_cov = (d - G.shape[0]) * np.log(sigma2) + logdet_m
        return {"mean": mean, "G": G, "factor": factor, "sigma2": sigma2, "logdet": -logdet_cov}

    def _loglik_batch(self, model: dict, X: np.ndarray) -> np.ndarray:
        Xr = X - model["mean"]
        d = Xr.shape[1]
        if "precision" in model:
            quad = np.einsum("ij,ij->i", Xr, Xr @ model["precision"])
        else:
            quad = np.einsum("ij,ij->i", Xr, Xr)
            if model["factor"] is not None:
                Y = Xr @ model["G"].T
                quad -= np.einsum("ij,ij->i", Y, linalg.cho_solve(model["factor"], Y.T).T)
            quad /= model["sigma2"]
        return -0.5 * quad - 0.5 * (d * np.log(2.0 * np.pi) - model["logdet"])

    def score_samples(self, X):
        """Log-likelihood of each row under the probabilistic PCA model, streamed.

        As :meth:`PCA.score_samples` (Bishop, "Pattern Recognition and Machine
        Learning", 12.2.1), computed batch by batch in float64 over NumPy, zarr or dask
        input; no ``d x d`` matrix is formed when ``noise_variance_ > 0``.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Data with ``n_features_in_`` features.

        Returns
        -------
        ll : ndarray of shape (n_samples,)
            Log-likelihood of each row (float32 for float32 input, float64 otherwise).
        """
        check_is_fitted(self)
        source, dtype = self._input_source(X)
        model = self._loglik_model()
        out = np.empty(source.n_samples, dtype=dtype)
        for lo, batch in source.iter_batches(int(self.batch_size), dtype=np.float64):
            out[lo : lo + batch.shape[0]] = self._loglik_batch(model, batch)
        return out

    def score(self, X, y=None):
        """Average log-likelihood of the rows under the probabilistic PCA model, streamed.

        As :meth:`PCA.score`: the mean of :meth:`score_samples`, summed in float64.

        Parameters
        ----------
        X : {array-like, zarr.Array, dask.array.Array} of shape (n_samples, ...)
            Data with ``n_features_in_`` features.
        y : None
            Ignored.

        Returns
        -------
        ll : float
            Average log-likelihood.
        """
        check_is_fitted(self)
        source, _ = self._input_source(X)
        model = self._loglik_model()
        total = 0.0
        for _, batch in source.iter_batches(int(self.batch_size), dtype=np.float64):
            total += float(np.sum(self._loglik_batch(model, batch)))
        return total / source.n_samples

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
