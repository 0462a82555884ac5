"""Driving a plan over a row source until it has no further pass, resumably.

:func:`run_passes` runs in this process, saving a checkpoint at most every
``checkpoint.every_seconds`` (mid-pass or between passes); :func:`drive` runs the same
in this process or, given a dask.distributed client, with every mergeable pass split
into one task per block of rows (:func:`streamclust.engine.cluster.run_passes_distributed`).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .backend import NUMPY, Backend, BackendError
from .checkpoint import Checkpointer
from .cluster import run_passes_distributed
from .plan import Accumulator, Plan, ProgressFn, settle
from .rows import RowSource
from .transfer import DeviceFeed

__all__ = ["run_passes", "drive"]

logger = logging.getLogger(__name__)


def run_passes(
    plan: Plan,
    source: RowSource,
    batch_size: int,
    *,
    dtype=np.float64,
    checkpoint: Checkpointer | None = None,
    progress: ProgressFn | None = None,
    backend: Backend = NUMPY,
    feed: DeviceFeed | None = None,
) -> Plan:
    """Drive ``plan`` over ``source`` until it reports no further pass.

    With a ``checkpoint``, a saved state is resumed first and the state is saved at most
    every ``checkpoint.every_seconds``, within a pass or between passes (every batch and
    every pass with ``every_seconds=0``).  ``progress`` is called as
    ``progress(pass_name, rows_done, n_rows)`` after each batch.  The batches are arrays
    of ``backend`` on its device (a :class:`~streamclust.engine.transfer.DeviceFeed`,
    or the ``feed`` given); an accumulator is settled
    (:func:`~streamclust.engine.plan.settle`) before it is checkpointed or ends its pass.
    """
    own = feed is None
    if own:
        feed = DeviceFeed(source, backend)
    started = time.perf_counter()
    try:
        return _run(plan, source, batch_size, dtype, checkpoint, progress, feed)
    finally:
        _log_feed(feed, time.perf_counter() - started)
        if own:
            feed.close()


def _log_feed(feed: DeviceFeed, seconds: float) -> None:
    """One line on what the passes read and how long they waited for it (info on a device, else debug);
    the figures ride on the record as ``feed_stats`` and ``seconds`` (benchmarks read them)."""
    s = feed.stats
    level = logging.DEBUG if feed.backend.is_numpy else logging.INFO
    logger.log(level, "%s: %d rows in %d batches (%d from the device cache), %.1f MB read; waited %.1f s for "
               "the store, %.0f%% of %.1f s", feed.backend.describe() if level == logging.INFO else "numpy",
               s.rows, s.batches, s.cached, s.bytes_read / 1e6, s.wait_s, 100 * s.wait_s / max(seconds, 1e-9),
               seconds, extra={"feed_stats": s, "seconds": seconds})


def _run(plan, source, batch_size, dtype, checkpoint, progress, feed) -> Plan:
    pass_index, start_row = 0, 0
    acc: Accumulator | None = None
    if checkpoint is not None:
        loaded = checkpoint.load()
        if loaded is not None:
            meta, plan_state, pass_state = loaded
            plan.load_state_dict(plan_state)
            pass_index, start_row = int(meta["pass_index"]), int(meta["next_row"])
            if meta["in_pass"]:
                acc = plan.next_pass()
                if acc is not None:
                    acc.load_state_dict(pass_state)
            logger.info("resuming from checkpoint: pass %d, row %d", pass_index, start_row)
    n = source.n_samples
    while True:
        if acc is None:
            acc = plan.next_pass()
            start_row = 0
            if acc is None:
                break
        for offset, X in feed.batches(batch_size, start=start_row, dtype=dtype):
            acc.update(X, offset)
            done = offset + X.shape[0]
            if progress is not None:
                progress(acc.name, done, n)
            if checkpoint is not None and done < n and checkpoint.due():
                settle(acc)
                checkpoint.save(plan, acc, pass_index, done)
        settle(acc)
        plan.end_pass(acc)
        acc = None
        pass_index += 1
        # between passes too only when due: a GPU's passes take a tenth of a second, a save
        # of many candidates' states longer (what a kill loses is still every_seconds at most)
        if checkpoint is not None and checkpoint.due():
            checkpoint.save(plan, None, pass_index, 0)
    return plan


def drive(plan: Plan, source: RowSource, batch_size: int, *, dtype=np.float64, checkpoint: Checkpointer | None = None,
          progress: ProgressFn | None = None, client=None, backend: Backend = NUMPY,
          feed: DeviceFeed | None = None) -> Plan:
    """Run ``plan`` over ``source`` until it has no further pass; returns the plan.

    In this process (:func:`run_passes`: checkpoints at most every
    ``checkpoint.every_seconds``, mid-pass or between passes), or with a dask.distributed
    ``client`` as one task per block of rows, the accumulators merged in a tree
    (checkpoints between passes).  ``progress(pass_name, rows_done, n_rows)`` is called
    as batches are done.  ``backend`` says where the arithmetic runs (in this process
    only: a dask cluster's workers run NumPy).
    """
    if client is None:
        return run_passes(plan, source, batch_size, dtype=dtype, checkpoint=checkpoint, progress=progress,
                          backend=backend, feed=feed)
    if not backend.is_numpy:
        raise BackendError("--backend torch runs the passes in this process: with a dask scheduler "
                           "use --backend numpy (or auto)")
    return run_passes_distributed(plan, source, batch_size, client, dtype=dtype, checkpoint=checkpoint,
                                  progress=progress)
