"""Exact passes on a dask LocalCluster equal the in-process fit; a killed worker changes nothing."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr

from streamclust.distributed import block_ranges, scheduler_client
from streamclust.engine import RowSource, run_passes_distributed
from streamclust.errors import UsageError
from streamclust.models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA, fit_streaming

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::DeprecationWarning",
                                        "ignore::UserWarning:distributed")


@pytest.fixture(scope="module")
def client():
    with scheduler_client("local", n_workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (4, 6))
    X = np.concatenate([c + rng.normal(size=(300, 6)) for c in centres])
    rng.shuffle(X)
    store = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(97, 6), dtype="f8")
    store[:] = X
    return X, store


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_gmm_on_a_cluster_equals_in_process(client, data, cov):
    X, store = data
    local = StreamingGaussianMixture(4, covariance_type=cov, batch_size=97, random_state=0).fit(store)
    dist = fit_streaming(StreamingGaussianMixture(4, covariance_type=cov, batch_size=97, random_state=0),
                         store, client=client)
    assert dist.n_iter_ == local.n_iter_
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(dist, attr), getattr(local, attr), rtol=1e-8, atol=1e-10)
    assert dist.lower_bound_ == pytest.approx(local.lower_bound_, rel=1e-10)


def test_pca_and_lloyd_on_a_cluster_equal_in_process(client, data):
    X, store = data
    local = StreamingPCA(3, batch_size=97, random_state=0, dtype="float64").fit(store)
    dist = fit_streaming(StreamingPCA(3, batch_size=97, random_state=0, dtype="float64"), store, client=client)
    np.testing.assert_allclose(dist.components_, local.components_, atol=1e-8)
    np.testing.assert_allclose(dist.explained_variance_, local.explained_variance_, rtol=1e-8)
    km_local = StreamingKMeans(4, method="lloyd", batch_size=97, random_state=0).fit(store)
    km = fit_streaming(StreamingKMeans(4, method="lloyd", batch_size=97, random_state=0), store, client=client)
    np.testing.assert_allclose(km.cluster_centers_, km_local.cluster_centers_, rtol=1e-8)
    np.testing.assert_array_equal(km.labels_, km_local.labels_)
    assert km.inertia_ == pytest.approx(km_local.inertia_, rel=1e-10)


def test_minibatch_passes_stay_on_the_driver(client, data):
    X, store = data
    local = StreamingKMeans(4, method="minibatch", batch_size=97, random_state=0).fit(store)
    dist = fit_streaming(StreamingKMeans(4, method="minibatch", batch_size=97, random_state=0), store, client=client)
    np.testing.assert_allclose(dist.cluster_centers_, local.cluster_centers_, rtol=1e-8)


class _SlowSum:
    """A pass that sums its rows slowly, so a worker can be killed while it runs."""

    name = "slow sum"

    def __init__(self, d):
        self.total = np.zeros(d)
        self.rows = 0

    def update(self, X, offset):
        time.sleep(0.15)
        self.total += X.sum(axis=0)
        self.rows += X.shape[0]

    def merge(self, other):
        self.total += other.total
        self.rows += other.rows

    def state_dict(self):
        return {"total": self.total, "rows": np.int64(self.rows)}

    def load_state_dict(self, s):
        self.total, self.rows = s["total"], int(s["rows"])


class _OnePass:
    def __init__(self, d):
        self.d, self.done, self.result = d, False, None

    def next_pass(self):
        return None if self.done else _SlowSum(self.d)

    def end_pass(self, acc):
        self.done, self.result = True, (acc.total, acc.rows)

    def state_dict(self):
        return {"done": np.bool_(self.done)}

    def load_state_dict(self, s):
        self.done = bool(s["done"])


def test_a_worker_killed_mid_pass_changes_nothing(data):
    X, store = data
    with scheduler_client("local", n_workers=2) as c:
        pids = list(c.run(os.getpid).values())
        killer = threading.Timer(1.0, os.kill, (pids[0], signal.SIGKILL))
        killer.start()
        t0 = time.monotonic()
        plan = run_passes_distributed(_OnePass(6), RowSource(store), 50, c)
        assert time.monotonic() - t0 > 1.0  # the kill happened while the pass ran
        killer.join()
    total, rows = plan.result
    assert rows == X.shape[0]
    np.testing.assert_allclose(total, X.sum(axis=0), rtol=1e-12)


def test_block_ranges_cover_every_row_in_whole_chunks():
    blocks = block_ranges(1000, 64, 100, min_blocks=4)
    assert blocks[0][0] == 0 and blocks[-1][1] == 1000
    assert all(b[1] == c[0] for b, c in zip(blocks, blocks[1:]))
    assert all((hi - lo) % 100 == 0 for lo, hi in blocks[:-1])


def test_block_ranges_aim_at_a_few_large_tasks_per_worker():
    from streamclust.distributed import MAX_BATCHES_PER_TASK

    # 40k rows in chunks of 1024, batches of 1024, 2 workers: 8 tasks of 5 chunks, not 40 of one
    blocks = block_ranges(40_000, 1024, 1024, min_blocks=4, target_blocks=8)
    assert len(blocks) == 8 and {hi - lo for lo, hi in blocks[:-1]} == {5 * 1024}
    # a million rows: no task reads more than MAX_BATCHES_PER_TASK batches
    blocks = block_ranges(1_000_000, 1024, 1024, min_blocks=4, target_blocks=8)
    assert max(hi - lo for lo, hi in blocks) == MAX_BATCHES_PER_TASK * 1024
    assert blocks[-1][1] == 1_000_000 and all(b[1] == c[0] for b, c in zip(blocks, blocks[1:]))
    # few rows: min_blocks still splits them
    assert len(block_ranges(4096, 512, 512, min_blocks=4, target_blocks=8)) >= 4


def test_bad_scheduler_address_is_a_usage_error():
    with pytest.raises(UsageError, match="--scheduler"):
        with scheduler_client("localhost:1234"):
            pass


def test_select_k_candidates_on_a_cluster_equal_in_process(client, data):
    from streamclust.pipeline.select_k import fit_candidates, score_candidates

    X, store = data
    make = lambda: [StreamingGaussianMixture(k, covariance_type="diag", batch_size=97, random_state=0)
                    for k in (2, 4, 6)]
    local = fit_candidates(make(), store)
    dist = fit_candidates(make(), store, client=client)
    for a, b in zip(local.estimators, dist.estimators):
        np.testing.assert_allclose(b.means_, a.means_, rtol=1e-8, atol=1e-10)
    src = RowSource(store)
    n_fit = int(np.sum(np.arange(store.shape[0]) % 10 != 9))  # select-k holds out every tenth row
    s_local = score_candidates("gmm", local, src, 97, n_fit_rows=n_fit)
    s_dist = score_candidates("gmm", dist, src, 97, n_fit_rows=n_fit, client=client)
    for a, b in zip(s_local, s_dist):
        assert b["bic"] == pytest.approx(a["bic"], rel=1e-9)
        assert b["heldout_loglik"] == pytest.approx(a["heldout_loglik"], rel=1e-9)
