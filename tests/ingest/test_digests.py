import hashlib

import numpy as np

import streamclust.ingest.digests as digests
from streamclust.ingest.digests import DigestIndex


def _keys(values):
    return b"".join(hashlib.sha256(b"%d" % v).digest()[:16] for v in values)


def test_first_row_of_each_key_as_a_dict_would_give(monkeypatch):
    monkeypatch.setattr(digests, "MAX_MERGED", 300)  # some levels stay unmerged
    rng = np.random.default_rng(0)
    index, seen, row = DigestIndex(16), {}, 0
    for _ in range(60):
        values = rng.integers(0, 2000, int(rng.integers(0, 40)))
        rows = np.arange(row, row + values.size)
        expected = [seen.setdefault(int(v), int(r)) for v, r in zip(values, rows)]
        assert index.first(_keys(values), rows).tolist() == expected
        row += values.size
    assert len(index) == len(seen)
    assert len(index.levels) > 1 and max(len(k) for k, _ in index.levels) <= 300


def test_memory_is_24_bytes_a_distinct_key():
    index = DigestIndex(16)
    values = np.arange(50_000)
    for lo in range(0, values.size, 1000):
        index.first(_keys(values[lo:lo + 1000]), values[lo:lo + 1000])
    held = sum(k.nbytes + r.nbytes for k, r in index.levels)
    assert held == 24 * values.size
