"""The decode pool: parallel, order-preserving decoding with a bounded number of members in flight.

The unit of work is a block of members sized by bytes (:data:`TASK_BYTES`, at most
:data:`TASK_MEMBERS` members).  For a zip the block is a :class:`~.zipdir.Span`: the
worker reads those members from the archive itself, so the main process never touches
their bytes; for tar streams and folders the main process reads the members and ships
them.  Either way a worker returns one :class:`~.batch.Batch` per block: the manifest
fields, the digest prefixes and the pixels of the ok images as one array.
"""

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

from ._server import decoder_context, decoder_server_pid, start_decoder_server
from .batch import Batch, collect, decode_batch
from .decode import DecodeParams, Decoded, decode_image
from .readers import ArchiveReader, Member
from .zipdir import Span

__all__ = ["DecodedBatches", "decoded_members_distributed", "write_rows_from_staging", "TASK_MEMBERS_DISTRIBUTED",
           "TASK_BYTES", "TASK_MEMBERS", "task_members"]

logger = logging.getLogger(__name__)

#: a worker task holds about this many bytes of members, and at most TASK_MEMBERS of them,
#: and at most TASK_PIXEL_BYTES of decoded images: about 1,000 small images (CIFAR, MNIST)
#: or 100 of 256 px, a few tens of ms of decoding each
TASK_BYTES = 1 << 20
TASK_MEMBERS = 1024
TASK_PIXEL_BYTES = 16 << 20


