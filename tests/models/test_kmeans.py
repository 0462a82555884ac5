"""Tests of streamclust.models.kmeans.StreamingKMeans."""

from __future__ import annotations

import contextlib

import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from streamclust.engine import Checkpointer, RowSource, fit_streaming
from streamclust.models.kmeans import StreamingKMeans, _LabelAccumulator, _LloydAccumulator
from .interrupting import Interrupted, interrupt_after

FITTED = ("cluster_centers_", "labels_", "inertia_", "cluster_sizes_", "n_iter_", "n_steps_", "n_features_in_")


def blobs(n=3000, d=8, k=6, std=1.5, seed=0):
    X, y = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std, random_state=seed)
    return X, y


def as_zarr(X, chunk_rows):
    arr = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(chunk_rows, *X.shape[1:]), dtype=X.dtype
    )
    arr[:] = X
    return arr


def assert_same_fit(a, b):
    for attr in FITTED:
        assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)


# ------------------------------------------------------------------------ lloyd
@pytest.mark.parametrize("batch_size", [97, 1000, 5000])
def test_lloyd_equals_sklearn_with_same_init(batch_size):
    X, _ = blobs(std=3.0)
    init = X[np.random.default_rng(1).choice(X.shape[0], 6, replace=False)]
    ref = KMeans(6, init=init, n_init=1, algorithm="lloyd", max_iter=100, tol=1e-4).fit(X)
    est = StreamingKMeans(6, method="lloyd", init=init, batch_size=batch_size, max_iter=100, tol=1e-4).fit(X)
    assert ref.n_iter_ > 3  # a real run, not the first iteration
    assert_allclose(est.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-8)
    assert_array_equal(est.labels_, ref.labels_)
    assert_allclose(est.inertia_, ref.inertia_, rtol=1e-8)
    assert est.n_iter_ == ref.n_iter_
    assert est.labels_.dtype == np.int32 and est.labels_.shape == (X.shape[0],)
    assert_array_equal(est.cluster_sizes_, np.bincount(ref.labels_, minlength=6))


def test_lloyd_with_empty_cluster_relocates_like_sklearn():
    X, _ = blobs(n=1000, d=5, k=4, seed=1)
    init = X[:4].copy()
    init[3] = 1e3  # attracts no point: relocated to the farthest point
    ref = KMeans(4, init=init, n_init=1, algorithm="lloyd").fit(X)
    est = StreamingKMeans(4, method="lloyd", init=init, batch_size=77).fit(X)
    assert np.isfinite(est.cluster_centers_).all()
    assert_allclose(est.cluster_centers_, ref.cluster_centers_, atol=1e-8)
    assert_array_equal(est.labels_, ref.labels_)
    assert (est.cluster_sizes_ > 0).all()


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_more_clusters_than_distinct_points_gives_no_nan(method):
    X = np.repeat(np.arange(3.0), 50)[:, None] * np.ones((1, 2))
    # as sklearn's KMeans (not MiniBatchKMeans), Lloyd warns about the clusters left empty
    warns = pytest.warns(ConvergenceWarning, match=r"distinct clusters \(3\) found smaller than n_clusters \(5\)")
    with warns if method == "lloyd" else contextlib.nullcontext():
        est = StreamingKMeans(5, method=method, batch_size=16, random_state=0).fit(X)
    assert np.isfinite(est.cluster_centers_).all()
    assert est.inertia_ == pytest.approx(0.0, abs=1e-12)
    init = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [50.0, 50.0], [-50.0, 9.0]])
    with pytest.warns(ConvergenceWarning) if method == "lloyd" else contextlib.nullcontext():
        est = StreamingKMeans(5, method=method, init=init, batch_size=16).fit(X)
    assert np.isfinite(est.cluster_centers_).all()


def test_default_lloyd_close_to_sklearn_kmeans():
    X, _ = blobs(n=4000, k=8, std=2.0)
    ref = KMeans(8, n_init=10, random_state=0).fit(X).inertia_
    est = StreamingKMeans(8, method="lloyd", batch_size=256, random_state=0).fit(X)
    assert est.inertia_ <= 1.02 * ref
    assert_allclose(est.score(X), -est.inertia_, rtol=1e-12)


