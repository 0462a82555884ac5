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

The modules
-----------
``plan``        :class:`Plan`, :class:`Accumulator` (protocols), :func:`pass_rng`, :func:`fingerprint`
``rows``        :class:`RowSource`, :class:`TransformedRows`, :func:`as_row_source` (scikit-learn's input
                checks for NumPy, shape checks for zarr / dask), per-row weights
``checkpoint``  :class:`Checkpointer` and its file format
``execute``     :func:`run_passes` (in this process) and :func:`drive` (in this process or on dask)
``cluster``     :func:`run_passes_distributed`: the passes on dask.distributed, one task per block
                of rows (the blocks, the client: :mod:`streamclust.distributed`)
``combined``    :class:`CombinedPlan`
``estimator``   :class:`StreamingMixin` (what an estimator implements), :func:`fit_streaming`, :func:`draw_seed`,
                :func:`fit_batch_rows` (a fit's batch on its backend, within a memory limit's :class:`HostRoom`)
``backend``     :class:`Backend` (NumPy or PyTorch, device, precision), :func:`resolve_backend`, the
                estimators' backend parameters, dense linear algebra on a GPU
``arrays``      what the kernels share for NumPy arrays and PyTorch tensors alike (the few operations the
                array API standard lacks, host/device moves, :class:`DeviceState`); the kernels are written
                once against the standard (``array-api-compat``) and run on either
``transfer``    :class:`DeviceFeed`: batches read ahead on the CPU, copied to the device, cached there;
                what the host holds for them (:func:`~streamclust.engine.transfer.read_ahead_bytes`)

The engine imports nothing of :mod:`streamclust.models`; the models and the stages import
it (``from streamclust.engine import ...``), never its modules' private names.

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

from .backend import BACKENDS, NUMPY, PRECISIONS, Backend, BackendError, resolve_backend
from .checkpoint import Checkpointer
from .cluster import run_passes_distributed
from .combined import CombinedAccumulator, CombinedPlan
from .estimator import StreamingMixin, draw_seed, fit_batch_rows, fit_streaming
from .execute import drive, run_passes
from .plan import Accumulator, Plan, ProgressFn, State, fingerprint, pass_rng, settle
from .transfer import DeviceFeed, FeedStats, HostRoom
from .rows import (RowSource, TransformedRows, as_row_source, check_sample_weight, is_lazy_array, output_dtype,
                   weight_slice)

__all__ = ["Accumulator", "Plan", "State", "ProgressFn", "pass_rng", "fingerprint", "Checkpointer",
           "RowSource", "TransformedRows", "as_row_source", "is_lazy_array", "check_sample_weight", "weight_slice",
           "output_dtype", "run_passes", "run_passes_distributed", "drive", "CombinedPlan", "CombinedAccumulator",
           "StreamingMixin", "fit_streaming", "fit_batch_rows", "draw_seed", "settle", "Backend", "BackendError",
           "NUMPY", "BACKENDS", "PRECISIONS", "resolve_backend", "DeviceFeed", "FeedStats", "HostRoom"]
