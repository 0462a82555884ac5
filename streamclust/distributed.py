"""Running the exact passes on dask.distributed.

Every exact pass of a streaming fit is a sum of per-batch statistics, and every exact
accumulator has ``merge``.  :func:`run_passes_distributed` therefore turns a pass into one
task per block of rows (a whole number of storage chunks): each task copies the pass's
empty accumulator, feeds it its rows, and returns it; the partial accumulators are merged
pairwise in a fixed tree, so the result does not depend on which worker ran what or in
which order tasks finished.  Tasks are pure functions of their inputs, so a task lost with
a worker is simply run again elsewhere.  The driver holds only the model and the reduced
statistics.  Passes whose accumulator cannot be merged (mini-batch k-means, incremental
PCA, online EM) run on the driver, in order, as they must.

``scheduler`` strings, as for the ``--scheduler`` flag: ``"local"`` starts a
``LocalCluster`` (one single-threaded worker process per core); ``"tcp://host:port"``
connects to a running scheduler.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from typing import Iterator

from typing import TYPE_CHECKING

import numpy as np

from .errors import UsageError

if TYPE_CHECKING:  # importing the engine pulls in scikit-learn: not for `ingest --scheduler`
    from .engine import Checkpointer, Plan, ProgressFn, RowSource

__all__ = ["scheduler_client", "run_passes_distributed", "block_ranges", "put"]

logger = logging.getLogger(__name__)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def scheduler_client(scheduler: str | None, *, memory_limit: int | None = None,
                     n_workers: int | None = None) -> Iterator:
    """A ``distributed.Client`` for ``scheduler`` (``None`` yields ``None``: run in-process)."""
    if scheduler is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler == "local":
        n = n_workers or _cores()
        per_worker = "auto" if memory_limit is None else max(int(memory_limit) // n, 256 * 2**20)
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=per_worker,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            logger.info("started a LocalCluster with %d workers", n)
            yield client
        return
    if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise UsageError(f"--scheduler must be 'local' or an address like tcp://host:8786, got {scheduler!r}")
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"could not connect to the dask scheduler at {scheduler}: {exc}") from None
    with client:
        yield client


#: a task of an exact pass reads at most this many batches (its rows are read batch by batch)
MAX_BATCHES_PER_TASK = 32


def block_ranges(n_rows: int, batch_size: int, chunk_rows: int | None, *, min_blocks: int = 1,
                 target_blocks: int | None = None) -> list[tuple[int, int]]:
    """Row blocks for tasks: whole storage chunks, at least ``batch_size`` rows, in order.

    With ``target_blocks`` the blocks are made larger, down to about that many (but at
    most :data:`MAX_BATCHES_PER_TASK` batches each): every task returns a whole
    accumulator (for the PCA, a features x sketch matrix), so fewer, larger tasks move
    less data between the workers; ``min_blocks`` then keeps enough tasks for the
    workers to share.
    """
    step = max(batch_size, chunk_rows or batch_size)
    if target_blocks:
        step = max(step, min(-(-n_rows // target_blocks), MAX_BATCHES_PER_TASK * batch_size))
    if chunk_rows:
        step = -(-step // chunk_rows) * chunk_rows
    # enough tasks to keep workers busy, but never below one chunk / one batch
    while min_blocks > 1 and n_rows // step < min_blocks and step > max(batch_size, chunk_rows or 1):
        step = max(step // 2, batch_size)
        if chunk_rows:
            step = max(-(-step // chunk_rows) * chunk_rows, chunk_rows)
        if n_rows // step >= min_blocks:
            break
    return [(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]


def _accumulate(template, source: RowSource, lo: int, hi: int, batch_size: int, dtype):
    """Task: feed rows ``lo:hi`` to a fresh copy of the pass's empty accumulator."""
    acc = copy.deepcopy(template)
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        acc.update(source.read(start, stop, dtype=dtype), start)
    return acc


def _identity(x):
    return x


def put(client, obj):
    """Ship ``obj`` once as the result of a task, so that if the worker holding it dies the
    scheduler can recompute it elsewhere (scattered data would be lost with the worker)."""
    return client.submit(_identity, obj, pure=False)


def _merge(a, b):
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
    """Like :func:`streamclust.engine.run_passes`, with mergeable passes on ``client``.

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
        plan.end_pass(acc)
        pass_index += 1
        if checkpoint is not None:
            checkpoint.save(plan, None, pass_index, 0)
    return plan
