"""Tests of streamclust.models.agglomerative.StreamingAgglomerative."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import AgglomerativeClustering
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from streamclust.engine import Checkpointer, fit_streaming
from streamclust.models.agglomerative import (
    StreamingAgglomerative,
    _SubclusterStats,
    cut_linkage,
    weighted_linkage,
)
from .interrupting import Interrupted, interrupt_after

FITTED = ("labels_", "n_clusters_", "cluster_centers_", "cluster_sizes_", "inertia_", "subcluster_centers_",
          "subcluster_sizes_", "subcluster_labels_", "subcluster_inertia_", "children_", "distances_", "n_leaves_",
          "n_iter_", "n_features_in_")


def assert_same_fit(a, b):
    for attr in FITTED:
        assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)


def as_zarr(X, chunk_rows):
    arr = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(chunk_rows, *X.shape[1:]),
                            dtype=X.dtype)
    arr[:] = X
    return arr


# ----------------------------------------------------------------------- linkage
@pytest.mark.parametrize("method", ["ward", "average", "complete", "single"])
def test_unit_weights_equal_scipy_linkage(method):
    X = np.random.default_rng(0).normal(size=(120, 4))
    Z = weighted_linkage(X, np.ones(120), method)
    ref = linkage(X, method)
    assert_allclose(Z[:, 2], ref[:, 2], rtol=1e-12, atol=1e-12)
    assert_array_equal(Z[:, 3], ref[:, 3])
    assert adjusted_rand_score(cut_linkage(Z, 6), fcluster(ref, 6, "maxclust")) == 1.0


def test_ward_unit_weights_equal_sklearn():
    X, _ = make_blobs(150, 5, centers=5, cluster_std=3.0, random_state=2)
    labels = cut_linkage(weighted_linkage(X, np.ones(150)), 5)
    assert adjusted_rand_score(labels, AgglomerativeClustering(5).fit_predict(X)) == 1.0


@pytest.mark.parametrize("method", ["ward", "average"])
def test_weights_equal_replicated_rows(method):
    rng = np.random.default_rng(1)
    base, counts = rng.normal(size=(50, 3)), rng.integers(1, 6, 50)
    ref = linkage(np.repeat(base, counts, axis=0), method)
    Z = weighted_linkage(base, counts, method)
    # the top merges (above the zero-height merges of the copies) are the same
    assert_allclose(Z[:, 2], ref[-49:, 2], rtol=1e-10)
    assert adjusted_rand_score(np.repeat(cut_linkage(Z, 4), counts), fcluster(ref, 4, "maxclust")) == 1.0


def test_linkage_errors():
    with pytest.raises(ValueError, match="linkage must be one of"):
        weighted_linkage(np.zeros((3, 2)), np.ones(3), "centroid")
    with pytest.raises(ValueError, match="positive"):
        weighted_linkage(np.zeros((3, 2)), np.array([1.0, 0.0, 1.0]))


# -------------------------------------------------------------------- agreement
def test_blobs_agree_with_exact_ward():
    X, _ = make_blobs(3000, 8, centers=6, cluster_std=2.0, random_state=0)
    exact = AgglomerativeClustering(6).fit_predict(X)
    est = StreamingAgglomerative(6, n_subclusters=200, batch_size=256, random_state=0).fit(X)
    assert adjusted_rand_score(exact, est.labels_) >= 0.99


def test_digits_agree_with_exact_ward():
    X = load_digits().data
    exact = AgglomerativeClustering(10).fit_predict(X)
    est = StreamingAgglomerative(10, n_subclusters=300, batch_size=256, random_state=0).fit(X)
    ari = adjusted_rand_score(exact, est.labels_)
    # measured 0.81 with this seed; 0.75-0.98 over seeds and sub-cluster counts (exact Ward's
    # 10-cluster cut of the digits is sensitive to keeping sub-clusters whole): see
    # scripts/bench_methods.py
    assert ari >= 0.75, ari


def test_fitted_statistics_are_exact():
    X, _ = make_blobs(800, 4, centers=4, random_state=3)
    est = StreamingAgglomerative(4, n_subclusters=40, batch_size=100, random_state=0).fit(X)
    for j in range(est.n_clusters_):
        rows = X[est.labels_ == j]
        assert est.cluster_sizes_[j] == len(rows)
        assert_allclose(est.cluster_centers_[j], rows.mean(axis=0), rtol=1e-10)
    wcss = sum(((X[est.labels_ == j] - est.cluster_centers_[j]) ** 2).sum() for j in range(est.n_clusters_))
    assert est.inertia_ == pytest.approx(wcss, rel=1e-9)
    assert est.subcluster_sizes_.sum() == 800
    assert_array_equal(est.predict(X), est.labels_)
    assert_array_equal(est.predict(as_zarr(X, 77)), est.labels_)
    assert np.all(np.diff(est.distances_) >= 0) and est.children_.shape == (est.n_leaves_ - 1, 2)


@pytest.mark.parametrize("linkage_", ["average", "complete", "single"])
def test_other_linkages_on_separated_blobs(linkage_):
    X, y = make_blobs(1000, 3, centers=3, cluster_std=0.5, random_state=0)
    est = StreamingAgglomerative(3, linkage=linkage_, n_subclusters=50, batch_size=128, random_state=0).fit(X)
    assert adjusted_rand_score(y, est.labels_) == 1.0


def test_zarr_row_subset_and_minibatch():
    X, _ = make_blobs(600, 5, centers=4, random_state=0)
    rows = np.arange(0, 600, 2)
    a = fit_streaming(StreamingAgglomerative(4, n_subclusters=30, batch_size=50, random_state=0), as_zarr(X, 41),
                      rows=rows)
    b = StreamingAgglomerative(4, n_subclusters=30, batch_size=50, random_state=0).fit(X[rows])
    assert_same_fit(a, b)
    mb = StreamingAgglomerative(4, n_subclusters=30, subcluster_method="minibatch", batch_size=50,
                                random_state=0).fit(X)
    assert adjusted_rand_score(mb.labels_, StreamingAgglomerative(4, n_subclusters=30, random_state=0)
                               .fit(X).labels_) >= 0.95


def test_subcluster_stats_merge():
    X, _ = make_blobs(500, 3, random_state=0)
    centers = X[:6].copy()
    whole, left, right = (_SubclusterStats(centers, 500) for _ in range(3))
    for lo in range(0, 500, 60):
        whole.update(X[lo : lo + 60], lo)
        (left if lo < 240 else right).update(X[lo : lo + 60], lo)
    left.merge(right)
    for key, value in whole.state_dict().items():
        assert_allclose(left.state_dict()[key], value, rtol=1e-10, atol=1e-8, err_msg=key)


# ----------------------------------------------------------------------- resume


@pytest.mark.parametrize(("method", "stop_at"), [("lloyd", 3), ("lloyd", 8 + 5), ("minibatch", 8 + 2)])
def test_resume_after_interruption_is_identical(tmp_path, method, stop_at):
    X, _ = make_blobs(1000, 5, centers=5, cluster_std=3.0, random_state=0)  # 8 batches of 128
    params = dict(n_clusters=5, n_subclusters=40, subcluster_method=method, batch_size=128, random_state=4)
    full = StreamingAgglomerative(**params).fit(X)
    path = tmp_path / "agg.ckpt.npz"
    with pytest.raises(Interrupted):
        fit_streaming(StreamingAgglomerative(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                      progress=interrupt_after(stop_at))
    resumed = fit_streaming(StreamingAgglomerative(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0))
    assert_same_fit(resumed, full)


def test_resume_during_the_labelling_pass(tmp_path):
    X, _ = make_blobs(1000, 5, centers=5, random_state=0)
    params = dict(n_clusters=5, n_subclusters=40, batch_size=128, random_state=4, max_iter=2)
    full = StreamingAgglomerative(**params).fit(X)
    names = []
    fit_streaming(StreamingAgglomerative(**params), X, progress=lambda name, done, n: names.append(name))
    stop = names.index("agglomerative: sub-cluster labels") + 3
    path = tmp_path / "agg.ckpt.npz"
    with pytest.raises(Interrupted):
        fit_streaming(StreamingAgglomerative(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                      progress=interrupt_after(stop))
    resumed = fit_streaming(StreamingAgglomerative(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0))
    assert_same_fit(resumed, full)


# ----------------------------------------------------------------------- errors
def test_errors():
    X, _ = make_blobs(30, 3, random_state=0)
    with pytest.raises(ValueError, match="n_samples=30 should be >= n_clusters=40"):
        StreamingAgglomerative(40).fit(X)
    with pytest.raises(InvalidParameterError, match="linkage"):
        StreamingAgglomerative(2, linkage="centroid").fit(X)
    with pytest.raises(NotFittedError):
        StreamingAgglomerative(2).predict(X)
    with pytest.warns(UserWarning, match="only 1 distinct sub-clusters"):
        est = StreamingAgglomerative(3, n_subclusters=5).fit(np.ones((20, 2)))
    assert est.n_clusters_ == 1 and set(est.labels_) == {0}


# --------------------------------------------------------------- sklearn checks
@parametrize_with_checks([StreamingAgglomerative(3, n_subclusters=12, batch_size=7, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
