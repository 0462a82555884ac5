"""Parallel, order-preserving decoding with a bounded number of members in flight."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ._server import decoder_context
from .decode import DecodeParams, Decoded, decode_image, decode_many
from .readers import Member

__all__ = ["DecodedMembers", "decoded_members_distributed", "write_rows_from_staging", "TASK_MEMBERS_DISTRIBUTED"]

logger = logging.getLogger(__name__)

#: a worker task holds at most this many members or bytes
TASK_MEMBERS = 48
TASK_BYTES = 8 * 2**20


def _tasks(members: Iterable[Member]) -> Iterator[list[Member]]:
    batch: list[Member] = []
    nbytes = 0
    for m in members:
        batch.append(m)
        nbytes += len(m.data or b"")
        if len(batch) >= TASK_MEMBERS or nbytes >= TASK_BYTES:
            yield batch
            batch, nbytes = [], 0
    if batch:
        yield batch


def _needs_decode(m: Member) -> bool:
    return not m.status


def _decode_local(batch: list[Member], params: DecodeParams) -> list[Decoded | None]:
    return [decode_image(m.data, m.name, params) if _needs_decode(m) else None for m in batch]


def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: exit when the ingesting process is gone (e.g. SIGKILLed).

    A worker blocked writing a large result, or waiting for its next task, would otherwise
    never notice, and would keep the killed command's output pipes open.
    """
    import threading
    import time

    def watch():
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # pragma: no cover - pid reused by another user's process
                os._exit(1)

    threading.Thread(target=watch, name="streamclust-parent-watch", daemon=True).start()


