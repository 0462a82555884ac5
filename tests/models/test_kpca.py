"""Tests of streamclust.models.kpca.StreamingKernelPCA."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import KernelPCA
from sklearn.exceptions import NotFittedError
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics import adjusted_rand_score
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from streamclust.engine import Checkpointer, fit_streaming
from streamclust.models.kpca import (
    StreamingKernelPCA,
    _FeatureMap,
    _InverseAccumulator,
    _nystroem_normalization,
    _ScatterAccumulator,
)
from .interrupting import Interrupted, interrupt_after

FITTED = ("components_", "eigenvalues_", "explained_variance_", "explained_variance_ratio_", "mean_",
          "landmarks_", "landmark_indices_", "normalization_", "gamma_", "n_landmarks_", "n_components_",
          "n_samples_", "n_features_in_")


def canonical_correlations(A, B):
    """Canonical correlations between the column spaces of two score matrices."""
    qa = np.linalg.qr(A - A.mean(axis=0))[0]
    qb = np.linalg.qr(B - B.mean(axis=0))[0]
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


def as_zarr(X, chunk_rows):
    arr = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(chunk_rows, *X.shape[1:]),
                            dtype=X.dtype)
    arr[:] = X
    return arr


def scaled_gamma(X):
    return 1.0 / (X.shape[1] * X.var())


def assert_same_fit(a, b):
    for attr in FITTED:
        assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)


@pytest.fixture(scope="module")
def digits():
    X = load_digits().data
    rng = np.random.default_rng(0)
    return np.vstack([X, X + rng.normal(0, 1.0, X.shape)])[:2500], np.concatenate([load_digits().target] * 2)[:2500]


# -------------------------------------------------------------------- agreement
@pytest.mark.parametrize("kernel", ["rbf", "poly", "cosine"])
def test_all_landmarks_equals_exact_kernel_pca(kernel):
    X, _ = make_blobs(200, 6, centers=4, random_state=1)
    params = dict(kernel=kernel, gamma=scaled_gamma(X) if kernel != "cosine" else None, degree=2)
    exact = KernelPCA(5, **params).fit(X)
    est = StreamingKernelPCA(5, n_landmarks=200, batch_size=37, random_state=0, **params).fit(X)
    assert_allclose(est.eigenvalues_, exact.eigenvalues_, rtol=1e-6)
    Z, Ze = est.transform(X), exact.transform(X)
    assert_allclose(np.abs(Z), np.abs(Ze), atol=1e-6 * np.abs(Ze).max())  # equal up to signs


def test_nystroem_map_is_sklearns():
    X, _ = make_blobs(120, 4, random_state=0)
    L = X[:40]
    nys = Nystroem(kernel="rbf", gamma=0.1, n_components=40, random_state=0).fit(L)
    fmap = _FeatureMap(L, _nystroem_normalization(np.exp(-0.1 * ((L[:, None] - L[None]) ** 2).sum(-1))), "rbf",
                       {"gamma": 0.1})
    # the same kernel approximation (the features differ by the order of the landmarks)
    assert_allclose(fmap(X) @ fmap(X).T, nys.transform(X) @ nys.transform(X).T, atol=1e-8)


@pytest.mark.parametrize("method", ["covariance", "randomized"])
def test_landmark_approximation_agrees_with_exact(digits, method):
    X, _ = digits
    k, g = 8, scaled_gamma(X)
    exact = KernelPCA(k, kernel="rbf", gamma=g, eigen_solver="arpack", random_state=0).fit_transform(X)
    est = StreamingKernelPCA(k, gamma=g, n_landmarks=400, method=method, batch_size=500, random_state=0).fit(X)
    Z = est.transform(X)
    cc = canonical_correlations(exact, Z)
    assert cc.mean() >= 0.95, cc
    # clusterings of either reduction agree
    a = KMeans(10, n_init=4, random_state=0).fit_predict(exact)
    b = KMeans(10, n_init=4, random_state=0).fit_predict(Z)
    assert adjusted_rand_score(a, b) >= 0.8


def test_gamma_scale_and_default():
    X, _ = make_blobs(100, 5, random_state=0)
    est = StreamingKernelPCA(3, gamma="scale", n_landmarks=50, random_state=0).fit(X)
    assert est.gamma_ == pytest.approx(1.0 / (5 * est.landmarks_.var()))
    assert StreamingKernelPCA(3, n_landmarks=50).fit(X).gamma_ == pytest.approx(1 / 5)
    assert np.isnan(StreamingKernelPCA(3, kernel="cosine", n_landmarks=50).fit(X).gamma_)


def test_auto_landmarks_and_all_components():
    X, _ = make_blobs(60, 3, random_state=0)
    est = StreamingKernelPCA(batch_size=16).fit(X)
    assert est.n_landmarks_ == 60 and est.n_components_ == 60
    assert est.transform(X).shape == (60, 60)
    assert np.all(np.diff(est.explained_variance_) <= 1e-12)


# ---------------------------------------------------------------------- inputs
def test_zarr_dask_and_uint8_images_equal_numpy():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(150, 4, 4, 3), dtype=np.uint8)
    flat = imgs.reshape(150, -1).astype(np.float64)
    params = dict(n_components=4, gamma="scale", n_landmarks=60, batch_size=32, random_state=3)
    ref = StreamingKernelPCA(**params).fit(flat)
    for X in (as_zarr(imgs, 17), da.from_array(imgs, chunks=(23, 4, 4, 3))):
        est = StreamingKernelPCA(**params).fit(X)
        assert_allclose(est.components_, ref.components_, rtol=1e-9, atol=1e-12)
        assert_allclose(est.transform(X), ref.transform(flat), rtol=1e-8, atol=1e-10)


def test_row_subset():
    X, _ = make_blobs(300, 5, random_state=0)
    rows = np.arange(0, 300, 3)
    a = fit_streaming(StreamingKernelPCA(3, n_landmarks=50, batch_size=16, random_state=0), as_zarr(X, 31), rows=rows)
    b = StreamingKernelPCA(3, n_landmarks=50, batch_size=16, random_state=0).fit(X[rows])
    assert_same_fit(a, b)


def test_inverse_transform_linear_kernel_matches_pca_reconstruction():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 12)) + 0.05 * rng.normal(size=(400, 12)) + 5.0
    est = StreamingKernelPCA(3, kernel="linear", n_landmarks=100, fit_inverse_transform=True, alpha=1e-8,
                             batch_size=64, random_state=0).fit(X)
    Xr = est.inverse_transform(est.transform(X))
    assert np.abs(Xr - X).mean() < 0.06
    assert est.inverse_components_.shape == (3, 12)


def test_accumulators_merge():
    X, _ = make_blobs(500, 4, random_state=0)
    fmap = _FeatureMap(X[:30], np.eye(30), "rbf", {"gamma": 0.2})
    est = StreamingKernelPCA(3, n_landmarks=30, random_state=0).fit(X)
    for make in (lambda: _ScatterAccumulator(fmap, 30), lambda: _InverseAccumulator(est._projector(), 3, 4)):
        whole, left, right = make(), make(), make()
        for lo in range(0, 500, 70):
            whole.update(X[lo : lo + 70], lo)
            (left if lo < 250 else right).update(X[lo : lo + 70], lo)
        left.merge(right)
        a, b = left.state_dict(), whole.state_dict()
        if hasattr(whole, "_full"):
            assert_allclose(left.result()[1], whole.result()[1], rtol=1e-9, atol=1e-9)
        else:
            for x, y in zip(left.result(0.1), whole.result(0.1)):
                assert_allclose(x, y, rtol=1e-9, atol=1e-9)
        assert a["n"] == b["n"]


# ----------------------------------------------------------------------- resume


@pytest.mark.parametrize(("method", "stop_at"), [("covariance", 3), ("covariance", 8 + 3), ("covariance", 16 + 5),
                                                 ("randomized", 2 * 8 + 4)])
def test_resume_after_interruption_is_identical(tmp_path, method, stop_at):
    X, _ = make_blobs(1000, 6, centers=5, random_state=0)  # 8 batches of 128 per pass
    params = dict(n_components=4, n_landmarks=120, method=method, fit_inverse_transform=True, batch_size=128,
                  random_state=5, n_power_iter=2)
    full = StreamingKernelPCA(**params).fit(X)
    path = tmp_path / "kpca.ckpt.npz"
    with pytest.raises(Interrupted):
        fit_streaming(StreamingKernelPCA(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                      progress=interrupt_after(stop_at))
    resumed = fit_streaming(StreamingKernelPCA(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0))
    assert_same_fit(resumed, full)
    assert_array_equal(resumed.inverse_components_, full.inverse_components_)


# ----------------------------------------------------------------------- errors
def test_errors():
    X, _ = make_blobs(50, 3, random_state=0)
    with pytest.raises(ValueError, match="n_landmarks=80 is larger than the data"):
        StreamingKernelPCA(2, n_landmarks=80).fit(X)
    with pytest.raises(InvalidParameterError, match="kernel"):
        StreamingKernelPCA(2, kernel="gaussian").fit(X)
    with pytest.raises(ValueError, match="n_components=40 must be at most"):
        StreamingKernelPCA(40, n_landmarks=30).fit(X)
    with pytest.raises(NotFittedError):
        StreamingKernelPCA(2).transform(X)
    est = StreamingKernelPCA(2, n_landmarks=30).fit(X)
    with pytest.raises(AttributeError, match="fit_inverse_transform=True"):
        est.inverse_transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="3 features"):
        est.transform(np.zeros((2, 4)))


# --------------------------------------------------------------- sklearn checks
@parametrize_with_checks(
    [
        StreamingKernelPCA(2, batch_size=7, random_state=0),
        StreamingKernelPCA(2, method="randomized", batch_size=7, random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
