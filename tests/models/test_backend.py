"""The PyTorch backend (run here on the CPU device) against the NumPy path, estimator by estimator.

Nothing here needs a GPU: CI has the CPU build of PyTorch.  ``precision="float64"``
(the default) must give the NumPy path's results to rounding, the same labels and the
same number of iterations; a checkpoint written by one backend resumes on the other.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from streamclust.engine import Checkpointer, CombinedPlan, RowSource, drive, fit_streaming
from streamclust.engine.backend import Backend, BackendError, resolve_backend
from streamclust.engine.transfer import DeviceFeed, wire_dtype
from streamclust.models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA
from .gpu_batches import batches_sized_as_on_a_gpu
from .interrupting import Interrupted, interrupt_after

torch = pytest.importorskip("torch")

TORCH = dict(backend="torch", device="cpu")
NUMPY = dict(backend="numpy", device="cpu")


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(2400, 6, centers=4, cluster_std=[1.0, 2.0, 0.5, 1.5], random_state=3)
    return X


def _close(a, b, rtol=1e-9, atol=1e-9):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol)


def assert_same_gmm(a, b, rtol=1e-9):
    assert a.n_iter_ == b.n_iter_ and a.converged_ == b.converged_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        _close(getattr(a, name), getattr(b, name), rtol=rtol, atol=rtol)
    assert abs(a.lower_bound_ - b.lower_bound_) <= rtol * abs(a.lower_bound_)


# ------------------------------------------------------------------------- choice
def test_resolve_backend_choices():
    assert resolve_backend("numpy", "cpu") == Backend("numpy", "cpu", "float64")
    assert resolve_backend("torch", "cpu", "float32") == Backend("torch", "cpu", "float32")
    if not torch.cuda.is_available():
        assert resolve_backend("auto", "auto") == Backend("numpy", "cpu", "float64")
        assert resolve_backend("torch", "auto") == Backend("torch", "cpu", "float64")


@pytest.mark.parametrize(("backend", "device", "says"), [
    ("numpy", "cuda", "--backend numpy runs on the CPU only"),
    ("auto", "tpu", "is not a device"),
    ("auto", "cuda:x", "is not a device"),
    ("cupy", "auto", "backend 'cupy' is not one of"),
])
def test_resolve_backend_refuses_in_one_line(backend, device, says):
    with pytest.raises(BackendError, match=says) as err:
        resolve_backend(backend, device)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_without_one_says_how_to_go_on():
    with pytest.raises(BackendError, match="sees no CUDA GPU.*--device cpu") as err:
        resolve_backend("auto", "cuda")
    assert "\n" not in str(err.value)


def test_a_gpu_asked_for_without_pytorch_says_how_to_install_it(monkeypatch):
    import streamclust.engine.backend as backend

    monkeypatch.setattr(backend, "_torch_available", lambda: False)
    resolve_backend.cache_clear()
    try:
        with pytest.raises(BackendError, match="needs PyTorch, which is not installed: install PyTorch"):
            resolve_backend("auto", "cuda:0")
        with pytest.raises(BackendError, match="--backend torch needs PyTorch"):
            resolve_backend("torch", "cpu")
    finally:
        resolve_backend.cache_clear()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_auto_falls_back_to_numpy_with_one_info_line(caplog):
    resolve_backend.cache_clear()
    with caplog.at_level(logging.DEBUG, logger="streamclust.engine.backend"):
        assert resolve_backend("auto", "auto").is_numpy
        assert resolve_backend("auto", "auto").is_numpy
    lines = [r for r in caplog.records if "no GPU" in r.getMessage()]
    assert len(lines) == 1  # once a process
    # info where a GPU was to be expected (a CUDA build of PyTorch), else debug: CPU users see nothing
    assert lines[0].levelno == (logging.INFO if torch.version.cuda else logging.DEBUG)


def test_estimators_validate_the_parameters(blobs):
    with pytest.raises(ValueError, match="backend"):
        StreamingKMeans(3, backend="jax").fit(blobs)
    with pytest.raises(ValueError, match="precision"):
        StreamingGaussianMixture(3, precision="float16").fit(blobs)


# ------------------------------------------------------------------------- parity
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_gmm_torch_equals_numpy(blobs, covariance_type, init_params):
    params = dict(n_components=4, covariance_type=covariance_type, init_params=init_params, n_init=2,
                  batch_size=500, random_state=1, max_iter=30)
    a = StreamingGaussianMixture(**params, **NUMPY).fit(blobs)
    b = StreamingGaussianMixture(**params, **TORCH).fit(blobs)
    assert_same_gmm(a, b)
    np.testing.assert_array_equal(a.predict(blobs), b.predict(blobs))
    _close(a.score_samples(blobs), b.score_samples(blobs))
    _close(a.predict_proba(blobs), b.predict_proba(blobs), atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_weighted_gmm_torch_equals_numpy(blobs, covariance_type):
    w = np.random.default_rng(0).uniform(0.2, 3.0, blobs.shape[0])
    params = dict(n_components=4, covariance_type=covariance_type, batch_size=700, random_state=2, max_iter=20)
    a = StreamingGaussianMixture(**params, **NUMPY).fit(blobs, sample_weight=w)
    b = StreamingGaussianMixture(**params, **TORCH).fit(blobs, sample_weight=w)
    assert_same_gmm(a, b)


def test_gmm_float32_products_are_close_with_the_same_labels(blobs):
    params = dict(n_components=4, covariance_type="diag", batch_size=500, random_state=1, max_iter=50)
    a = StreamingGaussianMixture(**params, **NUMPY).fit(blobs)
    b = StreamingGaussianMixture(**params, precision="float32", **TORCH).fit(blobs)
    _close(b.means_, a.means_, rtol=1e-5, atol=1e-5)
    _close(b.covariances_, a.covariances_, rtol=1e-4, atol=1e-5)
    assert abs(b.lower_bound_ - a.lower_bound_) <= 1e-5 * abs(a.lower_bound_)
    np.testing.assert_array_equal(a.predict(blobs), b.predict(blobs))


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_torch_equals_numpy(blobs, method, weighted):
    w = np.random.default_rng(1).uniform(0.5, 2.0, blobs.shape[0]) if weighted else None
    params = dict(n_clusters=5, method=method, batch_size=300, random_state=0, n_init=2)
    a = StreamingKMeans(**params, **NUMPY).fit(blobs, sample_weight=w)
    b = StreamingKMeans(**params, **TORCH).fit(blobs, sample_weight=w)
    _close(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.n_iter_ == b.n_iter_ and abs(a.inertia_ - b.inertia_) <= 1e-9 * a.inertia_
    np.testing.assert_array_equal(a.predict(blobs), b.predict(blobs))
    _close(a.transform(blobs), b.transform(blobs))
    assert abs(a.score(blobs) - b.score(blobs)) <= 1e-9 * abs(a.score(blobs))


def test_kmeans_empty_cluster_relocation_matches(blobs):
    # 3 far-away initial centres stay empty: relocated to the farthest points, on both backends
    init = np.vstack([blobs[:4], np.full((3, blobs.shape[1]), 1e3)])
    params = dict(n_clusters=7, method="lloyd", init=init, n_init=1, batch_size=256, max_iter=5)
    a = StreamingKMeans(**params, **NUMPY).fit(blobs)
    b = StreamingKMeans(**params, **TORCH).fit(blobs)
    _close(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)


@pytest.mark.parametrize("method", ["randomized", "covariance"])
@pytest.mark.parametrize("pixels", [True, False])
def test_pca_torch_equals_numpy_in_float64(method, pixels):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(600, 8)) @ rng.normal(size=(8, 120))
    X = np.clip(base * 20 + 128, 0, 255).astype(np.uint8) if pixels else base
    params = dict(n_components=0.9, method=method, batch_size=128, random_state=0, dtype="float64")
    a = StreamingPCA(**params, **NUMPY).fit(X)
    b = StreamingPCA(**params, **TORCH).fit(X)
    assert a.n_components_ == b.n_components_
    _close(a.explained_variance_, b.explained_variance_, rtol=1e-9)
    _close(a.components_, b.components_, rtol=1e-7, atol=1e-7)
    _close(a.mean_, b.mean_)
    _close(a.transform(X), b.transform(X), rtol=1e-7, atol=1e-6)


def test_pca_float32_products_on_torch_are_close():
    rng = np.random.default_rng(1)
    X = np.clip(rng.normal(size=(800, 6)) @ rng.normal(size=(6, 96)) * 25 + 128, 0, 255).astype(np.uint8)
    params = dict(n_components=6, method="randomized", batch_size=200, random_state=0, dtype="float32")
    a = StreamingPCA(**params, **NUMPY).fit(X)
    b = StreamingPCA(**params, **TORCH).fit(X)
    _close(b.explained_variance_, a.explained_variance_, rtol=1e-5)
    assert np.min(np.abs(np.sum(a.components_ * b.components_, axis=1))) > 1 - 1e-5


# ------------------------------------------------------------------------- resume


def _interrupted_then_resumed(cls, params, X, first, then, stop_at, path):
    """A fit on backend ``first`` killed at batch ``stop_at``, resumed from its checkpoint on ``then``."""
    with pytest.raises(Interrupted):
        fit_streaming(cls(**params, **first), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                      progress=interrupt_after(stop_at))
    return fit_streaming(cls(**params, **then), X, checkpoint=Checkpointer(path, "k", every_seconds=0))


@pytest.mark.parametrize(("first", "then"), [(TORCH, NUMPY), (NUMPY, TORCH)])
@pytest.mark.parametrize("stop_at", [2, 11, 23])
def test_a_checkpoint_resumes_on_the_other_backend(tmp_path, blobs, first, then, stop_at):
    params = dict(n_components=4, covariance_type="full", batch_size=500, random_state=5, max_iter=10)
    full = StreamingGaussianMixture(**params, **NUMPY).fit(blobs)
    resumed = _interrupted_then_resumed(StreamingGaussianMixture, params, blobs, first, then, stop_at,
                                        tmp_path / "gmm.ckpt.npz")
    assert_same_gmm(resumed, full)


@pytest.mark.parametrize(("first", "then"), [(TORCH, NUMPY), (NUMPY, TORCH)])
def test_kmeans_and_pca_checkpoints_resume_across_backends(tmp_path, blobs, first, then):
    km = dict(n_clusters=5, method="lloyd", batch_size=300, random_state=0)
    full = StreamingKMeans(**km, **NUMPY).fit(blobs)
    resumed = _interrupted_then_resumed(StreamingKMeans, km, blobs, first, then, 13, tmp_path / "k")
    _close(resumed.cluster_centers_, full.cluster_centers_)
    np.testing.assert_array_equal(resumed.labels_, full.labels_)

    pca = dict(n_components=3, method="randomized", batch_size=300, random_state=0, dtype="float64")
    full = StreamingPCA(**pca, **NUMPY).fit(blobs)
    resumed = _interrupted_then_resumed(StreamingPCA, pca, blobs, first, then, 10, tmp_path / "p")
    _close(resumed.components_, full.components_, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------- shared passes
def test_candidates_sharing_passes_on_torch_equal_numpy(blobs):
    def plans():
        ests = [StreamingGaussianMixture(k, covariance_type="diag", batch_size=400, random_state=k, max_iter=15)
                for k in (2, 3, 5)]
        return ests, [e._make_plan(RowSource(blobs)) for e in ests]

    results = []
    for backend in (Backend("numpy"), Backend("torch", "cpu")):
        ests, ps = plans()
        combined = drive(CombinedPlan(ps, ["a", "b", "c"]), RowSource(blobs), 400, backend=backend)
        for est, plan in zip(ests, combined.plans):
            est._finish_plan(plan, RowSource(blobs))
        results.append(ests)
    for a, b in zip(*results):
        assert_same_gmm(a, b)


def test_a_shared_pass_comes_back_from_the_device_in_one_copy_a_pass(blobs, monkeypatch):
    """At the end of a pass the candidates' sums cross in one copy per dtype, not a few per candidate."""
    import sys

    from streamclust.engine import arrays, execute

    copies, settles = [], []
    real_host, real_settle = arrays.host, execute.settle

    def host(x, dtype=None):  # the copies made to settle a pass (not the seeding's, say)
        if not arrays.is_numpy(x) and sys._getframe(1).f_code.co_name == "to_host_all":
            copies.append(x.dtype)
        return real_host(x, dtype)

    monkeypatch.setattr(arrays, "host", host)
    def settle(acc):
        before = len(copies)
        real_settle(acc)
        settles.append(len(copies) - before)

    monkeypatch.setattr(execute, "settle", settle)
    ests = [StreamingGaussianMixture(k, covariance_type=ct, batch_size=400, random_state=k, max_iter=4)
            for k, ct in ((2, "diag"), (3, "full"), (5, "spherical"), (4, "tied"))]
    plans = [e._make_plan(RowSource(blobs)) for e in ests]
    drive(CombinedPlan(plans, ["a", "b", "c", "d"]), RowSource(blobs), 400, backend=Backend("torch", "cpu"))
    # the passes with the full and tied candidates: their sums (three to five arrays each), all
    # float64, in one copy a pass; the diagonal ones keep theirs on the device (their M-steps run
    # there), so the last passes, the spherical candidate's alone, copy nothing when settled
    assert settles[1:6] == [1] * 5 and settles[6:] == [0] * 4 and settles[0] == 0  # the sample pass: rows
    assert set(map(str, copies)) == {"torch.float64"}