class _Pool:
    """A process pool that is rebuilt when a worker dies (a decoder crash, an OOM kill)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.successes = 0
        # the fork server imports the decoder once; workers fork from it ready to decode
        self.ctx = decoder_context()
        self.ex = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self.ctx, initializer=_watch_parent,
                                   initargs=(os.getpid(),))

    def submit(self, batch: list[Member], params: DecodeParams) -> Future:
        items = [(m.position, m.name, m.data) for m in batch if _needs_decode(m)]
        try:
            return self.ex.submit(decode_many, items, params)
        except BrokenProcessPool:
            self.restart()
            return self.ex.submit(decode_many, items, params)

    def restart(self) -> None:
        self.ex.shutdown(wait=False, cancel_futures=True)
        self.ex = self._new()

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


def _merge(batch: list[Member], decoded: list[Decoded]) -> list[Decoded | None]:
    it = iter(decoded)
    return [next(it) if _needs_decode(m) else None for m in batch]


def _isolate(pool: _Pool, batch: list[Member], params: DecodeParams) -> list[Decoded | None]:
    """After a worker died: decode the batch one member per task to find the culprit."""
    out: list[Decoded | None] = []
    for m in batch:
        if not _needs_decode(m):
            out.append(None)
            continue
        try:
            out.append(pool.submit([m], params).result()[0])
        except BrokenProcessPool:
            logger.warning("decoder process died on member %r", m.name)
            out.append(Decoded("error", "the decoder process died on this member (crash or out of memory)"))
            pool.restart()
    return out


class _PoolUnusable(RuntimeError):
    """Worker processes die before decoding anything: they cannot start in this environment."""


class DecodedMembers:
    """Decoded members ``(member, decoded)`` in source order; ``decoded`` is None for reader-level skips.

    With ``workers > 1`` decoding runs in a process pool with at most ``3 * workers``
    tasks in flight, so memory stays bounded whatever the archive size.  The pool starts
    and the first tasks are submitted when the object is created, so the workers start
    up while the caller prepares its output; iterate it, then :meth:`close` it (or use
    it as a context manager).  If the worker processes cannot run at all here (they die
    before decoding anything, e.g. when the main program was read from stdin), decoding
    falls back to this process with a warning rather than marking every member as an
    error.
    """

    def __init__(self, members: Iterable[Member], params: DecodeParams, workers: int):
        self.params = params
        self.tasks = _tasks(members)
        self.window = 3 * workers
        self.pool = _Pool(workers) if workers > 1 else None
        self.inflight: deque[tuple[list[Member], Future]] = deque()
        if self.pool is not None:
            for batch in self.tasks:
                self.inflight.append((batch, self.pool.submit(batch, params)))
                if len(self.inflight) >= self.window:
                    break

    def __iter__(self) -> Iterator[tuple[Member, Decoded | None]]:
        pool, inflight, params = self.pool, self.inflight, self.params
        if pool is None:
            for batch in self.tasks:
                yield from zip(batch, _decode_local(batch, params))
            return
        try:
            while inflight:
                yield from _drain_one(pool, inflight, params)
                for batch in self.tasks:  # top the window up again
                    inflight.append((batch, pool.submit(batch, params)))
                    if len(inflight) >= self.window:
                        break
        except _PoolUnusable:
            logger.warning("decoder worker processes cannot run here; decoding in this process instead")
            pending = [b for b, _ in inflight]
            inflight.clear()
            for batch in [*pending, *self.tasks]:
                yield from zip(batch, _decode_local(batch, params))
        finally:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "DecodedMembers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drain_one(pool: _Pool, inflight: deque, params: DecodeParams):
    batch, fut = inflight.popleft()
    try:
        results = _merge(batch, fut.result())
        pool.successes += 1
    except (BrokenProcessPool, OSError) as exc:
        if pool.successes == 0:
            inflight.appendleft((batch, fut))
            raise _PoolUnusable(str(exc)) from exc
        pool.restart()
        results = _isolate(pool, batch, params)
        # everything else in flight died with the pool: submit it again
        pending = [b for b, _ in inflight]
        inflight.clear()
        for b in pending:
            inflight.append((b, pool.submit(b, params)))
    yield from zip(batch, results)


# --------------------------------------------------------------------------- dask.distributed
_READERS = threading.local()


def _worker_reader(path: str, max_bytes: int):
    """This thread's reader of ``path``, opened once and kept for the next tasks.

    Opening a zip parses its whole central directory (a million members: seconds), so a
    worker keeps the last source it read open; a changed file (size or mtime) is reopened.
    """
    from .readers import open_reader

    st = os.stat(path)
    key = (path, max_bytes, st.st_size, st.st_mtime_ns)
    cached = getattr(_READERS, "entry", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    if cached is not None:
        cached[1].close()
    reader = open_reader(path, max_bytes)
    _READERS.entry = (key, reader)
    return reader


def _decode_range(kind: str, path: str, max_bytes: int, lo: int, hi: int, params: DecodeParams,
                  staging: str | None = None):
    """Task: read members ``lo:hi`` of a zip or folder on the worker and decode them.

    With ``staging`` (the location of a staging array, one row per member), the pixels of
    the ok members are written there, rows ``lo:hi`` (the task's own region), and only
    the members' metadata travel back to the driver.
    """
    reader = _worker_reader(path, max_bytes)
    out = []
    block = None if staging is None else np.zeros((hi - lo, params.size, params.size, 3), np.uint8)
    for m in reader.members(lo):
        if m.position >= hi:
            break
        dec = decode_image(m.data, m.name, params) if _needs_decode(m) else None
        if m.data is not None:  # the bytes need not travel back to the driver
            m.size, m.data = len(m.data), None
        if block is not None and dec is not None and dec.pixels is not None:
            block[m.position - lo] = dec.pixels
            dec.pixels = None
        out.append((m, dec))
    if block is not None:
        from ..store import open_zarr

        open_zarr(staging, "r+")[lo:hi] = block
    return out


def write_rows_from_staging(staging: str, positions, images: str, row_lo: int) -> int:
    """Task: copy the staged pixels of members ``positions`` into rows ``row_lo:`` of ``images``.

    The rows form whole chunks of the image array (the last one may be partial), so tasks
    writing different chunks never touch the same object.  Returns the rows written.
    """
    from ..store import open_zarr

    positions = np.asarray(positions, dtype=np.int64)
    pixels = open_zarr(staging, "r").oindex[positions]
    arr = open_zarr(images, "r+").with_config({"write_empty_chunks": True})
    arr[row_lo:row_lo + positions.size] = pixels
    return int(positions.size)


def _decode_shipped(batch: list[Member], params: DecodeParams):
    """Task: decode members whose bytes the driver read (tar streams)."""
    out = []
    for m, dec in zip(batch, _decode_local(batch, params)):
        if m.data is not None:
            m.size, m.data = len(m.data), None
        out.append((m, dec))
    return out


#: members per decoding task on a dask cluster (and rows per chunk of the staging array)
TASK_MEMBERS_DISTRIBUTED = 256


def decoded_members_distributed(reader, start: int, params: DecodeParams, client,
                                task_members: int = TASK_MEMBERS_DISTRIBUTED,
                                staging: str | None = None) -> Iterator[tuple[Member, Decoded | None]]:
    """Like :class:`DecodedMembers`, with one dask task per block of members.

    For zips and folders each task reads its own members from the shared path (the source
    must be visible to the workers) and, with ``staging``, writes their pixels into the
    staging array itself (the decoded results then carry no pixels); for tar streams the
    driver reads the members and ships their bytes.  The blocks are aligned to multiples of
    ``task_members`` (the staging array's chunks), so no two tasks write one chunk.
    Results are consumed in source order with at most ``2 x workers`` tasks in flight.  A
    task lost with a worker is re-run by the scheduler (tasks are idempotent).
    """
    n_workers = max(1, len(client.scheduler_info()["workers"]))
    inflight: deque = deque()
    count = reader.count()

    def submissions():
        if reader.kind in ("zip", "dir") and count is not None:
            lo = start
            while lo < count:
                hi = min((lo // task_members + 1) * task_members, count)
                yield client.submit(_decode_range, reader.kind, str(Path(reader.path).resolve()),
                                    reader.max_bytes, lo, hi, params, staging, pure=False)
                lo = hi
        else:
            for batch in _tasks(reader.members(start)):
                yield client.submit(_decode_shipped, batch, params, pure=False)

    for fut in submissions():
        inflight.append(fut)
        if len(inflight) >= 2 * n_workers:
            yield from inflight.popleft().result()
    while inflight:
        yield from inflight.popleft().result()
