"""A dask.distributed client for ``--scheduler``, and how work is split into tasks.

:func:`scheduler_client` gives the client; :func:`block_ranges` cuts the rows into
blocks of whole storage chunks, one task each; :func:`put` ships an object to the
cluster once, recomputable if its worker dies.  The streaming fits' passes run on the
cluster through :func:`streamclust.engine.cluster.run_passes_distributed`; ``assign``
uses the same pieces.  This module imports neither scikit-learn nor the engine:
``ingest --scheduler`` needs neither.

``scheduler`` strings, as for the ``--scheduler`` flag: ``"local"`` starts a
``LocalCluster`` (one single-threaded worker process per core); ``"tcp://host:port"``
connects to a running scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from .errors import UsageError

__all__ = ["scheduler_client", "block_ranges", "put"]

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


def _identity(x):
    return x


def put(client, obj):
    """Ship ``obj`` once as the result of a task, so that if the worker holding it dies the
    scheduler can recompute it elsewhere (scattered data would be lost with the worker)."""
    return client.submit(_identity, obj, pure=False)
