"""Choose batch sizes that keep a fit under a memory limit (and say so when it cannot)."""

from __future__ import annotations

from ..errors import MemoryLimitError

__all__ = ["batch_rows", "fmt_bytes", "BASELINE_BYTES", "DEFAULT_BUDGET"]

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
