"""Choose batch sizes that keep a fit under a memory limit (and say so when it cannot)."""

from __future__ import annotations

import logging
import os

from ..engine import HostRoom
from ..errors import MemoryLimitError

logger = logging.getLogger(__name__)

__all__ = ["batch_rows", "host_room", "fmt_bytes", "mixture_bytes", "mixture_pass_bytes", "mixture_stage_bytes",
           "mixture_memory_check",
           "BASELINE_BYTES", "DEFAULT_BUDGET"]

#: resident memory of the interpreter with numpy, scipy, scikit-learn, zarr and dask imported
BASELINE_BYTES = 350 * 2**20
#: working memory used when no --memory-limit is given
DEFAULT_BUDGET = 2 * 2**30
MIN_ROWS = 16
MAX_ROWS = 8192


def fmt_bytes(n: float) -> str:
    """``"512 MiB"`` or ``"1.20 GiB"``."""
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


_fmt = fmt_bytes


def batch_rows(
    what: str,
    *,
    fixed: int,
    per_row: int,
    limit: int | None,
    requested: int | None = None,
    preferred: int = 1024,
) -> int:
    """Rows per batch for a stage whose memory is ``fixed + per_row * rows`` bytes.

    With an explicit ``limit``, raises :class:`MemoryLimitError` when even ``MIN_ROWS``
    rows do not fit, naming what to change.  ``requested`` (``--batch-size``) wins when it
    fits.
    """
    budget = (limit if limit is not None else DEFAULT_BUDGET) - BASELINE_BYTES - fixed
    fit_rows = budget // max(per_row, 1) if budget > 0 else 0
    if limit is not None and fit_rows < MIN_ROWS:
        need = BASELINE_BYTES + fixed + MIN_ROWS * per_row
        raise MemoryLimitError(
            f"{what} needs about {_fmt(need)} but --memory-limit is {_fmt(limit)}; "
            "raise --memory-limit, or lower the number of components/clusters"
        )
    if requested is not None:
        if limit is not None and requested > fit_rows:
            raise MemoryLimitError(
                f"--batch-size {requested} for {what} needs about {_fmt(BASELINE_BYTES + fixed + requested * per_row)}, "
                f"over --memory-limit {_fmt(limit)}; lower --batch-size or leave it out"
            )
        return int(requested)
    return int(max(MIN_ROWS, min(MAX_ROWS, preferred, fit_rows)))


def host_room(limit: int | None, *, fixed: int, per_row: int, rows: int) -> HostRoom | None:
    """What a stage's plan (``fixed + per_row * rows`` bytes, as :func:`batch_rows` planned it)
    leaves of ``limit`` for a GPU's read-ahead of larger batches; ``None`` without a limit.

    On a GPU the batch's arithmetic runs on the device, but the host holds the batches read
    ahead of it (:func:`~streamclust.engine.transfer.read_ahead_bytes`): a batch grows only
    as far as they fit in this room (:func:`~streamclust.engine.fit_batch_rows`).
    """
    if limit is None:
        return None
    room = int(limit) - BASELINE_BYTES - int(fixed) - int(per_row) * int(rows)
    return HostRoom(max(0, room), f"--memory-limit {fmt_bytes(limit)}")


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def mixture_bytes(ks, d: int, covariance: str) -> int:
    """Bytes the models of mixtures with ``ks`` components in ``d`` dimensions hold (with EM's copies)."""
    d = int(d)
    total = 0
    for k in map(int, ks):
        # covariances, precisions and their Cholesky factors, with EM's working copies
        cov = {"full": k * d * d, "tied": d * d, "diag": k * d, "spherical": k}[covariance]
        total += 6 * cov * 8 + 6 * k * d * 8
    return total


def mixture_pass_bytes(ks, d: int, covariance: str, *, numpy: bool = True) -> tuple[int, int]:
    """``(fixed, per_row)``: the working bytes of an EM pass feeding each batch of ``d``
    columns to mixtures with ``ks`` components (besides their models, :func:`mixture_bytes`),
    on NumPy or (``numpy=False``) on a PyTorch device.

    Full and tied covariances loop over the components with ``(rows, d)`` temporaries, one
    mixture after the other; so does a lone diagonal or spherical mixture on NumPy, with a few
    ``(rows, d)`` and ``(rows, k)`` arrays.  Several diagonal and spherical mixtures, or one on
    a device, take a batch together (:class:`~streamclust.models._gmm_estep.DiagEStep`): per row ``[y, y²]``,
    every component's responsibility, each mixture's log-likelihood and a few copies of the
    row; fixed, ``(K, d)`` arrays for all ``K`` components: their stacked parameters (two),
    model (two, and its copy centred on the batch), moments (two), running sums (two) and
    the sums' updates (two).
    """
    d, ks = int(d), [int(k) for k in ks]
    if covariance in ("full", "tied"):
        return 0, max(k * d * 16 + k * 32 + d * 16 for k in ks)
    if len(ks) == 1 and numpy:
        return 0, 6 * d * 8 + 8 * ks[0] * 8
    K = sum(ks)
    return 12 * K * d * 8, (K + 2 * len(ks) + 6 * d) * 8


def mixture_stage_bytes(ks, d: int, covariance: str, *, numpy: bool = True) -> tuple[int, int]:
    """``(fixed, per_row)`` of a stage fitting mixtures with ``ks`` components on ``d`` columns
    (``fit``'s mixture, ``select-k``'s candidates): their models (:func:`mixture_bytes`) and
    an EM pass's working bytes (:func:`mixture_pass_bytes`, on NumPy or a device)."""
    fixed, per_row = mixture_pass_bytes(ks, d, covariance, numpy=numpy)
    return fixed + mixture_bytes(ks, d, covariance), per_row


def mixture_memory_check(what: str, ks, d: int, covariance: str, limit: int | None) -> None:
    """Refuse, in one line with the memory it would need and the fix, a mixture that cannot fit.

    Full covariances hold ``k d^2`` numbers per model: at thousands of PCA dimensions that
    is gigabytes.  The bound is ``--memory-limit`` when given, else 80 % of the machine's
    memory; above the default working budget a warning says what it will use.
    """
    need = BASELINE_BYTES + mixture_bytes(ks, d, covariance)
    ceiling = limit if limit is not None else (None if _physical_memory() is None else int(0.8 * _physical_memory()))
    fix = (f"fit the mixture on fewer dimensions with --gmm-pca-components (e.g. {max(1, min(d, 64))}), "
           "or use --covariance diag")
    if ceiling is not None and need > ceiling:
        bound = f"--memory-limit {fmt_bytes(limit)}" if limit is not None else f"80 % of this machine's {fmt_bytes(ceiling / 0.8)}"
        raise MemoryLimitError(f"{what}: {covariance} covariances of {d} dimensions need about {fmt_bytes(need)}, "
                               f"over {bound}; {fix}")
    if limit is None and need > DEFAULT_BUDGET:
        logger.warning("%s: %s covariances of %d dimensions need about %s of memory; to use less, %s",
                       what, covariance, d, fmt_bytes(need), fix)
