"""Stream shuffled mini-batches of images out of ``images.zarr``, never loading the store whole.

The order of an epoch is a pure function of ``(seed, epoch)`` and of the row layout:

1. the storage chunks holding the rows to use are put in a random order drawn from
   ``numpy.random.default_rng([seed, epoch])``;
2. consecutive groups of ``buffer_chunks`` chunks of that order form *windows* (the
   bounded shuffle buffer); the rows of window ``w`` are permuted by
   ``default_rng([seed, epoch, w + 1])``;
3. the epoch is the concatenation of the permuted windows, cut into batches of
   ``batch_size`` rows (the last batch of an epoch may be smaller; a batch may span two
   windows).

Every row is therefore yielded exactly once per epoch, at most two windows of pixels are
in memory (the one being served and the next one, read ahead by a background thread
while the caller computes), and resuming at batch ``step`` of an epoch needs no state
beyond ``(epoch, step)``: the windows before the one holding batch ``step`` are skipped
without being read.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

__all__ = ["StoreLoader", "to_float_tensor"]


def to_float_tensor(batch, device=None, non_blocking: bool = False):
    """``uint8 (n, s, s, 3)`` array or tensor to ``float32 (n, 3, s, s)`` in [0, 1] (on ``device``)."""
    from ._torch import require_torch

    torch = require_torch()
    t = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
    if device is not None:
        t = t.to(device, non_blocking=non_blocking)
    # channels first while still uint8 (a quarter of the bytes), then one float copy
    return t.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


class StoreLoader:
    """Shuffled mini-batches of the rows of an image array (zarr, or NumPy for tests).

    Parameters
    ----------
    array : zarr.Array or ndarray
        ``uint8 (N, s, s, 3)``, chunked along the first axis.
    rows : array of int, default=None
        The rows to use (e.g. :func:`streamclust.store.ok_rows`); ``None`` uses all.
    batch_size : int, default=256
    seed : int, default=0
    buffer_chunks : int, default=4
        Storage chunks per shuffle window.  Larger mixes better and holds more pixels.
    prefetch : bool, default=True
        Read the next window's chunks in a background thread while batches are served.
    """

    def __init__(self, array, rows=None, *, batch_size: int = 256, seed: int = 0,
                 buffer_chunks: int = 4, prefetch: bool = True):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if buffer_chunks < 1:
            raise ValueError("buffer_chunks must be positive")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.array = array
        n_total = int(array.shape[0])
        rows = np.arange(n_total, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.size and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= n_total):
            raise ValueError("rows must be strictly increasing indices into the array")
        self.rows = rows
        chunks = getattr(array, "chunks", None)
        self.chunk_rows = int(chunks[0]) if chunks is not None else max(1, n_total)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.buffer_chunks = int(buffer_chunks)
        self.prefetch = bool(prefetch)
        cid = rows // self.chunk_rows
        # units: the chunks that hold at least one row, and their slice of ``rows``
        self.unit_chunk, starts = np.unique(cid, return_index=True)
        self.unit_bounds = np.append(starts, rows.size).astype(np.int64)

    # -- the plan ---------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return int(self.rows.size)

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(self.n_rows / self.batch_size)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape[1:])

    def _windows(self, epoch: int) -> list[np.ndarray]:
        """Unit indices of each window of ``epoch``."""
        order = np.random.default_rng([self.seed, int(epoch)]).permutation(self.unit_chunk.size)
        return [order[i:i + self.buffer_chunks] for i in range(0, order.size, self.buffer_chunks)]

    def _window_rows(self, units: np.ndarray) -> np.ndarray:
        return np.concatenate([self.rows[self.unit_bounds[u]:self.unit_bounds[u + 1]] for u in units])

    def _window_perm(self, epoch: int, w: int, size: int) -> np.ndarray:
        return np.random.default_rng([self.seed, int(epoch), w + 1]).permutation(size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Every row of ``epoch`` in the order it is yielded (computed from indices alone)."""
        out = []
        for w, units in enumerate(self._windows(epoch)):
            r = self._window_rows(units)
            out.append(r[self._window_perm(epoch, w, r.size)])
        return np.concatenate(out) if out else np.empty(0, np.int64)

    # -- reading ----------------------------------------------------------------------
    def _read_unit(self, u: int) -> np.ndarray:
        c = int(self.unit_chunk[u])
        lo = c * self.chunk_rows
        hi = min(lo + self.chunk_rows, int(self.array.shape[0]))
        block = np.asarray(self.array[lo:hi])
        local = self.rows[self.unit_bounds[u]:self.unit_bounds[u + 1]] - lo
        if local.size != hi - lo:
            block = block[local]
        return block

    def iter_store_order(self) -> Iterator[np.ndarray]:
        """The rows in store order, one storage chunk's worth (``uint8``) at a time, read ahead."""
        if not self.prefetch:
            for u in range(self.unit_chunk.size):
                yield self._read_unit(u)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamclust-encode-read") as pool:
            pending = pool.submit(self._read_unit, 0) if self.unit_chunk.size else None
            try:
                for u in range(self.unit_chunk.size):
                    block = pending.result()
                    pending = pool.submit(self._read_unit, u + 1) if u + 1 < self.unit_chunk.size else None
                    yield block
            finally:
                if pending is not None:
                    pending.cancel()

    def iter_epoch(self, epoch: int, start_step: int = 0, *, with_rows: bool = False,
                   as_float: bool = True) -> Iterator:
        """Yield the batches of ``epoch`` from batch ``start_step`` on.

        Each batch is a ``float32 (n, 3, s, s)`` tensor in [0, 1] (``as_float``) or the
        ``uint8 (n, s, s, 3)`` array as stored; with ``with_rows`` a ``(rows, batch)``
        pair, ``rows`` being the store rows of the batch.
        """
        start = int(start_step) * self.batch_size
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step {start_step} is past the end of the epoch ({len(self)} batches)")
        windows = self._windows(epoch)
        sizes = [int(sum(self.unit_bounds[u + 1] - self.unit_bounds[u] for u in units)) for units in windows]
        ends = np.cumsum(sizes) if sizes else np.zeros(0, np.int64)
        first = int(np.searchsorted(ends, start, side="right"))  # the window holding position `start`
        skip = start - (int(ends[first - 1]) if first else 0)

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamclust-train-read") if self.prefetch else None

        def submit(w):
            if w >= len(windows):
                return None
            if pool is None:
                return [self._read_unit(u) for u in windows[w]]
            return [pool.submit(self._read_unit, int(u)) for u in windows[w]]

        def collect(pending):
            return [p.result() for p in pending] if pool is not None else pending

        convert = to_float_tensor if as_float else (lambda b: b)
        try:
            pending = submit(first)
            carry_rows, carry_pix = None, None  # the start of a batch spanning two windows
            for w in range(first, len(windows)):
                blocks = collect(pending)
                pending = submit(w + 1)  # read ahead while this window is served
                r = self._window_rows(windows[w])
                perm = self._window_perm(epoch, w, r.size)
                pix = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
                del blocks
                pos = skip if w == first else 0
                if carry_rows is not None:
                    need = self.batch_size - carry_rows.size
                    take = perm[pos:pos + need]
                    pos += take.size
                    carry_rows = np.concatenate([carry_rows, r[take]])
                    carry_pix = np.concatenate([carry_pix, pix[take]])
                    if carry_rows.size < self.batch_size and w + 1 < len(windows):
                        continue
                    b = convert(carry_pix)
                    yield (carry_rows, b) if with_rows else b
                    carry_rows = carry_pix = None
                while pos < r.size:
                    take = perm[pos:pos + self.batch_size]
                    pos += take.size
                    if take.size < self.batch_size and w + 1 < len(windows):
                        carry_rows, carry_pix = r[take], pix[take]
                        break
                    b = convert(pix[take])
                    yield (r[take], b) if with_rows else b
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
