"""How long a multi-pass stage will take, said before its first pass.

A stage's passes come in *phases* (a sampling pass, then k-means initialisation passes,
then EM iterations, ...), each with its own cost per pass and its own most passes.  Before
the first pass, the cost of a pass of each phase is *timed*: the phase's own kernel (the
accumulator the fit will run) on a sample batch of the stage's real data, scaled to all
the rows.  Nothing here is a flop count or a machine constant: a slower machine, a busier
one or a wider feature space gives a longer estimate by itself.

The estimate is an upper bound ("up to"): every phase is assumed to run its most passes.
:class:`~streamclust.pipeline.progress.PassBars` logs it once, before the first pass, and
the progress bar keeps it current from the passes actually timed since.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..engine.backend import Backend, NUMPY

__all__ = ["Phase", "pass_kind", "time_pass", "gmm_phases", "kmeans_phases", "select_k_phases"]

#: rows of the sample batch a pass's cost is timed on (at most)
PROBE_ROWS = 2048

_NUMBERED = re.compile(r"\s*(\(.*\))?$")


@dataclass(frozen=True)
class Phase:
    """Passes of one kind: ``passes`` of them at most, ``seconds`` each (timed a priori).

    ``kind`` is the pass name without its number and parenthesised detail, as
    :func:`pass_kind` gives it (``"EM iteration"`` for ``"EM iteration 3 (log-lik -2.1)"``).
    """

    kind: str
    seconds: float
    passes: int


def pass_kind(name: str) -> str:
    """A pass name without its iteration number and detail: the phase it belongs to.

    >>> pass_kind("EM iteration 12 (log-lik -28.4)")
    'EM iteration'
    >>> pass_kind("pass 3, 20 of 20 candidates (k=10, ...)")
    'pass'
    """
    name = _NUMBERED.sub("", name.split(",")[0]).strip()
    return re.sub(r"\s+\d+$", "", name)


def time_pass(update: Callable[[np.ndarray, int], None], sample: np.ndarray, n_rows: int,
              backend: Backend = NUMPY) -> float:
    """Seconds a pass over ``n_rows`` rows takes, from ``update`` timed on ``sample``.

    ``update(X, offset)`` is run once on a few rows (imports, allocations) and then on
    the whole sample (on ``backend``'s device, waited for); its time per row is scaled
    to ``n_rows``.
    """
    X = backend.asarray(sample)
    update(X[: min(32, len(sample))], 0)
    _wait(backend)
    t = time.perf_counter()
    update(X, 0)
    _wait(backend)
    return (time.perf_counter() - t) * n_rows / max(1, len(sample))


def _wait(backend: Backend) -> None:
    if backend.on_gpu:
        import torch

        torch.cuda.synchronize(torch.device(backend.device))


def _sample(X, columns: int | None = None) -> np.ndarray:
    """The first rows of ``X`` (a NumPy, zarr or dask array) as float64: what a pass reads first.

    ``columns`` keeps the first columns only (a mixture on the leading PCA scores).
    """
    rows = np.asarray(X[: min(PROBE_ROWS, X.shape[0])], dtype=np.float64)
    rows = rows.reshape(rows.shape[0], -1)
    return rows if columns is None else np.ascontiguousarray(rows[:, :columns])


def _centres(sample: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``k`` centres near the data: sample rows (repeated when ``k`` exceeds the sample) plus jitter."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(sample.shape[0], size=k, replace=k > sample.shape[0])
    scale = sample.std(axis=0) + 1e-12
    return sample[idx] + 0.1 * scale * rng.standard_normal((k, sample.shape[1]))


def _read_seconds(X, n_rows: int) -> float:
    """Seconds to read ``n_rows`` rows of ``X``, from the time to read its first rows."""
    t = time.perf_counter()
    _sample(X)
    return (time.perf_counter() - t) * n_rows / max(1, min(PROBE_ROWS, X.shape[0]))


def _em_update(sample: np.ndarray, ks: Sequence[int], covariance: str):
    """``update(X, offset)`` of an EM pass of mixtures with ``ks`` components, fed as the passes
    feed them: through a shared pass, whose diagonal mixtures take their E-steps together (on
    a device, a lone one too: :func:`~streamclust.engine.arrays.joint_steps`)."""
    from ..engine.combined import CombinedAccumulator
    from ..models._gmm_stats import GMMStatsAccumulator, precisions_cholesky_from_covariances

    d = sample.shape[1]
    var = sample.var(axis=0) + 1e-6
    accs = []
    for k in ks:
        if covariance == "full":
            cov = np.broadcast_to(np.diag(var), (k, d, d))
        elif covariance == "tied":
            cov = np.diag(var)
        elif covariance == "diag":
            cov = np.broadcast_to(var, (k, d))
        else:
            cov = np.full(k, var.mean())
        pc = precisions_cholesky_from_covariances(np.array(cov), covariance)
        accs.append(GMMStatsAccumulator(np.full(k, 1.0 / k), _centres(sample, k), pc, covariance))
    return CombinedAccumulator(list(range(len(accs))), [str(k) for k in ks], accs, "time estimate").update


def _nearest_update(sample: np.ndarray, ks: Sequence[int]):
    from ..models._gmm_stats import HardAssignAccumulator

    accs = [HardAssignAccumulator(_centres(sample, k), None) for k in ks]

    def update(X, offset):
        for acc in accs:
            acc.update(X, offset)

    return update


def gmm_phases(X, n_rows: int, n_components: int, covariance: str, max_iter: int,
               columns: int | None = None, backend: Backend = NUMPY) -> list[Phase]:
    """The passes of :class:`~streamclust.StreamingGaussianMixture` (k-means init) on ``X``
    (its first ``columns`` columns)."""
    sample = _sample(X, columns)
    read = _read_seconds(X, n_rows)
    hard = time_pass(_nearest_update(sample, [n_components]), sample, n_rows, backend) + read
    em = time_pass(_em_update(sample, [n_components], covariance), sample, n_rows, backend) + read
    return [Phase("sampling rows", read, 1), Phase("k-means init pass", hard, 5),
            Phase("EM iteration", em, int(max_iter))]


def kmeans_phases(X, n_rows: int, n_clusters: int, max_iter: int, method: str = "lloyd",
                  backend: Backend = NUMPY) -> list[Phase]:
    """The passes of :class:`~streamclust.StreamingKMeans` on ``X``."""
    sample = _sample(X)
    read = _read_seconds(X, n_rows)
    lloyd = time_pass(_nearest_update(sample, [n_clusters]), sample, n_rows,
                      NUMPY if method != "lloyd" else backend) + read
    kind = "k-means iteration" if method == "lloyd" else "mini-batch k-means epoch"
    return [Phase("k-means seeding sample", read, 1), Phase(kind, lloyd, int(max_iter)),
            Phase("k-means labels", lloyd, 1)]


def select_k_phases(X, n_rows: int, ks: Sequence[int], method: str, covariance: str, max_iter: int,
                    columns: int | None = None, backend: Backend = NUMPY) -> list[Phase]:
    """select-k's shared passes: every candidate fed from one read of each batch.

    A shared pass costs at most the sum of the candidates' passes (fewer as they
    converge); the init passes and the scoring pass are bounded by the same figure.
    """
    sample = _sample(X, columns)
    read = _read_seconds(X, n_rows)
    if method == "gmm":
        one = time_pass(_em_update(sample, ks, covariance), sample, n_rows, backend) + read
        passes = int(max_iter) + 7  # sampling, <= 5 k-means init, the EM iterations, the scoring pass
    else:
        one = time_pass(_nearest_update(sample, ks), sample, n_rows, backend) + read
        passes = int(max_iter) + 3  # seeding sample, the Lloyd iterations, labels, the scoring pass
    return [Phase("pass", one, passes)]