# -------------------------------------------------------------------- minibatch
@pytest.mark.parametrize(
    ("params", "order"),
    [
        ({}, "shuffled"),
        ({}, "sorted by class"),
        # class-sorted batches: reassignments pick rows of the class being read (see Notes)
        ({"init_sample_size": 100, "n_init": 3, "reassignment_ratio": 0.0}, "sorted by class"),
        # a 3-rows-per-cluster sample: the mini-batch updates do the work
        ({"init_sample_size": 24, "n_init": 3}, "shuffled"),
        ({"init": "random", "init_sample_size": 200, "n_init": 10}, "shuffled"),
    ],
)
def test_minibatch_close_to_sklearn_kmeans(params, order):
    X, y = blobs(n=4000, k=8, std=2.0)
    if order != "shuffled":
        X = X[np.argsort(y, kind="stable")]
    ref = KMeans(8, n_init=10, random_state=0).fit(X).inertia_
    est = StreamingKMeans(8, batch_size=128, random_state=0, **params).fit(X)
    assert est.inertia_ <= 1.05 * ref
    assert 1 <= est.n_iter_ < 100
    # the early stop fires after any mini-batch: n_iter_ counts the epochs started
    assert est.n_iter_ == -(-est.n_steps_ // 32)
    assert_array_equal(est.predict(X), est.labels_)


def test_minibatch_epoch_equals_sklearn_partial_fit():
    """One epoch from an array init, without reassignment, is MiniBatchKMeans.partial_fit per batch."""
    X, _ = blobs(n=1000, d=5, k=4)
    init = X[:4].copy()
    ref = MiniBatchKMeans(4, init=init, n_init=1, reassignment_ratio=0.0, batch_size=100)
    mine = StreamingKMeans(4, init=init, reassignment_ratio=0.0, batch_size=100)
    for lo in range(0, 1000, 100):
        ref.partial_fit(X[lo : lo + 100])
        mine.partial_fit(X[lo : lo + 100])
        assert_allclose(mine.cluster_centers_, ref.cluster_centers_, atol=1e-10)
        assert_array_equal(mine.labels_, ref.labels_)
        assert_allclose(mine.inertia_, ref.inertia_, rtol=1e-10)
    fitted = StreamingKMeans(4, init=init, reassignment_ratio=0.0, batch_size=100, max_iter=1).fit(X)
    assert_allclose(fitted.cluster_centers_, ref.cluster_centers_, atol=1e-10)
    assert fitted.n_iter_ == 1 and fitted.n_steps_ == 10


def test_partial_fit_seeds_with_kmeans_plusplus_and_continues_a_fit():
    X, _ = blobs(n=2000, k=5)
    est = StreamingKMeans(5, random_state=0)
    for lo in range(0, 2000, 250):
        est.partial_fit(X[lo : lo + 250])
    assert est.n_steps_ == 8 and est.labels_.shape == (250,)
    assert -est.score(X) <= 1.05 * KMeans(5, n_init=5, random_state=0).fit(X).inertia_
    fitted = StreamingKMeans(5, method="lloyd", batch_size=500, random_state=0).fit(X)
    before = fitted.cluster_centers_.copy()
    fitted.partial_fit(X[:100])
    assert np.abs(fitted.cluster_centers_ - before).max() < 0.1
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_clusters=5"):
        StreamingKMeans(5).partial_fit(X[:3])


# -------------------------------------------------------------------- lazy input
@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_zarr_with_odd_chunks_equals_numpy(method):
    X, _ = blobs(n=1500)
    params = dict(n_clusters=6, method=method, batch_size=128, random_state=4, init_sample_size=300)
    a = StreamingKMeans(**params).fit(X)
    b = StreamingKMeans(**params).fit(as_zarr(X, 37))
    c = StreamingKMeans(**params).fit(da.from_array(X, chunks=(101, 8)))
    assert_same_fit(a, b)
    assert_same_fit(a, c)
    Z = as_zarr(X[:500], 23)
    assert_array_equal(b.predict(Z), a.predict(X[:500]))
    assert_array_equal(b.transform(Z), a.transform(X[:500]))
    assert b.score(Z) == a.score(X[:500])


def test_uint8_image_stack_in_zarr():
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, size=(3, 6, 6, 3))
    which = rng.integers(0, 3, size=600)
    images = np.clip(protos[which] + rng.normal(0, 10, (600, 6, 6, 3)), 0, 255).astype(np.uint8)
    est = StreamingKMeans(3, method="lloyd", batch_size=64, random_state=0).fit(as_zarr(images, 41))
    flat = images.reshape(600, -1).astype(np.float64)
    ref = KMeans(3, n_init=5, random_state=0).fit(flat)
    assert est.n_features_in_ == 108
    assert_allclose(est.inertia_, ref.inertia_, rtol=1e-8)
    assert est.transform(as_zarr(images[:10], 3)).shape == (10, 3)