def test_a_shared_pass_copies_its_candidates_models_and_sums_to_the_device_together(blobs, monkeypatch):
    """At the start of a pass the candidates' models and zeroed sums cross in one copy a dtype."""
    from streamclust.engine import execute

    copies, per_pass = [0], []
    real_as_tensor, real_settle = torch.as_tensor, execute.settle

    def as_tensor(data, *args, **kw):
        copies[0] += isinstance(data, np.ndarray)
        return real_as_tensor(data, *args, **kw)

    def settle(acc):
        real_settle(acc)
        per_pass.append(copies[0])
        copies[0] = 0

    monkeypatch.setattr(torch, "as_tensor", as_tensor)
    monkeypatch.setattr(execute, "settle", settle)
    ests = [StreamingGaussianMixture(k, covariance_type=ct, batch_size=2400, random_state=k, max_iter=4, tol=0)
            for k, ct in ((2, "diag"), (3, "full"), (5, "spherical"), (4, "tied"))]
    plans = [e._make_plan(RowSource(blobs)) for e in ests]
    drive(CombinedPlan(plans, ["a", "b", "c", "d"]), RowSource(blobs), 2400, backend=Backend("torch", "cpu"))
    # one batch a pass: the lone candidates' models and sums joined, one copy; the diagonal
    # and spherical ones' models stay on the device after their M-step there, and their
    # sums are made there (4 x 6 copies a pass before the copies were joined)
    em = per_pass[-3:]
    assert max(em) <= 1, per_pass


