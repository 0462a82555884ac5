"""Running the exact passes of a plan on dask.distributed.

Every exact pass of a streaming fit is a sum of per-batch statistics, and every exact
accumulator has ``merge``.  :func:`run_passes_distributed` therefore turns a pass into one
task per block of rows (a whole number of storage chunks, :func:`streamclust.distributed.block_ranges`):
each task copies the pass's empty accumulator, feeds it its rows, and returns it; the
partial accumulators are merged pairwise in a fixed tree, so the result does not depend on
which worker ran what or in which order tasks finished.  Tasks are pure functions of their
inputs, so a task lost with a worker is simply run again elsewhere.  The driver holds only
the model and the reduced statistics.  Passes whose accumulator cannot be merged (an
accumulator without ``merge``, or with ``mergeable`` false: mini-batch k-means,
incremental PCA, online EM) run on the driver, in order, as they must.

Checkpoints (the format of :mod:`streamclust.engine.checkpoint`) are saved between passes.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from ..distributed import block_ranges, put
from .checkpoint import Checkpointer
from .plan import Plan, ProgressFn, settle
from .rows import RowSource

__all__ = ["run_passes_distributed"]

logger = logging.getLogger(__name__)


def _accumulate(template, source: RowSource, lo: int, hi: int, batch_size: int, dtype):
    """Task: feed rows ``lo:hi`` to a fresh copy of the pass's empty accumulator."""
    acc = copy.deepcopy(template)
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        acc.update(source.read(start, stop, dtype=dtype), start)
    settle(acc)
    return acc


def _merge(a, b):
    settle(a)
    settle(b)
    a.merge(b)
    return a


def _tree_reduce(client, futures: list):
    level = list(futures)
    while len(level) > 1:
        nxt = [client.submit(_merge, level[i], level[i + 1], pure=False) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def run_passes_distributed(
    plan: Plan,
    source: RowSource,
    batch_size: int,
    client,
    *,
    dtype=np.float64,
    checkpoint: Checkpointer | None = None,
    progress: ProgressFn | None = None,
) -> Plan:
    """Like :func:`~streamclust.engine.execute.run_passes`, with mergeable passes on ``client``.

    Checkpoints are taken between passes (a resumed run repeats at most one pass); a
    checkpoint taken mid-pass by an in-process run is resumed from its pass start.
    """
    from distributed import wait

    pass_index = 0
    if checkpoint is not None:
        loaded = checkpoint.load()
        if loaded is not None:
            meta, plan_state, _ = loaded
            plan.load_state_dict(plan_state)
            pass_index = int(meta["pass_index"])
            logger.info("resuming from checkpoint at the start of pass %d", pass_index)
    n = source.n_samples
    n_workers = len(client.scheduler_info()["workers"])
    blocks = block_ranges(n, batch_size, source.chunk_rows, min_blocks=2 * n_workers, target_blocks=4 * n_workers)
    source_f = put(client, source)
    while True:
        acc = plan.next_pass()
        if acc is None:
            break
        if not (hasattr(acc, "merge") and getattr(acc, "mergeable", True)):
            for offset, X in source.iter_batches(batch_size, dtype=dtype):
                acc.update(X, offset)
                if progress is not None:
                    progress(acc.name, offset + X.shape[0], n)
        else:
            template = put(client, acc)
            parts = [client.submit(_accumulate, template, source_f, lo, hi, batch_size, dtype, pure=False)
                     for lo, hi in blocks]
            if progress is not None:
                done_rows = 0
                from distributed import as_completed

                sizes = {p.key: hi - lo for p, (lo, hi) in zip(parts, blocks)}
                for fut in as_completed(parts):
                    done_rows += sizes[fut.key]
                    progress(acc.name, done_rows, n)
            total = _tree_reduce(client, parts)
            wait(total)
            acc = total.result()
        settle(acc)
        plan.end_pass(acc)
        pass_index += 1
        if checkpoint is not None:
            checkpoint.save(plan, None, pass_index, 0)
    return plan
