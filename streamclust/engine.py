"""The streaming engine every stage stands on: plans, passes, checkpoints and row sources.

A streaming fit is a **plan**: a sequence of passes over the rows of a source. Each pass
feeds every batch to an **accumulator**; when the pass ends the plan turns the
accumulator into its next state (an M-step, a centroid update, ...).  A new method is a
new plan, not a new copy of the loop: :func:`drive` runs any plan, in this process or on
a dask.distributed cluster, with checkpoints and progress.

The contract
------------
:class:`Accumulator`
    ``name`` (a label for progress bars), ``update(X, offset)`` (consume the batch ``X``,
    rows ``offset:offset + len(X)`` of the source), ``state_dict()`` / ``load_state_dict()``
    (its whole state as a flat dict of arrays and scalars).  To run on a cluster it also
    has ``merge(other)``: partial sums of blocks of rows are reduced in a tree.
:class:`Plan`
    ``next_pass()`` (the accumulator of the next pass, ``None`` when finished; a pure
    function of the plan's state, so a restored plan rebuilds the same accumulator),
    ``end_pass(acc)``, ``state_dict()`` / ``load_state_dict()``.  Random numbers come from
    :func:`pass_rng` (seed and pass number), never from a global generator.
:class:`Checkpointer`
    Saves a plan in flight (and the accumulator of the pass it is in) to one ``.npz``
    file atomically; a checkpoint whose ``key`` (:func:`fingerprint` of the parameters
    and the data) differs is refused, never resumed.  A killed fit driven again with the
    same checkpoint resumes at the batch where it stopped and ends with the same result.
:class:`RowSource`
    The rows of a NumPy, zarr or dask array (optionally a sorted subset ``rows`` and the
    leading ``columns``), read in batches (trailing axes flattened);
    :class:`TransformedRows` maps each batch through a function as it is read.
:class:`CombinedPlan`
    Several plans sharing the reads of one source (``select-k``'s candidates).
:func:`fit_streaming`
    Fits a streamclust estimator (its ``_make_plan`` / ``_finish_plan``) through :func:`drive`.

Example: the mean of every row, one pass, resumable::

    class MeanAcc:
        name = "mean"
        def __init__(self, d): self.total, self.n = np.zeros(d), 0
        def update(self, X, offset): self.total += X.sum(0); self.n += len(X)
        def merge(self, other): self.total += other.total; self.n += other.n
        def state_dict(self): return {"total": self.total, "n": self.n}
        def load_state_dict(self, s): self.total, self.n = s["total"], int(s["n"])

    class MeanPlan:
        def __init__(self, d): self.d, self.mean = d, None
        def next_pass(self): return MeanAcc(self.d) if self.mean is None else None
        def end_pass(self, acc): self.mean = acc.total / acc.n
        def state_dict(self): return {} if self.mean is None else {"mean": self.mean}
        def load_state_dict(self, s): self.mean = s.get("mean")

    plan = drive(MeanPlan(64), RowSource(X), 1024, checkpoint=Checkpointer(path, key="mean"))
"""

from __future__ import annotations

import numpy as np

from .models._base import fit_streaming
from .models._batches import RowSource, TransformedRows
from .models._combined import CombinedPlan
from .models._passes import Accumulator, Checkpointer, Plan, ProgressFn, fingerprint, pass_rng, run_passes

__all__ = ["Accumulator", "Plan", "Checkpointer", "RowSource", "TransformedRows", "CombinedPlan", "drive",
           "run_passes", "fit_streaming", "fingerprint", "pass_rng", "ProgressFn"]


def drive(plan: Plan, source: RowSource, batch_size: int, *, dtype=np.float64, checkpoint: Checkpointer | None = None,
          progress: ProgressFn | None = None, client=None) -> Plan:
    """Run ``plan`` over ``source`` until it has no further pass; returns the plan.

    In this process (:func:`run_passes`: checkpoints mid-pass every
    ``checkpoint.every_seconds`` and at the end of each pass), or with a dask.distributed
    ``client`` as one task per block of rows, the accumulators merged in a tree
    (checkpoints between passes).  ``progress(pass_name, rows_done, n_rows)`` is called
    as batches are done.
    """
    if client is None:
        return run_passes(plan, source, batch_size, dtype=dtype, checkpoint=checkpoint, progress=progress)
    from .distributed import run_passes_distributed

    return run_passes_distributed(plan, source, batch_size, client, dtype=dtype, checkpoint=checkpoint,
                                  progress=progress)
