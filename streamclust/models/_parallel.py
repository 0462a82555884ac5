"""Coarse-grained parallel products: a pool of one thread per core, each with single-threaded BLAS.

A batch's products are split into blocks that write disjoint parts of the output (rows of
``X @ Q``, columns of ``Rᵀ Y``), computed several at a time by the pool.  This keeps every
core busy even when another process holds one of them, where multi-threaded BLAS, which
splits each product evenly and waits for its slowest thread, loses most of its speed
(measured: docs/benchmarks.md, "What made it fast").  As every block writes its own part
of the output, the bits of a result do not depend on which thread computed what.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["PARALLEL_MIN_WORK", "cpu_count", "single_threaded_blas", "blocks", "map_blocks"]

#: a batch whose products need fewer multiply-adds than this is done in the calling thread
PARALLEL_MIN_WORK = 5e7
#: blocks per worker thread of a parallel product (load balancing), and their least size
_BLOCKS_PER_WORKER = 2
_MIN_BLOCK = 32

_executor: ThreadPoolExecutor | None = None
_blas = None


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _workers() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="streamclust-blocks")
    return _executor


def single_threaded_blas():
    """Context in which BLAS runs one thread per caller (the workers share the cores)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def blocks(n: int, work: float) -> list[tuple[int, int]]:
    """Ranges ``0:n`` is split into: one when the work is small or there is one core."""
    workers = cpu_count()
    if work < PARALLEL_MIN_WORK or workers < 2 or n < 2 * _MIN_BLOCK:
        return [(0, n)]
    size = max(_MIN_BLOCK, -(-n // (_BLOCKS_PER_WORKER * workers)))
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def map_blocks(fn, ranges: list[tuple[int, int]]):
    """``fn(lo, hi)`` for every range, results in range order.

    Several ranges are computed at once by the pool, each with single-threaded BLAS.
    The caller combines the results in range order, so they do not depend on which
    thread computed what.
    """
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    with single_threaded_blas():
        futures = [_workers().submit(fn, lo, hi) for lo, hi in ranges]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:  # never leave a block writing into a buffer after an error
                f.cancel()
                if not f.cancelled():
                    f.exception()