def test_row_subset():
    X, _ = blobs(n=900)
    rows = np.flatnonzero(np.arange(900) % 3 != 1)
    a = fit_streaming(StreamingKMeans(6, batch_size=64, random_state=0), as_zarr(X, 31), rows=rows)
    b = StreamingKMeans(6, batch_size=64, random_state=0).fit(X[rows])
    assert_same_fit(a, b)


# ------------------------------------------------------------------------ merge
def test_pass_accumulators_merge():
    X, _ = blobs(n=600, d=4, k=3)
    centers = X[:3].copy()
    for make in (lambda: _LloydAccumulator(centers, track_moments=True), lambda: _LabelAccumulator(centers, 600)):
        whole, left, right = make(), make(), make()
        for lo in range(0, 600, 70):
            whole.update(X[lo : lo + 70], lo)
            (left if lo < 300 else right).update(X[lo : lo + 70], lo)
        left.merge(right)
        for key, value in whole.state_dict().items():
            assert_allclose(left.state_dict()[key], value, rtol=1e-10, atol=1e-8, err_msg=key)


# ----------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("method", "stop_at"),
    [("lloyd", 4), ("lloyd", 3 * 12 + 5), ("minibatch", 12 + 7), ("minibatch", 2 * 12 + 11)],
)
def test_resume_after_interruption_is_identical(tmp_path, method, stop_at):
    X, _ = blobs(n=1500, std=3.0)  # 12 batches of 128 per pass
    params = dict(n_clusters=6, method=method, batch_size=128, random_state=11, init_sample_size=60)
    full = StreamingKMeans(**params).fit(X)
    # mini-batch: the early stop fires in epoch 2, before the interruption at 2 * 12 + 11
    assert full.n_iter_ >= (3 if method == "lloyd" else 2)
    path = tmp_path / "km.ckpt.npz"
    with pytest.raises(Interrupted):
        fit_streaming(StreamingKMeans(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                      progress=interrupt_after(stop_at))
    firsts = []
    resumed = fit_streaming(StreamingKMeans(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                            progress=lambda name, done, n: firsts.append(done))
    assert firsts[0] > 128
    assert_same_fit(resumed, full)


# ----------------------------------------------------------------------- errors
def test_errors():
    X, _ = blobs(n=50, d=3)
    with pytest.raises(ValueError, match="n_samples=50 should be >= n_clusters=51"):
        StreamingKMeans(51).fit(X)
    with pytest.raises(ValueError, match="n_samples=50 should be >= n_clusters=51"):
        StreamingKMeans(51).fit(as_zarr(X, 7))
    bad = X.copy()
    bad[33, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StreamingKMeans(3, batch_size=8).fit(bad)
    with pytest.raises(ValueError, match="NaN"):
        StreamingKMeans(3, batch_size=8).fit(as_zarr(bad, 9))
    with pytest.raises(ValueError, match=r"initial centers \(3, 2\) does not match the number of features"):
        StreamingKMeans(3, init=np.zeros((3, 2))).fit(X)
    with pytest.raises(ValueError, match=r"initial centers \(2, 3\) does not match the number of clusters 3"):
        StreamingKMeans(3, init=np.zeros((2, 3))).fit(X)
    with pytest.raises(NotFittedError):
        StreamingKMeans(3).predict(X)


# --------------------------------------------------------------- sklearn checks
@parametrize_with_checks(
    [
        StreamingKMeans(n_clusters=3, method="lloyd", batch_size=7, random_state=0),
        StreamingKMeans(n_clusters=3, method="minibatch", batch_size=7, random_state=0),
    ],
    # as for sklearn's KMeans and MiniBatchKMeans: the random seeding sees other rows
    expected_failed_checks=lambda est: {
        "check_sample_weight_equivalence_on_dense_data":
            "the seeding draws other rows from a weighted set than from a repeated one",
    },
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- sample_weight
def weights_for(n, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 5, size=n) if integer else rng.uniform(0.1, 3.0, size=n)


@pytest.mark.parametrize("batch_size", [97, 5000])
def test_weighted_lloyd_equals_sklearn_with_same_init(batch_size):
    X, _ = blobs(std=3.0)
    w = weights_for(X.shape[0])
    init = X[np.random.default_rng(1).choice(X.shape[0], 6, replace=False)]
    ref = KMeans(6, init=init, n_init=1, algorithm="lloyd", max_iter=100, tol=1e-4).fit(X, sample_weight=w)
    est = StreamingKMeans(6, method="lloyd", init=init, batch_size=batch_size).fit(X, sample_weight=w)
    assert ref.n_iter_ > 3
    assert_allclose(est.cluster_centers_, ref.cluster_centers_, rtol=0, atol=1e-8)
    assert_array_equal(est.labels_, ref.labels_)
    assert_allclose(est.inertia_, ref.inertia_, rtol=1e-8)
    assert est.n_iter_ == ref.n_iter_
    # the unweighted fit is another one: the weights are used
    assert not np.allclose(StreamingKMeans(6, method="lloyd", init=init, batch_size=batch_size).fit(X).inertia_,
                           est.inertia_)


def test_weighted_lloyd_relocates_empty_cluster_like_sklearn():
    X = np.array([[-1.0], [1.0]])
    w = np.array([1.9, 0.1])
    init = np.array([[-1.0], [10.0]])
    ref = KMeans(2, init=init, n_init=1).fit(X, sample_weight=w)
    est = StreamingKMeans(2, method="lloyd", init=init, batch_size=1).fit(X, sample_weight=w)
    assert_allclose(est.cluster_centers_, ref.cluster_centers_)
    assert_allclose(est.inertia_, ref.inertia_, atol=1e-12)


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_integer_weights_equal_repeated_rows(method):
    """With the same initial centres (and, for mini-batches, the repeated rows in the same batch),
    an integer weight is the row repeated."""
    X, _ = blobs(n=600, std=2.5)
    w = weights_for(600, integer=True)
    init = X[:6].copy()
    params = dict(method=method, init=init, reassignment_ratio=0.0, max_iter=5, tol=0.0, max_no_improvement=None)
    weighted = StreamingKMeans(6, batch_size=60, **params).fit(X, sample_weight=w)
    rep = np.repeat(X, w, axis=0)
    if method == "lloyd":
        repeated = StreamingKMeans(6, batch_size=97, **params).fit(rep)
    else:  # batch b of the weighted fit is the repetition of rows 60 b .. 60 b + 59
        repeated = StreamingKMeans(6, batch_size=60, **params)
        bounds = np.concatenate([[0], np.cumsum(w)])
        for _ in range(weighted.n_iter_):
            for lo in range(0, 600, 60):
                repeated.partial_fit(rep[bounds[lo] : bounds[lo + 60]])
    assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, rtol=1e-10, atol=1e-10)
    if method == "lloyd":
        assert_array_equal(np.repeat(weighted.labels_, w), repeated.labels_)
        assert_allclose(weighted.inertia_, repeated.inertia_, rtol=1e-10)


def test_weighted_minibatch_epoch_equals_sklearn_partial_fit():
    X, _ = blobs(n=1000, d=5, k=4)
    w = weights_for(1000)
    init = X[:4].copy()
    ref = MiniBatchKMeans(4, init=init, n_init=1, reassignment_ratio=0.0, batch_size=100)
    for lo in range(0, 1000, 100):
        ref.partial_fit(X[lo : lo + 100], sample_weight=w[lo : lo + 100])
    fitted = StreamingKMeans(4, init=init, reassignment_ratio=0.0, batch_size=100, max_iter=1).fit(X, sample_weight=w)
    assert_allclose(fitted.cluster_centers_, ref.cluster_centers_, atol=1e-10)


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_weighted_fit_on_zarr_dask_and_resumed_equals_numpy(tmp_path, method):
    X, _ = blobs(n=1500, std=3.0)  # 12 batches of 128 per pass
    w = weights_for(1500, seed=3)
    params = dict(n_clusters=6, method=method, batch_size=128, random_state=11, init_sample_size=60)
    full = StreamingKMeans(**params).fit(X, sample_weight=w)
    assert full.n_iter_ >= 2
    assert_same_fit(StreamingKMeans(**params).fit(as_zarr(X, 37), sample_weight=as_zarr(w, 100)), full)
    assert_same_fit(StreamingKMeans(**params).fit(da.from_array(X, chunks=(101, 8)), sample_weight=w), full)
    path = tmp_path / "km.ckpt.npz"
    with pytest.raises(Interrupted):
        fit_streaming(StreamingKMeans(**params), X, sample_weight=w,
                      checkpoint=Checkpointer(path, "k", every_seconds=0), progress=interrupt_after(12 + 7))
    resumed = fit_streaming(StreamingKMeans(**params), X, sample_weight=w,
                            checkpoint=Checkpointer(path, "k", every_seconds=0))
    assert_same_fit(resumed, full)


def test_weighted_pass_in_dask_blocks_equals_in_process():
    """What a dask task does (a copy of the pass's accumulator over a block of rows, merged):
    every block takes its rows' weights by offset."""
    from streamclust.engine.cluster import _accumulate

    X, _ = blobs(n=1000, d=4, k=3)
    w = weights_for(1000)
    source = RowSource(as_zarr(X, 64))
    centers = X[:3].copy()
    for make in (lambda: _LloydAccumulator(centers, track_moments=True, sample_weight=w),
                 lambda: _LabelAccumulator(centers, 1000, sample_weight=w)):
        whole = make()
        for lo, Xb in source.iter_batches(100):
            whole.update(Xb, lo)
        parts = [_accumulate(make(), source, lo, hi, 100, np.float64) for lo, hi in [(0, 384), (384, 768), (768, 1000)]]
        for part in parts[1:]:
            parts[0].merge(part)
        for key, value in whole.state_dict().items():
            assert_allclose(parts[0].state_dict()[key], value, rtol=1e-10, atol=1e-8, err_msg=key)


def test_sample_weight_validation():
    X, _ = blobs(n=50, d=3)
    with pytest.raises(ValueError, match="expected"):
        StreamingKMeans(3).fit(X, sample_weight=np.ones(49))
    with pytest.raises(ValueError, match="Negative"):
        StreamingKMeans(3).fit(X, sample_weight=-np.ones(50))
    with pytest.raises(ValueError, match="non-zero"):
        StreamingKMeans(3).fit(X, sample_weight=np.zeros(50))
    w = np.ones(50)
    StreamingKMeans(3, batch_size=7).fit(X, sample_weight=w)
    assert_array_equal(w, np.ones(50))  # not modified
    from streamclust.models import StreamingPCA

    with pytest.raises(TypeError, match="StreamingPCA does not take sample_weight"):
        fit_streaming(StreamingPCA(2), X, sample_weight=w)


# -------------------------------------------------- mini-batch early stopping
@pytest.mark.parametrize(("tol", "max_no_improvement"), [(1e-4, None), (0.0, 10)])
def test_minibatch_declared_convergence(tol, max_no_improvement):
    """scikit-learn's test of the two stopping rules, without its printed messages."""
    X, _, centers = make_blobs(centers=3, random_state=0, return_centers=True)
    km = StreamingKMeans(3, init=centers, batch_size=20, tol=tol, random_state=0, max_iter=10,
                         max_no_improvement=max_no_improvement).fit(X)
    assert 1 < km.n_iter_ < 10


def test_minibatch_stops_after_a_few_epochs_without_improvement():
    """The issue's case: the centres settle in the first epoch; the fit must not run all max_iter."""
    X, _ = blobs(n=4000, k=8, std=1.0)
    km = StreamingKMeans(8, batch_size=128, tol=0.0, max_iter=100, random_state=0).fit(X)
    assert 2 <= km.n_iter_ <= 4
    never = StreamingKMeans(8, batch_size=128, tol=0.0, max_iter=6, max_no_improvement=None, random_state=0).fit(X)
    assert never.n_iter_ == 6 and never.n_steps_ == 6 * 32


# ---------------------------------------------------------------------- float32
@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_float32_input_gives_float32_attributes_from_float64_sums(method):
    X, _ = blobs(n=1200)
    X32 = X.astype(np.float32)
    km32 = StreamingKMeans(6, method=method, batch_size=100, random_state=0).fit(X32)
    km64 = StreamingKMeans(6, method=method, batch_size=100, random_state=0).fit(X32.astype(np.float64))
    assert km32.cluster_centers_.dtype == np.float32 and km64.cluster_centers_.dtype == np.float64
    # the same float64 computation, cast at the end
    assert_array_equal(km32.cluster_centers_, km64.cluster_centers_.astype(np.float32))
    assert_array_equal(km32.labels_, km64.labels_)
    assert km32.inertia_ == km64.inertia_
    assert km32.transform(X32).dtype == np.float32 and km32.transform(X).dtype == np.float64
    assert km32.fit_transform(as_zarr(X32, 77)).dtype == np.float32
    assert_array_equal(km32.predict(X32), km64.predict(X32))
    km32.partial_fit(X32[:50])
    assert km32.cluster_centers_.dtype == np.float32
    assert StreamingKMeans(6, method=method).fit(X.astype(np.int64)).cluster_centers_.dtype == np.float64


# ------------------------------------------------------------- init parameters
def test_init_warnings_and_auto():
    X, _ = blobs(n=300, k=3)
    init = X[:3].copy()
    with pytest.warns(RuntimeWarning, match="Explicit initial center position passed: performing only one init"):
        km = StreamingKMeans(3, init=init, n_init=4, batch_size=50).fit(X)
    assert km._n_init == 1
    with pytest.warns(RuntimeWarning, match=r"init_size\)=2 should be larger than n_clusters=3"):
        km = StreamingKMeans(3, init_sample_size=2, batch_size=50).fit(X)
    assert km._init_size == 9
    assert StreamingKMeans(3, init_sample_size=5, batch_size=50).fit(X)._init_size == 5  # kept, as sklearn
    assert StreamingKMeans(30, batch_size=5).fit(X)._init_size == 90
    assert StreamingKMeans(3, n_init="auto").fit(X)._n_init == 1
    assert StreamingKMeans(3, n_init="auto", init="random", method="lloyd").fit(X)._n_init == 10
    assert StreamingKMeans(3, n_init="auto", init="random").fit(X)._n_init == 3


def test_callable_init_is_called_on_the_seeding_sample():
    X, _ = blobs(n=300, k=3)
    calls = []

    def init(sample, k, random_state):
        calls.append(sample.shape)
        return sample[:k] + 0.0

    km = StreamingKMeans(3, init=init, init_sample_size=120, batch_size=50, random_state=0).fit(X)
    assert calls == [(120, 8)]
    assert np.isfinite(km.cluster_centers_).all()
    with pytest.raises(ValueError, match="does not match the number of clusters 3"):
        StreamingKMeans(3, init=lambda s, k, random_state: s[:2]).fit(X)
