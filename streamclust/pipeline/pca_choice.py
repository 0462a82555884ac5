"""What ``streamclust fit`` runs for the PCA, decided before the first pass, and what it delivered.

:func:`choose_pca` turns the fit settings and the data's shape into a method, a cap on the
components and a batch size that fit the memory limit, or refuses at once (one line naming
what fits).  :func:`variance_note` says in plain words when a cap or the memory limit
stopped the PCA short of the fraction of the variance that was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from ..errors import MemoryLimitError, UsageError
from ..models._scatter import scatter_bytes
from ..models.pca import SPAN_ALL_MAX_SAMPLES, choose_method, randomized_bytes, randomized_max_components
from ..engine import HostRoom
from .memory import BASELINE_BYTES, MIN_ROWS, batch_rows, fmt_bytes, host_room

__all__ = ["PcaChoice", "choose_pca", "variance_note", "DEFAULT_PCA_COMPONENTS"]

#: components when ``--pca-components`` is not given (fewer for small data)
DEFAULT_PCA_COMPONENTS = 256


@dataclass(frozen=True)
class PcaChoice:
    """The PCA a fit runs: ``StreamingPCA(n_components, method=, max_components=, batch_size=)``."""

    method: str
    n_components: int | float
    max_components: int | None
    batch_size: int
    bytes_needed: int
    #: what caps a fraction below ``min(images, pixels)``: ``"--pca-max-components 256"``,
    #: ``"--memory-limit 1 GB"`` or ``None``
    limited_by: str | None = None
    #: what the memory limit leaves of ``bytes_needed`` for a GPU's read-ahead (``None``: no limit)
    host_room: HostRoom | None = None

    def describe(self, n_rows: int, n_pixels: int) -> str:
        what = {"covariance": "exact covariance method (one pass, then an eigendecomposition)",
                "randomized": "randomized method (a few passes; grown until the fraction is reached)",
                "incremental": "incremental PCA (one pass)"}[self.method]
        asked = (f"{self.n_components:g} of the variance" if isinstance(self.n_components, float)
                 else f"{self.n_components} components")
        cap = f", at most {self.max_components} components ({self.limited_by})" if self.limited_by else ""
        return (f"PCA: {asked}{cap} of {n_pixels:,} pixels x {n_rows:,} images by the {what}; "
                f"about {fmt_bytes(self.bytes_needed)} of memory")


def _pca_bytes(method: str, d: int, k: int) -> int:
    if method == "covariance":
        return scatter_bytes(d, k)
    if method == "randomized":
        return randomized_bytes(d, k)
    return 3 * d * (k + 1) * 8  # incremental: the SVD of a (k + chunk) x d matrix, chunk ~ k


def choose_pca(config, n_rows: int, n_pixels: int, chunk_rows: int, chunk_bytes: int) -> PcaChoice:
    """The PCA of a fit, sized to ``config.memory_limit``; raises when the request cannot fit.

    Raises
    ------
    UsageError
        ``--pca-components`` above ``min(images, pixels)``.
    MemoryLimitError
        A component count, or the exact method asked for, that does not fit the memory limit
        (the message names the largest count that fits).
    """
    n, d = int(n_rows), int(n_pixels)
    limit_k = min(n, d)
    requested = config.pca_components
    if requested is None:
        requested = min(DEFAULT_PCA_COMPONENTS, limit_k)
    fraction = isinstance(requested, float)
    if isinstance(requested, Integral) and requested > limit_k:
        raise UsageError(f"--pca-components {requested} is more than min(images, pixels) = {limit_k} "
                         f"({n} images of {d} pixels); lower it")
    user_cap = config.pca_max_components
    cap = min(limit_k, user_cap) if (fraction and user_cap) else (limit_k if fraction else int(requested))
    per_row = d * 9 + (cap + 10) * 16  # raw pixels, the centred batch, float64 blocks, projections
    fixed_io = 2 * chunk_bytes
    mem = config.memory_limit
    room = None if mem is None else mem - BASELINE_BYTES - fixed_io - MIN_ROWS * per_row
    method = config.pca_method
    if method == "auto":
        method = choose_method(n, d, requested, max_bytes=room)
    if method == "covariance" and room is not None and scatter_bytes(d, cap) > room:
        raise MemoryLimitError(
            f"the exact covariance PCA of {d:,} pixels needs about "
            f"{fmt_bytes(BASELINE_BYTES + fixed_io + scatter_bytes(d, cap))}, over --memory-limit "
            f"{fmt_bytes(mem)}; raise --memory-limit or use --pca-method randomized")
    limited_by = f"--pca-max-components {user_cap}" if fraction and user_cap and user_cap < limit_k else None
    if method != "covariance" and room is not None:
        fits = randomized_max_components(d, room)
        if fits < cap:
            if fits < 1:
                raise MemoryLimitError(
                    f"PCA of {d:,} pixels needs more than --memory-limit {fmt_bytes(mem)}; raise it")
            if not fraction:
                raise MemoryLimitError(
                    f"--pca-components {requested} needs about "
                    f"{fmt_bytes(BASELINE_BYTES + fixed_io + _pca_bytes(method, d, cap))}, over --memory-limit "
                    f"{fmt_bytes(mem)}; at most {fits} components fit: pass --pca-components {fits} "
                    "or raise --memory-limit")
            cap, limited_by = fits, f"--memory-limit {fmt_bytes(mem)}"
    width = max(cap, n if n < d and n <= SPAN_ALL_MAX_SAMPLES else 0) if method == "randomized" else cap
    fixed = _pca_bytes(method, d, width) + fixed_io
    preferred = -(-1024 // chunk_rows) * chunk_rows
    bs = batch_rows("PCA", fixed=fixed, per_row=per_row, limit=mem, requested=config.batch_size,
                    preferred=preferred)
    if config.batch_size is None and bs > chunk_rows:
        bs -= bs % chunk_rows  # whole chunks: a batch straddling two would decode both
    return PcaChoice(method=method, n_components=requested, max_components=cap if fraction else None,
                     batch_size=int(bs), bytes_needed=BASELINE_BYTES + fixed + bs * per_row,
                     limited_by=limited_by, host_room=host_room(mem, fixed=fixed, per_row=per_row, rows=bs))


def variance_note(requested, pca, limited_by: str | None) -> str | None:
    """``"asked 0.99 of the variance, reached 0.875 with 256 components ..."`` when short, else ``None``."""
    if not isinstance(requested, float):
        return None
    reached = float(pca.explained_variance_ratio_.sum())
    if reached > requested:
        return None
    k = int(pca.n_components_)
    why = f": {limited_by} stops it" if limited_by else ""
    fix = ""
    if limited_by and limited_by.startswith("--pca-max-components"):
        fix = "; raise --pca-max-components (or leave it out) to keep more"
    elif limited_by:
        fix = "; raise --memory-limit to keep more"
    return f"PCA: asked {requested:g} of the variance, reached {reached:.3f} with {k} components{why}{fix}"