def test_bringing_many_states_back_at_once_equals_one_at_a_time():
    from streamclust.engine.arrays import DeviceState, to_host_all

    class State(DeviceState):
        _device_state = ("sums", "count", "total", "slabs", "absent", "already")

    def made():
        st = State()
        st.sums = torch.arange(12, dtype=torch.float64).reshape(3, 4)
        st.count = torch.tensor([3, 1, 2])  # int64: a copy of its own
        st.total = torch.tensor(2.5, dtype=torch.float64)
        st.slabs = [torch.ones(2, 2, dtype=torch.float64), None, torch.zeros(0, dtype=torch.float64)]
        st.absent, st.already = None, np.array([7.0])
        return st

    one, many = [made(), made()], [made(), made()]
    for st in (one[1], many[1]):  # an array too large to be joined crosses alone, with the same result
        st.sums = torch.arange(2 * (4 << 20) // 8, dtype=torch.float64).reshape(2, -1)
    for st in one:
        for name in st._device_state:  # the reference: each value alone
            value = getattr(st, name)
            back = (lambda v: v if v is None or isinstance(v, np.ndarray) else
                    (v.item() if v.ndim == 0 else v.cpu().numpy()))
            setattr(st, name, [back(v) for v in value] if isinstance(value, list) else back(value))
    to_host_all(many)
    for a, b in zip(one, many):
        for name in a._device_state:
            va, vb = getattr(a, name), getattr(b, name)
            for x, y in zip(va, vb) if isinstance(va, list) else [(va, vb)]:
                assert type(x) is type(y)
                if x is not None:
                    assert np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype
                    assert np.shape(x) == np.shape(y)


# ------------------------------------------------------------------------ the feed
def test_the_feed_sends_stored_bytes_and_converts_on_the_device():
    X = np.arange(5 * 12, dtype=np.uint8).reshape(5, 3, 4)
    source = RowSource(X)
    assert wire_dtype(source, np.float64) == np.uint8
    assert wire_dtype(RowSource(X.astype(np.float32)), np.float64) == np.float32
    assert wire_dtype(RowSource(X.astype(np.int64)), np.float64) == np.float64  # not exact in float32: as asked
    feed = DeviceFeed(source, Backend("torch", "cpu", "float32"))
    got = list(feed.batches(2, dtype=np.float64))
    assert [lo for lo, _ in got] == [0, 2, 4]
    assert all(isinstance(b, torch.Tensor) and b.dtype == torch.float32 for _, b in got)
    np.testing.assert_array_equal(np.vstack([b.numpy() for _, b in got]), X.reshape(5, -1).astype(np.float32))
    assert feed.stats.batches == 3 and feed.stats.bytes_read == X.size and feed.stats.wait_s >= 0


def test_the_device_cache_serves_later_passes_with_the_same_batches():
    X = np.random.default_rng(0).normal(size=(50, 7))
    feed = DeviceFeed(RowSource(X), Backend("torch", "cpu"), cache_bytes=X.nbytes)
    first = [b.clone() for _, b in feed.batches(8)]
    assert feed.stats.cached == 0 and feed.stats.bytes_read == X.nbytes
    again = [b for _, b in feed.batches(8)]
    assert feed.stats.cached == 7 and feed.stats.bytes_read == X.nbytes  # nothing read again
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    small = DeviceFeed(RowSource(X), Backend("torch", "cpu"), cache_bytes=3 * 8 * 7 * 8)
    for _ in range(2):
        list(small.batches(8))
    assert small.stats.cached == 3  # what fits is kept, the rest read again


def test_a_bad_batch_is_reported_as_on_the_numpy_path():
    X = np.ones((20, 3))
    X[13, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity in rows 10..14"):
        StreamingKMeans(2, method="lloyd", batch_size=5, random_state=0, **TORCH).fit(_lazy(X))


def _lazy(X):
    import dask.array as da

    return da.from_array(X, chunks=(5, 3))


# ------------------------------------------------- dense linear algebra on the device
class _DeviceLinalg(Backend):
    """The GPU branches of the PCA's linear algebra, run on PyTorch's CPU device."""

    @property
    def on_gpu(self) -> bool:
        return True


@pytest.mark.parametrize("d", [300, 4200])
def test_top_eigenpairs_on_the_device_equal_the_cpu(d):
    from streamclust.models._scatter import EIGH_MAX_FEATURES, top_eigenpairs

    rng = np.random.default_rng(0)
    A = rng.normal(size=(d, 40)) * np.linspace(10, 1, 40)
    C = (A @ A.T + 1e-3 * np.eye(d)).astype(np.float64 if d <= EIGH_MAX_FEATURES else np.float32)
    kw = dict(n_keep=None, fraction=0.9, cap=200, seed=3)
    w0, V0 = top_eigenpairs(C, **kw)
    w1, V1 = top_eigenpairs(C, **kw, backend=_DeviceLinalg("torch", "cpu"))
    assert isinstance(V1, np.ndarray) and V1.shape == V0.shape
    k = 30
    _close(w1[:k], w0[:k], rtol=1e-4 if C.dtype == np.float32 else 1e-10)
    overlap = np.abs(np.sum(V0[:, :k] * V1[:, :k], axis=0))  # the same axes, up to sign
    assert overlap.min() > 1 - 1e-3


def test_the_randomized_pca_plan_on_the_device_equals_the_cpu(blobs):
    from streamclust.engine import run_passes
    from streamclust.models.pca import _RandomizedPCAPlan

    X = np.hstack([blobs, blobs @ np.random.default_rng(1).normal(size=(6, 30))])
    plans = [_RandomizedPCAPlan(X.shape[1], 5, 3, 7, np.float64, np.float64, backend=b)
             for b in (Backend(), _DeviceLinalg("torch", "cpu"))]
    for plan in plans:
        run_passes(plan, RowSource(X), 500)
    _close(plans[1].eigvals[:5], plans[0].eigvals[:5], rtol=1e-9)
    assert np.abs(np.sum(plans[0].eigvecs[:, :5] * plans[1].eigvecs[:, :5], axis=0)).min() > 1 - 1e-9


def test_the_seeding_lloyd_on_the_device_equals_the_cpu(blobs):
    from streamclust.models.kmeans import lloyd_in_memory

    init = blobs[:6].copy()
    a = lloyd_in_memory(blobs, init, 50, 1e-4, chunk=500)
    b = lloyd_in_memory(blobs, init, 50, 1e-4, chunk=500, backend=_DeviceLinalg("torch", "cpu"))
    for x, y in zip(a, b):
        assert isinstance(y, (np.ndarray, float))
        _close(x, y)


def test_a_gpu_batch_larger_than_asked_is_said(caplog):
    gpu = _DeviceLinalg("torch", "cuda:0")
    with caplog.at_level(logging.INFO, logger="streamclust.engine.backend"):
        rows = gpu.batch_rows(1024, 537)
    assert rows == (128 << 20) // (8 * 537)
    assert f"on cuda:0 a batch is {rows} rows (128 MiB in float64), not the 1024 asked for" in caplog.text
    assert Backend("torch", "cpu").batch_rows(1024, 537) == 1024  # only a GPU's batches grow


# ------------------------------------------------------- a GPU's batches under a memory limit
def test_the_read_ahead_and_the_batch_a_memory_limit_leaves_room_for():
    from streamclust.engine.backend import gpu_batch_rows
    from streamclust.engine.transfer import PREFETCH, read_ahead_bytes, read_ahead_rows

    assert PREFETCH == 2
    # each batch in flight as read (537,000 bytes) and pinned (rounded up to 2**20)
    assert read_ahead_bytes(1000, 537, np.uint8) == 2 * (537_000 + 2**20) == 3_171_152
    assert read_ahead_bytes(1024, 256, np.float32) == 2 * (2**20 + 2**20)  # a power of two already
    assert read_ahead_bytes(0, 256, np.float32) == 0
    assert read_ahead_rows(4 << 20, 256, np.float32) == 1024
    assert read_ahead_rows((4 << 20) - 1, 256, np.float32) == 1023
    assert read_ahead_rows(3_171_152, 537, np.uint8) == 1000
    assert read_ahead_rows(100, 537, np.uint8) == 0 and read_ahead_rows(-5, 537, np.uint8) == 0
    # 128 MiB of float64 rows of 537 numbers, at most 65,536 rows, capped, never below the plan's batch
    assert gpu_batch_rows(1024, 537, 8) == (128 << 20) // (8 * 537) == 31242
    assert gpu_batch_rows(1024, 537, 4) == 62484
    assert gpu_batch_rows(1024, 6, 8) == 65536
    assert gpu_batch_rows(1024, 537, 8, max_rows=5000) == 5000
    assert gpu_batch_rows(1024, 537, 8, max_rows=100) == 1024
    assert gpu_batch_rows(1024, 537, 8, max_rows=10**9) == 31242
    assert gpu_batch_rows(40_000, 537, 8) == 40_000


def test_a_memory_limit_caps_a_gpu_batch_and_says_so(caplog):
    gpu = _DeviceLinalg("torch", "cuda:0")
    limit = "--memory-limit 1.00 GiB"
    with caplog.at_level(logging.INFO, logger="streamclust.engine.backend"):
        assert gpu.batch_rows(1024, 537, max_rows=5000, limited_by=limit) == 5000
    assert ("on cuda:0 a batch is 5000 rows (20 MiB in float64), not the 31242 rows (128 MiB) a GPU needs to be "
            "busy: --memory-limit 1.00 GiB leaves room for no more") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streamclust.engine.backend"):
        assert gpu.batch_rows(1024, 537, max_rows=10, limited_by=limit) == 1024  # the plan's batch stays
    assert "a batch is 1024 rows (4 MiB in float64), not the 31242 rows" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streamclust.engine.backend"):
        assert gpu.batch_rows(1024, 537, max_rows=10**6, limited_by=limit) == 31242  # room enough
        assert gpu.batch_rows(1024, 537) == 31242  # no limit: as before
    assert "--memory-limit" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streamclust.engine.backend"):  # no GPU: nothing changes
        assert Backend("torch", "cpu").batch_rows(1024, 537, max_rows=10, limited_by=limit) == 1024
        assert Backend().batch_rows(1024, 537, max_rows=10**6, limited_by=limit) == 1024
    assert caplog.text == ""


def test_a_fit_under_a_memory_limit_on_a_gpu_reads_the_batches_it_has_room_for(blobs, monkeypatch, caplog):
    from streamclust.engine import HostRoom
    from streamclust.engine.transfer import read_ahead_bytes

    sizes = batches_sized_as_on_a_gpu(monkeypatch)
    kw = dict(covariance_type="diag", batch_size=100, random_state=0, max_iter=20)
    ref = StreamingGaussianMixture(3, **kw, **NUMPY).fit(blobs)
    assert sizes == [(6, 100, np.float64)]  # NumPy: the batch asked for
    room = HostRoom(read_ahead_bytes(500, 6, np.float64), "--memory-limit 400 MiB")
    with caplog.at_level(logging.INFO, logger="streamclust.engine.backend"):
        capped = fit_streaming(StreamingGaussianMixture(3, **kw, **TORCH), blobs, host_room=room)
    assert sizes[-1] == (6, 500, np.float64)  # 2 batches of 500 float64 rows, read and pinned, fill the room
    assert read_ahead_bytes(501, 6, np.float64) > room.bytes
    assert ("on cuda:0 a batch is 500 rows (0 MiB in float64), not the 65536 rows (3 MiB) a GPU needs to be busy: "
            "--memory-limit 400 MiB leaves room for no more") in caplog.text
    assert_same_gmm(capped, ref)
    free = fit_streaming(StreamingGaussianMixture(3, **kw, **TORCH), blobs)
    assert sizes[-1] == (6, 65536, np.float64)  # no limit: a GPU's batch, as before
    assert_same_gmm(free, ref)
    km = fit_streaming(StreamingKMeans(4, method="lloyd", batch_size=100, random_state=0, **TORCH),
                       blobs.astype(np.float32), host_room=room)
    assert sizes[-1] == (6, 1000, np.float32)  # stored float32: twice the rows in the same room
    km_ref = StreamingKMeans(4, method="lloyd", batch_size=100, random_state=0, **NUMPY).fit(blobs.astype(np.float32))
    _close(km.cluster_centers_, km_ref.cluster_centers_)