def task_members(size: int) -> int:
    """Members per task at most, for images of ``size x size``."""
    return max(1, min(TASK_MEMBERS, TASK_PIXEL_BYTES // (3 * size * size)))

Task = Span | list  # a zip span, or members read by the main process


def _tasks(reader: ArchiveReader, start: int, size: int) -> Iterator[Task]:
    """The blocks of members from ``start``, in source order."""
    if reader.kind == "zip":
        return reader.spans(start, TASK_BYTES, task_members(size))
    return _blocks(reader.members(start), task_members(size))


def _blocks(members: Iterable[Member], max_members: int = TASK_MEMBERS) -> Iterator[list[Member]]:
    """``members`` in lists of about :data:`TASK_BYTES` (at most ``max_members``)."""
    batch: list[Member] = []
    nbytes = 0
    for m in members:
        batch.append(m)
        nbytes += len(m.data or b"")
        if len(batch) >= max_members or nbytes >= TASK_BYTES:
            yield batch
            batch, nbytes = [], 0
    if batch:
        yield batch


def decode_task(path: str, max_bytes: int, task: Task, params: DecodeParams) -> Batch:
    """Worker task: decode one block (a zip span is read here, from ``path``)."""
    members = _worker_reader(path, max_bytes).members_in(task) if isinstance(task, Span) else task
    return decode_batch(members, params)


def _members(reader: ArchiveReader, task: Task) -> list[Member]:
    return list(reader.members_in(task)) if isinstance(task, Span) else task


def _watch_parent(parent_pid: int, server_pid: int | None = None) -> None:
    """Worker initializer: exit when the ingesting process is gone (e.g. SIGKILLed).

    A worker blocked writing a large result, or waiting for its next task, would otherwise
    never notice, and would keep the killed command's output pipes open.  The worker's
    parent is the fork server (or the ingesting process itself without one): the kernel
    signals the worker when it dies (Linux), and a thread watches for the worker being
    handed to another parent, or the ingesting process ending (a zombie that nobody
    reaps still answers ``kill(pid, 0)``, so that alone is not enough).  ``server_pid``:
    the fork server's PID (``None`` without one); a worker whose fork server is already
    gone when it starts (the ingesting process killed as it was forked) exits at once.
    """
    import threading
    import time

    from ._server import die_with_parent

    parent = server_pid or parent_pid
    if os.getppid() != parent:
        os._exit(1)
    if server_pid is not None:  # forked by the fork server (a single thread): die with it
        die_with_parent(server_pid)

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # pragma: no cover - pid reused by another user's process
                os._exit(1)

    threading.Thread(target=watch, name="streamclust-parent-watch", daemon=True).start()


class _Pool:
    """A process pool that is rebuilt when a worker dies (a decoder crash, an OOM kill)."""

    def __init__(self, workers: int, reader: ArchiveReader, params: DecodeParams):
        self.workers = workers
        self.successes = 0
        self.args = (str(Path(reader.path).resolve()), reader.max_bytes)
        self.params = params
        # the fork server imports the decoder once; workers fork from it ready to decode.  It is
        # started here, by the thread that runs the ingestion (see start_decoder_server)
        self.ctx = decoder_context()
        start_decoder_server()
        self.ex = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self.ctx, initializer=_watch_parent,
                                   initargs=(os.getpid(), decoder_server_pid() if self.ctx is not None else None))

    def submit(self, task: Task) -> Future:
        try:
            return self.ex.submit(decode_task, *self.args, task, self.params)
        except BrokenProcessPool:
            self.restart()
            return self.ex.submit(decode_task, *self.args, task, self.params)

    def restart(self) -> None:
        self.ex.shutdown(wait=False, cancel_futures=True)
        self.ex = self._new()

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


def _isolate(pool: _Pool, reader: ArchiveReader, task: Task) -> Iterator[Batch]:
    """After a worker died: decode the block one member per task to find the culprit."""
    singles = reader.spans(task.lo, 0, 1, stop=task.hi) if isinstance(task, Span) else ([m] for m in task)
    for single in singles:
        try:
            yield pool.submit(single).result()
        except BrokenProcessPool:
            (m,) = _members(reader, single)
            logger.warning("decoder process died on member %r", m.name)
            dec = None if m.status else Decoded("error", "the decoder process died on this member "
                                                "(crash or out of memory)")
            yield collect([(m, dec)], pool.params.size)
            pool.restart()


class _PoolUnusable(RuntimeError):
    """Worker processes die before decoding anything: they cannot start in this environment."""


class DecodedBatches:
    """The source's members from ``start``, decoded, as :class:`~.batch.Batch` es in source order.

    With ``workers > 1`` decoding runs in a process pool with at most ``3 * workers``
    tasks in flight, so memory stays bounded whatever the archive size.  The pool starts
    and the first tasks are submitted when the object is created, so the workers start
    up while the caller prepares its output; iterate it, then :meth:`close` it (or use
    it as a context manager).  If the worker processes cannot run at all here (they die
    before decoding anything, e.g. when the main program was read from stdin), decoding
    falls back to this process with a warning rather than marking every member as an
    error.
    """

    def __init__(self, reader: ArchiveReader, start: int, params: DecodeParams, workers: int):
        self.reader, self.params = reader, params
        self.tasks = _tasks(reader, start, params.size)
        self.window = 3 * workers
        self.pool = _Pool(workers, reader, params) if workers > 1 else None
        self.inflight: deque[tuple[Task, Future]] = deque()
        self._error: BaseException | None = None
        self._starting = None
        if self.pool is not None:
            # the first tasks are submitted on a thread: starting a worker waits until the
            # fork server has imported the decoder, and the caller has its own imports to do
            self._starting = threading.Thread(target=self._start, name="streamclust-ingest-start", daemon=True)
            self._starting.start()

    def _start(self) -> None:
        try:
            for task in self.tasks:
                self.inflight.append((task, self.pool.submit(task)))
                if len(self.inflight) >= self.window:
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised by the iterating thread
            self._error = exc

    def _started(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._error is not None:
                raise self._error

    def _local(self, task: Task) -> Batch:
        return decode_batch(_members(self.reader, task), self.params)

    def __iter__(self) -> Iterator[Batch]:
        self._started()
        pool, inflight = self.pool, self.inflight
        if pool is None:
            for task in self.tasks:
                yield self._local(task)
            return
        try:
            while inflight:
                yield from self._drain_one()
                for task in self.tasks:  # top the window up again
                    inflight.append((task, pool.submit(task)))
                    if len(inflight) >= self.window:
                        break
        except _PoolUnusable:
            logger.warning("decoder worker processes cannot run here; decoding in this process instead")
            pending = [t for t, _ in inflight]
            inflight.clear()
            for task in [*pending, *self.tasks]:
                yield self._local(task)
        finally:
            self.close()

    def _drain_one(self) -> Iterator[Batch]:
        pool, inflight = self.pool, self.inflight
        task, fut = inflight.popleft()
        try:
            batch = fut.result()
            pool.successes += 1
        except (BrokenProcessPool, OSError) as exc:
            if pool.successes == 0:
                inflight.appendleft((task, fut))
                raise _PoolUnusable(str(exc)) from exc
            pool.restart()
            pending = [t for t, _ in inflight]
            inflight.clear()
            yield from _isolate(pool, self.reader, task)
            # everything else in flight died with the pool: submit it again
            for t in pending:
                inflight.append((t, pool.submit(t)))
            return
        yield batch

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "DecodedBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- dask.distributed
_READERS = threading.local()


def _worker_reader(path: str, max_bytes: int):
    """This thread's reader of ``path``, opened once and kept for the next tasks.

    Opening a zip walks its whole central directory (a million members: a second), so a
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
        dec = decode_image(m.data, m.name, params) if not m.status else None
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
    for m in batch:
        dec = decode_image(m.data, m.name, params) if not m.status else None
        if m.data is not None:
            m.size, m.data = len(m.data), None
        out.append((m, dec))
    return out


#: members per decoding task on a dask cluster (and rows per chunk of the staging array)
TASK_MEMBERS_DISTRIBUTED = 256


def decoded_members_distributed(reader, start: int, params: DecodeParams, client,
                                task_members: int = TASK_MEMBERS_DISTRIBUTED,
                                staging: str | None = None) -> Iterator[tuple[Member, Decoded | None]]:
    """Like :class:`DecodedBatches` (but member by member), with one dask task per block of members.

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
            for batch in _blocks(reader.members(start)):
                yield client.submit(_decode_shipped, batch, params, pure=False)

    for fut in submissions():
        inflight.append(fut)
        if len(inflight) >= 2 * n_workers:
            yield from inflight.popleft().result()
    while inflight:
        yield from inflight.popleft().result()
