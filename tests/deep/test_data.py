"""The streaming loader: every row once per epoch, a seeded order, bounded reads, exact skipping."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from streamclust.deep.data import StoreLoader
from streamclust.store import ok_rows

from . import digits_run


class CountingArray:
    """A zarr array that records every slice read from it."""

    def __init__(self, array):
        self.array = array
        self.shape, self.chunks, self.dtype = array.shape, array.chunks, array.dtype
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key):
        assert isinstance(key, slice), f"the loader must read whole row ranges, got {key!r}"
        lo, hi, _ = key.indices(self.shape[0])
        self.reads.append((lo, hi))
        return self.array[key]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return digits_run(tmp_path_factory.mktemp("data"), size=8, chunk_size=64)


def _loader(run, **kw):
    arr = CountingArray(zarr.open_array(run / "images.zarr", mode="r"))
    kw = {"batch_size": 50, "seed": 3, "buffer_chunks": 3, **kw}
    return StoreLoader(arr, ok_rows(run), **kw), arr


def test_every_row_exactly_once_per_epoch_in_a_seeded_order(run):
    loader, arr = _loader(run)
    rows = ok_rows(run)
    images = zarr.open_array(run / "images.zarr", mode="r")[:]
    orders = []
    for epoch in range(2):
        arr.reads.clear()
        got, sizes = [], []
        for r, batch in loader.iter_epoch(epoch, with_rows=True, as_float=False):
            np.testing.assert_array_equal(batch, images[r])  # the pixels are the rows'
            got.append(r)
            sizes.append(len(r))
        order = np.concatenate(got)
        np.testing.assert_array_equal(np.sort(order), rows)  # each ok row exactly once
        np.testing.assert_array_equal(order, loader.epoch_order(epoch))
        assert sizes[:-1] == [50] * (len(sizes) - 1) and len(sizes) == len(loader)
        # every chunk read exactly once, one chunk at a time: never the whole store
        chunk = arr.chunks[0]
        assert sorted(arr.reads) == sorted({(lo, min(lo + chunk, arr.shape[0])) for lo in (rows // chunk) * chunk})
        assert max(hi - lo for lo, hi in arr.reads) <= chunk
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # a new order each epoch
    assert not np.array_equal(orders[0], np.sort(orders[0]))
    again, _ = _loader(run)
    np.testing.assert_array_equal(again.epoch_order(1), orders[1])  # a function of (seed, epoch)
    other, _ = _loader(run, seed=4)
    assert not np.array_equal(other.epoch_order(1), orders[1])


def test_starting_at_a_step_skips_without_reading(run):
    loader, arr = _loader(run)
    full = [r for r, _ in loader.iter_epoch(1, with_rows=True, as_float=False)]
    n_reads_full = len(arr.reads)
    for start in (0, 1, 17, len(full) - 1, len(full)):
        arr.reads.clear()
        part = [(r, b) for r, b in loader.iter_epoch(1, start, with_rows=True, as_float=False)]
        assert len(part) == len(full) - start
        for (r, _), ref in zip(part, full[start:]):
            np.testing.assert_array_equal(r, ref)
        if start > len(full) // 2:
            assert len(arr.reads) < n_reads_full / 2  # the skipped windows are not read
    with pytest.raises(ValueError):
        next(loader.iter_epoch(0, len(full) + 1))


def test_float_batches(run):
    pytest.importorskip("torch")
    loader, _ = _loader(run, batch_size=64)
    images = zarr.open_array(run / "images.zarr", mode="r")[:]
    r, x = next(loader.iter_epoch(0, with_rows=True))
    assert tuple(x.shape) == (64, 3, 8, 8) and str(x.dtype) == "torch.float32"
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    np.testing.assert_allclose(x.numpy().transpose(0, 2, 3, 1), images[r] / 255.0, rtol=1e-6)


def test_an_early_stop_releases_the_reader(run):
    import threading

    loader, _ = _loader(run)
    before = threading.active_count()
    it = loader.iter_epoch(0, as_float=False)
    next(it)
    it.close()
    assert threading.active_count() == before
