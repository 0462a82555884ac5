"""Batches of a row source on the backend's device, read ahead of the arithmetic.

For NumPy this is :meth:`RowSource.iter_batches` itself.  For PyTorch a reader thread
reads and decompresses the next batches on the CPU (in the dtype they are stored in:
uint8 pixels travel as bytes, float32 features as float32), copies them to the device
from pinned memory on a stream of their own, and the batch is converted to the compute
dtype on the device when the pass reaches it: reading, copying and computing overlap,
so the device waits only when the store cannot keep up.

On a GPU the copied batches are kept on the device while they fit in ``cache_bytes``
(by default a quarter of the GPU's free memory when the feed starts): a plan's later
passes (EM iterations, select-k's candidates) then read nothing.  The results do not
depend on it.  :class:`FeedStats` says how long the passes waited for batches.

The host holds the batches read ahead (:data:`PREFETCH` of them) twice: as read, and as
the pinned copy the device copies from; :func:`read_ahead_bytes` counts it, and
:func:`read_ahead_rows` is the largest batch whose read-ahead fits in a
:class:`HostRoom`, what a memory limit leaves for it (:meth:`Backend.batch_rows
<streamclust.engine.backend.Backend.batch_rows>` caps a GPU's larger batches with it).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .backend import NUMPY, Backend
from .rows import RowSource

__all__ = ["DeviceFeed", "FeedStats", "HostRoom", "PREFETCH", "read_ahead_bytes", "read_ahead_rows", "wire_dtype"]

logger = logging.getLogger(__name__)

#: batches read and copied ahead of the one being computed (on a GPU the host holds each
#: of them as read and as its pinned copy: :func:`read_ahead_bytes`)
PREFETCH = 2


def read_ahead_bytes(rows: int, n_features: int, wire) -> int:
    """Bytes of host memory a GPU's feed holds for batches of ``rows x n_features`` read ahead in ``wire``.

    Each of the :data:`PREFETCH` batches in flight is held twice: as read from the store,
    in the dtype it travels in (:func:`wire_dtype`: the stored one), and as its pinned
    copy, which PyTorch's pinned-memory allocator rounds up to a power of two bytes (and
    keeps for the next batch).  A bound: the one reader thread holds a batch as read only
    until it is pinned.
    """
    batch = int(rows) * int(n_features) * np.dtype(wire).itemsize
    pinned = 1 << (batch - 1).bit_length() if batch > 0 else 0
    return PREFETCH * (batch + pinned)


def read_ahead_rows(room: int, n_features: int, wire) -> int:
    """The most rows per batch whose :func:`read_ahead_bytes` fit in ``room`` bytes (0 when none does)."""
    row = PREFETCH * max(1, int(n_features)) * np.dtype(wire).itemsize
    lo, hi = 0, max(0, int(room)) // (2 * row)  # the pinned copy is at least the batch
    while lo < hi:  # the largest fitting count: the bytes grow with the rows
        mid = (lo + hi + 1) // 2
        if read_ahead_bytes(mid, n_features, wire) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class HostRoom:
    """Host memory a GPU's read-ahead may take: what a stage's memory plan leaves of the user's limit.

    ``bytes``: the limit less the stage's own needs (its models, its planned batch);
    ``limit``: that limit in words, for the log (``"--memory-limit 954 MiB"``).
    """

    bytes: int
    limit: str


@dataclass
class FeedStats:
    """What a feed delivered: ``rows`` and ``batches`` (``cached`` of them from the device
    cache), ``bytes_read`` from the store, and ``wait_s``, the seconds the passes waited
    for a batch (the store or the copy not keeping up)."""

    wait_s: float = 0.0
    batches: int = 0
    rows: int = 0
    cached: int = 0
    bytes_read: int = 0


def wire_dtype(source: RowSource, dtype) -> np.dtype:
    """The dtype a batch is read and copied in: the stored one when converting it on the device is exact."""
    target = np.dtype(dtype if dtype is not None else np.float64)
    if type(source) is not RowSource:  # transformed rows are computed in float64 on the host
        return target
    stored = np.dtype(source.array.dtype)
    if stored == target:
        return stored
    if target.kind == "f" and (stored == np.float32 or (stored.kind in "iub" and stored.itemsize <= 2)):
        return stored
    return target


class DeviceFeed:
    """The batches of ``source`` on ``backend``'s device, in its compute dtype (see the module).

    Parameters
    ----------
    source : RowSource
    backend : Backend
    cache_bytes : int, default=None
        Bytes of copied batches kept on the device between passes; ``None``: a quarter of
        the GPU's free memory (nothing on a CPU device, where it would hold the data in
        the host's memory).
    """

    def __init__(self, source: RowSource, backend: Backend = NUMPY, *, cache_bytes: int | None = None):
        self.source = source
        self.backend = backend
        self.stats = FeedStats()
        self._cache: dict[tuple[int, int, str], object] = {}
        self._cached_bytes = 0
        # one reader thread and one copy stream for all the passes (a thread that used CUDA
        # takes tens of milliseconds to end: one per pass cost more than a GPU's pass)
        self._pool: ThreadPoolExecutor | None = None
        self._stream = None
        if cache_bytes is None:
            cache_bytes = 0
            if backend.on_gpu:
                import torch

                free, _ = torch.cuda.mem_get_info(torch.device(backend.device))
                cache_bytes = free // 4
        self.cache_bytes = int(cache_bytes)

    def batches(self, batch_size: int, *, start: int = 0, dtype=np.float64) -> Iterator[tuple[int, object]]:
        """``(offset, X)`` from row ``start`` to the end, ``X`` on the device (NumPy: the source's batches)."""
        if self.backend.is_numpy:
            yield from self._timed(self.source.iter_batches(batch_size, start=start, dtype=dtype))
            return
        n = self.source.n_samples
        bounds = [(lo, min(lo + batch_size, n)) for lo in range(start, n, batch_size)]
        wire = wire_dtype(self.source, dtype)
        compute = self.backend.dtype
        import torch

        gpu = self.backend.on_gpu
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamclust-feed")
            self._stream = torch.cuda.Stream(device=self.backend.device) if gpu else None
        stream, pool = self._stream, self._pool

        def fetch(lo: int, hi: int):
            key = (lo, hi, wire.str)
            cached = self._cache.get(key)
            if cached is not None:
                return cached, None, True
            block = np.ascontiguousarray(self.source.read(lo, hi, dtype=wire))
            block = torch.from_numpy(block if block.flags.writeable else block.copy())
            self.stats.bytes_read += block.numel() * block.element_size()
            if not gpu:
                return block, None, False
            block = block.pin_memory()
            with torch.cuda.stream(stream):
                dev = block.to(self.backend.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            return dev, event, False

        pending = deque(pool.submit(fetch, lo, hi) for lo, hi in bounds[:PREFETCH])
        nxt = len(pending)
        try:
            for lo, hi in bounds:
                t0 = time.perf_counter()
                raw, event, was_cached = pending.popleft().result()
                self.stats.wait_s += time.perf_counter() - t0
                if nxt < len(bounds):
                    pending.append(pool.submit(fetch, *bounds[nxt]))
                    nxt += 1
                if event is not None:
                    current = torch.cuda.current_stream(torch.device(self.backend.device))
                    current.wait_event(event)
                    raw.record_stream(current)
                self.stats.batches += 1
                self.stats.rows += hi - lo
                self.stats.cached += bool(was_cached)
                if not was_cached and self.cache_bytes:
                    self._keep(lo, hi, wire, raw)
                yield lo, raw.to(compute)
        finally:  # the caller stopped early: do not read another batch for nothing
            for f in pending:
                f.cancel()
            for f in pending:  # and never leave a read running past the pass
                if not f.cancelled():
                    f.exception()

    def _keep(self, lo: int, hi: int, wire: np.dtype, raw) -> None:
        size = raw.numel() * raw.element_size()
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[(lo, hi, wire.str)] = raw
            self._cached_bytes += size

    def _timed(self, batches):
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.stats.wait_s += time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.rows += int(item[1].shape[0])
            self.stats.bytes_read += int(item[1].nbytes)
            yield item

    def close(self) -> None:
        """Free the device cache and end the reader thread."""
        self._cache.clear()
        self._cached_bytes = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = self._stream = None
