"""Tests of streamclust.models.pca.StreamingPCA."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from scipy.linalg import subspace_angles
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.utils.estimator_checks import parametrize_with_checks

from streamclust.engine import Checkpointer, fit_streaming
from streamclust.models.pca import StreamingPCA
from .interrupting import Interrupted, interrupt_after

FITTED = (
    "components_",
    "explained_variance_",
    "explained_variance_ratio_",
    "singular_values_",
    "mean_",
    "noise_variance_",
    "n_components_",
    "n_samples_",
    "n_features_in_",
)


def low_rank(n=1500, d=40, rank=5, noise=0.1, seed=0):
    """Rank-``rank`` signal with well separated variances, isotropic noise, an offset."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, rank)))
    scales = np.array([10.0, 7.0, 5.0, 3.5, 2.5])[:rank]
    return rng.normal(size=(n, rank)) * scales @ basis.T + noise * rng.normal(size=(n, d)) + 3.0


def as_zarr(X, chunk_rows, dtype=None):
    arr = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=X.shape,
        chunks=(chunk_rows, *X.shape[1:]),
        dtype=dtype or X.dtype,
    )
    arr[:] = X
    return arr


def assert_same_fit(a, b):
    for attr in FITTED:
        assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)


def assert_matches_pca(est, ref, k, angle_deg=1.0):
    assert est.explained_variance_ratio_.sum() >= 0.99 * ref.explained_variance_ratio_[:k].sum()
    angles = np.rad2deg(subspace_angles(est.components_[:k].T, ref.components_[:k].T))
    assert angles.max() < angle_deg
    assert_allclose(est.mean_, ref.mean_, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_randomized_matches_full_pca_on_low_rank_data(dtype):
    X = low_rank()
    est = StreamingPCA(5, batch_size=128, random_state=0, dtype=dtype).fit(X)
    ref = PCA(5, svd_solver="full").fit(X)
    assert_matches_pca(est, ref, 5, angle_deg=0.01)
    # well separated eigenvalues: each component agrees up to sign, and signs follow svd_flip
    assert_allclose(est.components_, ref.components_, atol=1e-4)
    assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-4)
    assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
    assert_allclose(est.singular_values_, ref.singular_values_, rtol=1e-4)
    assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-3)
    assert est.n_components_ == 5 and est.n_samples_ == X.shape[0]


def test_randomized_on_digits():
    X = load_digits().data
    est = StreamingPCA(10, batch_size=200, random_state=0).fit(X)
    ref = PCA(10, svd_solver="full").fit(X)
    assert_matches_pca(est, ref, 10, angle_deg=2.0)
    # the first four eigenvalues are well separated: components agree up to sign
    cos = np.abs(np.sum(est.components_[:4] * ref.components_[:4], axis=1))
    assert np.all(cos > 1 - 1e-6)
    assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-3)


def test_all_components_is_exact():
    X = load_digits().data[:, 8:24]
    est = StreamingPCA(batch_size=100, random_state=1, dtype="float64").fit(X)
    ref = PCA(svd_solver="full").fit(X)
    assert est.n_components_ == 16
    assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-8, atol=1e-10)
    assert_allclose(est.explained_variance_ratio_.sum(), 1.0)
    assert est.noise_variance_ == 0.0


def test_transform_inverse_transform_consistent():
    X = low_rank(n=600, d=20)
    est = StreamingPCA(5, batch_size=64, random_state=0, dtype="float64").fit(X)
    Z = est.transform(X)
    assert Z.shape == (600, 5) and Z.dtype == np.float64
    assert_allclose(Z, (X - est.mean_) @ est.components_.T, atol=1e-9)
    # projecting the reconstruction gives back the projections
    X_back = est.inverse_transform(Z)
    assert_allclose(est.transform(X_back), Z, atol=1e-8)
    # the reconstruction error is the noise
    assert np.mean((X - X_back) ** 2) < 0.02
    # float32 in, float32 out
    assert est.transform(X.astype(np.float32)).dtype == np.float32
    assert_allclose(est.fit_transform(X), Z, atol=1e-9)


def test_whiten():
    X = low_rank(n=800, d=20)
    white = StreamingPCA(3, whiten=True, batch_size=100, random_state=0).fit(X)
    plain = StreamingPCA(3, batch_size=100, random_state=0).fit(X)
    Z = white.transform(X)
    assert_allclose(Z.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    assert_allclose(white.inverse_transform(Z), plain.inverse_transform(plain.transform(X)), atol=1e-6)


def _sketch_accumulator():
    from streamclust.models.pca import _SketchAccumulator

    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(12, 5)))
    return _SketchAccumulator(Q, None, np.float64, "p")


def _scatter_accumulator():
    from streamclust.models._scatter import ScatterAccumulator

    return ScatterAccumulator(12)


@pytest.mark.parametrize("make", [_sketch_accumulator, _scatter_accumulator], ids=["sketch", "scatter"])
def test_accumulators_merge_like_one_pass(make):
    """Partial sums of two halves (other shifts), merged, equal one accumulator over all batches."""
    X = low_rank(n=300, d=12)
    whole, left, right = make(), make(), make()
    for lo in range(0, 300, 50):
        whole.update(X[lo : lo + 50], lo)
        (left if lo < 150 else right).update(X[lo : lo + 50], lo)
    left.merge(right)
    for got, want in zip(left.result(), whole.result()):
        assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["randomized", "incremental"])
def test_fraction_of_variance(method):
    X = low_rank(noise=0.5)
    est = StreamingPCA(0.9, method=method, batch_size=256, random_state=0).fit(X)
    ref = PCA(0.9, svd_solver="full").fit(X)
    assert est.n_components_ == ref.n_components_
    assert est.components_.shape == (ref.n_components_, X.shape[1])
    assert est.explained_variance_ratio_.sum() >= 0.9
    assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-3)


def test_fraction_not_reached_warns():
    X = np.random.default_rng(0).normal(size=(300, 30))
    with pytest.warns(UserWarning, match=r"asked for 0.99 of the variance, reached 0\.\d+ with 3 components: max_components=3"):
        est = StreamingPCA(0.99, max_components=3, batch_size=64, random_state=0).fit(X)
    assert est.n_components_ == 3


# ---------------------------------------------------------------- exact (covariance)
def spread_spectrum(n=1200, d=300, seed=0, dtype=np.float64):
    """Data whose variance is spread over many directions (as real images' is)."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(np.arange(1, d + 1))
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = rng.normal(size=(n, d)) * scales @ basis.T * 40 + 128
    return np.clip(X, 0, 255).astype(np.uint8) if dtype == np.uint8 else X


@pytest.mark.parametrize("n_components", [None, 7, 0.5, 0.95, 0.999])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_covariance_method_equals_sklearn_pca(n_components, dtype):
    """The exact method is scikit-learn's exact PCA: components, variances, noise, at any fraction."""
    X = spread_spectrum(dtype=dtype)
    est = StreamingPCA(n_components, method="covariance", batch_size=97).fit(as_zarr(X, 61))
    ref = PCA(n_components, svd_solver="full").fit(X.astype(np.float64))
    assert est.method_ == "covariance"
    assert est.n_components_ == ref.n_components_
    for attr in ("explained_variance_ratio_", "explained_variance_", "singular_values_", "mean_"):
        assert_allclose(getattr(est, attr), getattr(ref, attr), rtol=1e-9, atol=1e-12, err_msg=attr)
    assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-9, atol=1e-12)
    top = min(10, est.n_components_)
    cos = np.abs(np.sum(est.components_[:top] * ref.components_[:top], axis=1))
    assert_allclose(cos, 1.0, atol=1e-9)
    assert_allclose(est.components_[:top], ref.components_[:top], atol=1e-6)  # same sign convention


def test_scatter_of_pixels_is_exact():
    """8-bit pixels: float32 products over 256-row blocks, summed in float64, are exact integers."""
    from streamclust.models._scatter import ScatterAccumulator, _slabs

    X = np.random.default_rng(1).integers(0, 256, size=(1000, 70)).astype(np.uint8)
    acc = ScatterAccumulator(70)
    for lo in range(0, 1000, 600):
        acc.update(X[lo : lo + 600], lo)
    shift, s1 = acc.shift.copy(), acc.s1.copy()
    Xi = X.astype(np.int64) - shift.astype(np.int64)
    exact = (Xi.T @ Xi).astype(np.float64)
    for i, (a, e) in enumerate(_slabs(70)):  # the upper triangle, slab by slab
        assert_array_equal(acc.slabs[i], exact[a:e, a:])
    assert_array_equal(s1, Xi.sum(axis=0).astype(np.float64))
    mean, C = acc.result()
    assert_allclose(C, np.cov(X.T.astype(np.float64)) * 999, rtol=1e-12, atol=1e-8)
    assert_allclose(mean, X.mean(axis=0), rtol=1e-15)


def test_randomized_grows_until_the_fraction_is_reached():
    """A fraction needing more than the 256 components tracked first: the sketch grows to it."""
    X = spread_spectrum(n=900, d=400, seed=2)
    ref = PCA(0.97, svd_solver="full").fit(X)
    assert ref.n_components_ > 256
    est = StreamingPCA(0.97, method="randomized", batch_size=128, random_state=0).fit(X)
    assert est.explained_variance_ratio_.sum() >= 0.97
    assert abs(est.n_components_ - ref.n_components_) <= 0.02 * ref.n_components_
    capped = StreamingPCA(0.97, method="randomized", max_components=200, batch_size=128, random_state=0)
    with pytest.warns(UserWarning, match=r"asked for 0.97 of the variance, reached 0\.9\d+ with 200 components"):
        capped.fit(X)
    assert capped.n_components_ == 200


def test_the_components_a_fraction_needs_at_least():
    """From the leading eigenvalues, a count that never exceeds the true one (widening never overshoots)."""
    from streamclust.models._scatter import _k_for_fraction, components_lower_bound

    d = 12288
    for b in (0.6, 1.1, 2.0):
        lam = np.arange(1, d + 1, dtype=np.float64) ** -b
        total = lam.sum()
        true = _k_for_fraction(lam, total, 0.99)
        for l in (l for l in (20, 50, 256, true // 2) if l < true):
            bound = components_lower_bound(lam[:l], total, 0.99)
            assert l < bound <= true
        assert components_lower_bound(lam[: true + 5], total, 0.99) == true  # already enough: exact


def test_covariance_method_above_the_eigh_limit(monkeypatch):
    """Past EIGH_MAX_FEATURES: float32 subspace iteration on the exact scatter, widened to the fraction."""
    from streamclust.models import _scatter

    monkeypatch.setattr(_scatter, "EIGH_MAX_FEATURES", 100)
    X = spread_spectrum(n=1500, d=400, seed=3, dtype=np.uint8)
    ref = PCA(0.97, svd_solver="full").fit(X.astype(np.float64))
    assert ref.n_components_ > 256
    est = StreamingPCA(0.97, method="covariance", batch_size=500).fit(X)
    assert abs(est.n_components_ - ref.n_components_) <= 0.01 * ref.n_components_
    assert est.explained_variance_ratio_.sum() > 0.97
    # subspace iteration: the leading half exact to 1e-6, the trailing ones within 2 %
    half = ref.n_components_ // 2
    assert_allclose(est.explained_variance_ratio_[:half], ref.explained_variance_ratio_[:half], atol=1e-6)
    k = min(est.n_components_, ref.n_components_)
    assert_allclose(est.explained_variance_ratio_[:k], ref.explained_variance_ratio_[:k], rtol=2e-2)
    cos = np.abs(np.sum(est.components_[:10] * ref.components_[:10], axis=1))
    assert cos.min() > 0.9999


def test_auto_method_by_shape():
    from streamclust.models.pca import choose_method

    assert choose_method(60000, 3072, 0.99) == "covariance"        # CIFAR-10 at 99 %
    assert choose_method(40000, 12288, 0.99) == "covariance"       # 64x64 RGB faces
    assert choose_method(40000, 49152, 0.99) == "randomized"       # 128x128 RGB: 19 GB matrix
    assert choose_method(400, 12288, 0.99) == "randomized"         # fewer images than pixels
    assert choose_method(40000, 12288, 20) == "randomized"         # a few components of many pixels
    assert choose_method(40000, 12288, 0.99, max_bytes=2**30) == "randomized"
    X = spread_spectrum(n=500, d=30)
    assert StreamingPCA(0.9, batch_size=64).fit(X).method_ == "covariance"


# -------------------------------------------------------------------- incremental
@pytest.mark.parametrize(("n", "batch_size", "k"), [(1050, 100, 10), (1005, 100, 10), (203, 4, 10), (500, 500, 5)])
def test_incremental_equals_incremental_pca(n, batch_size, k):
    X = low_rank(n=n, d=30)
    est = StreamingPCA(k, method="incremental", batch_size=batch_size).fit(X)
    ref = IncrementalPCA(k, batch_size=max(batch_size, k)).fit(X)
    for attr in ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_", "mean_"):
        assert_allclose(getattr(est, attr), getattr(ref, attr), rtol=1e-10, atol=1e-10, err_msg=attr)
    assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-10)
    assert_allclose(est.transform(X), ref.transform(X), atol=1e-10)


# ---------------------------------------------------------------- lazy inputs
@pytest.mark.parametrize("method", ["randomized", "incremental"])
def test_zarr_with_odd_chunks_equals_numpy(method):
    X = low_rank(n=1000, d=24)
    params = dict(n_components=4, method=method, batch_size=96, random_state=3)
    a = StreamingPCA(**params).fit(X)
    b = StreamingPCA(**params).fit(as_zarr(X, 37))
    c = StreamingPCA(**params).fit(da.from_array(X, chunks=(53, 24)))
    assert_same_fit(a, b)
    assert_same_fit(a, c)
    assert_array_equal(b.transform(as_zarr(X, 41)), a.transform(X))


def test_uint8_image_stack_in_zarr():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(4, 8, 8, 3)).astype(float)
    weights = rng.random((500, 4))
    images = np.clip(weights @ base.reshape(4, -1) / weights.sum(1, keepdims=True)
                     + rng.normal(0, 3, (500, 192)), 0, 255).astype(np.uint8).reshape(500, 8, 8, 3)
    store = as_zarr(images, 33)
    est = StreamingPCA(3, batch_size=64, random_state=0).fit(store)
    flat = images.reshape(500, -1).astype(np.float64)
    ref = PCA(3, svd_solver="full").fit(flat)
    assert est.n_features_in_ == 192
    assert_matches_pca(est, ref, 3)
    assert_allclose(est.mean_, flat.mean(axis=0), rtol=1e-12)
    Z = est.transform(store)
    assert Z.shape == (500, 3) and Z.dtype == np.float64
    assert_allclose(Z, est.transform(flat), rtol=1e-6, atol=1e-6)


def test_row_subset_equals_fit_on_subset():
    X = low_rank(n=700, d=16)
    rows = np.flatnonzero(np.random.default_rng(0).random(700) < 0.6)
    a = fit_streaming(StreamingPCA(3, batch_size=50, random_state=0), as_zarr(X, 29), rows=rows)
    b = StreamingPCA(3, batch_size=50, random_state=0).fit(X[rows])
    assert_same_fit(a, b)


# ---------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("method", "stop_at"),
    [("randomized", 5), ("randomized", 2 * 16 + 7), ("incremental", 9), ("covariance", 7)],
)
def test_resume_after_interruption_is_identical(tmp_path, method, stop_at):
    X = low_rank(n=1000, d=20)  # 16 batches of 64 per pass
    params = dict(n_components=4, method=method, batch_size=64, random_state=7, n_power_iter=3)
    path = tmp_path / "pca.ckpt.npz"
    with pytest.raises(Interrupted):
        fit_streaming(StreamingPCA(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                      progress=interrupt_after(stop_at))
    assert path.exists()
    names = []
    resumed = fit_streaming(StreamingPCA(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0),
                            progress=lambda name, done, n: names.append(done))
    assert names[0] > 64  # it did not start again from the first row
    assert_same_fit(resumed, StreamingPCA(**params).fit(X))


# ----------------------------------------------------------------------- errors
def test_nan_rows_raise():
    X = low_rank(n=200, d=10)
    X[150, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StreamingPCA(2, batch_size=32).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        StreamingPCA(2, batch_size=32).fit(as_zarr(X, 19))


def test_too_many_components_raise():
    X = low_rank(n=30, d=10)
    with pytest.raises(ValueError, match=r"min\(n_samples, n_features\)=10"):
        StreamingPCA(11).fit(X)
    with pytest.raises(ValueError, match=r"must be between 0 and min\(n_samples, n_features\)=5 with method='covariance'"):
        StreamingPCA(6, method="covariance").fit(X[:5])
    with pytest.raises(ValueError, match=r"must be between 1 and min\(n_samples, n_features\)=5 with method='randomized'"):
        StreamingPCA(0, method="randomized").fit(X[:5])
    # IncrementalPCA's messages for the incremental method
    with pytest.raises(ValueError, match="n_components=6 must be less or equal to the batch number of samples 5"):
        StreamingPCA(6, method="incremental").fit(X[:5])
    with pytest.raises(ValueError, match="n_components=11 invalid for n_features=10"):
        StreamingPCA(11, method="incremental").fit(X)


def test_single_sample_raises():
    with pytest.raises(ValueError, match="n_samples=1"):
        StreamingPCA().fit(np.ones((1, 4)))


def test_wrong_n_features_on_transform():
    est = StreamingPCA(2, batch_size=16, random_state=0).fit(low_rank(n=100, d=10))
    with pytest.raises(ValueError, match="10 features"):
        est.transform(as_zarr(np.zeros((5, 9)), 3))


def test_feature_names_out():
    est = StreamingPCA(3, batch_size=16, random_state=0).fit(low_rank(n=100, d=10))
    assert list(est.get_feature_names_out()) == ["streamingpca0", "streamingpca1", "streamingpca2"]


# -------------------------------------------------------------- sklearn checks
@parametrize_with_checks(
    [
        StreamingPCA(batch_size=7, random_state=0),
        StreamingPCA(batch_size=7, random_state=0, dtype="float64", n_power_iter=1),
        StreamingPCA(method="incremental", batch_size=7),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ------------------------------------------------ probabilistic model (issue 14)
@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("n_components", [0, 3, 12])
def test_score_and_covariance_equal_sklearn(n_components, whiten):
    X = low_rank(n=300, d=12)
    Xt = low_rank(n=50, d=12, seed=1)
    ref = PCA(n_components, whiten=whiten, svd_solver="full").fit(X)
    est = StreamingPCA(n_components, method="covariance", whiten=whiten, batch_size=17).fit(X)
    assert est.n_components_ == n_components
    assert_allclose(est.get_covariance(), ref.get_covariance(), rtol=1e-9, atol=1e-12)
    P = ref.get_precision()  # ill-conditioned when every component is kept: compare to its scale
    assert_allclose(est.get_precision(), P, rtol=1e-7, atol=1e-9 * np.abs(P).max())
    # all components kept (no noise): the inverse of a covariance of condition ~1e8 (whitened)
    rtol = 1e-9 if est.noise_variance_ > 0 else 1e-7
    assert_allclose(est.score_samples(Xt), ref.score_samples(Xt), rtol=rtol)
    assert_allclose(est.score(Xt), ref.score(Xt), rtol=rtol)
    # streamed over lazy input, batch by batch: the same values
    assert_allclose(est.score_samples(as_zarr(Xt, 7)), ref.score_samples(Xt), rtol=rtol)
    assert_allclose(est.score(da.from_array(Xt, chunks=9)), ref.score(Xt), rtol=rtol)


def test_score_low_rank_path_needs_no_square_matrix(monkeypatch):
    X = low_rank(n=400, d=30)
    est = StreamingPCA(5, method="covariance", batch_size=64).fit(X)
    expected = PCA(5, svd_solver="full").fit(X).score(X)
    monkeypatch.setattr(StreamingPCA, "get_precision", lambda self: pytest.fail("d x d precision formed"))
    assert_allclose(est.score(X), expected, rtol=1e-10)


def test_n_components_mle_equals_sklearn():
    rng = np.random.RandomState(0)
    X = rng.randn(600, 10)
    X[:, -1] = X[:, :-1].mean(axis=1)
    ref = PCA("mle", svd_solver="full").fit(X)
    est = StreamingPCA("mle", batch_size=50).fit(X)
    assert est.method_ == "covariance" and est.n_components_ == ref.n_components_ == 9
    assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="n_components='mle' cannot be a string with method='randomized'"):
        StreamingPCA("mle", method="randomized").fit(X)


# ------------------------------------------------------------ float32 (issue 14)
FLOAT_ATTRS = ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_", "mean_")


@pytest.mark.parametrize("method", ["covariance", "randomized", "incremental"])
def test_float32_input_gives_float32_attributes_and_outputs(method):
    X64 = low_rank(n=400, d=20)
    X32 = X64.astype(np.float32)
    est32 = StreamingPCA(4, method=method, batch_size=37, random_state=0).fit(X32)
    est64 = StreamingPCA(4, method=method, batch_size=37, random_state=0).fit(X64)
    for attr in FLOAT_ATTRS:
        assert getattr(est32, attr).dtype == np.float32, attr
        assert getattr(est64, attr).dtype == np.float64, attr
    assert np.asarray(est32.noise_variance_).dtype == np.float32
    assert_allclose(est32.components_, est64.components_, rtol=1e-3, atol=1e-3)
    for Xin in (X32, as_zarr(X32, 13), da.from_array(X32, chunks=29)):
        assert est32.transform(Xin).dtype == np.float32
        assert est32.score_samples(Xin).dtype == np.float32
    assert est32.transform(X64).dtype == np.float64
    assert est64.transform(as_zarr(X32, 13)).dtype == np.float32
    assert est32.inverse_transform(est32.transform(X32)).dtype == np.float32
    # integers and uint8 images: float64, as scikit-learn
    Xi = np.rint(X64 * 10).astype(np.int32)
    assert StreamingPCA(3, method=method, batch_size=37, random_state=0).fit(Xi).components_.dtype == np.float64
    # float32 sums stay float64 inside: the fit equals the fit of the same values in float64
    est_same = StreamingPCA(4, method=method, batch_size=37, random_state=0).fit(X32.astype(np.float64))
    assert_allclose(est32.explained_variance_, est_same.explained_variance_, rtol=1e-5)


# ---------------------------------------------------------- partial_fit (issue 14)
@pytest.mark.parametrize("n_components", [None, 3, 0.9])
def test_partial_fit_over_slices_equals_fit(n_components):
    X = low_rank(n=500, d=15)
    full = StreamingPCA(n_components, method="covariance", batch_size=64).fit(X)
    part = StreamingPCA(n_components, method="covariance", batch_size=64)
    for lo in range(0, 500, 70):  # slices that are not batch-aligned, the last one short
        part.partial_fit(X[lo : lo + 70])
    assert part.method_ == "covariance" and part.n_samples_seen_ == 500
    assert part.n_components_ == full.n_components_
    for attr in FLOAT_ATTRS:  # to rounding (the noise axes' eigenvectors, nearly degenerate, to 1e-9)
        assert_allclose(getattr(part, attr), getattr(full, attr), rtol=1e-10, atol=1e-9, err_msg=attr)
    assert_allclose(part.noise_variance_, full.noise_variance_, rtol=1e-10, atol=1e-14)
    # and both equal scikit-learn's exact PCA of all the rows
    ref = PCA(n_components, svd_solver="full").fit(X)
    assert_allclose(part.components_, ref.components_, atol=1e-7)
    assert_allclose(part.explained_variance_, ref.explained_variance_, rtol=1e-9)


def test_partial_fit_of_lazy_slices_of_a_growing_store():
    X = np.rint(low_rank(n=240, d=12) * 10 + 100).clip(0, 255).astype(np.uint8)
    store = as_zarr(X, 16)
    part = StreamingPCA(4, batch_size=25)
    part.partial_fit(store)  # the store as it was: streamed batch by batch
    grown = np.concatenate([X, X[:60] // 2 + 7])  # then 60 more images arrive (dask this time)
    part.partial_fit(da.from_array(grown[240:], chunks=11))
    X = grown
    ref = PCA(4, svd_solver="full").fit(X.astype(np.float64))
    assert_allclose(part.components_, ref.components_, atol=1e-8)
    assert_allclose(part.mean_, ref.mean_, rtol=1e-12)


def test_partial_fit_incremental_equals_incremental_pca():
    X = low_rank(n=200, d=10)
    ours = StreamingPCA(3, method="incremental", batch_size=7)
    ref = IncrementalPCA(3)
    for lo in range(0, 200, 40):
        ours.partial_fit(X[lo : lo + 40])
        ref.partial_fit(X[lo : lo + 40])
    for attr in FLOAT_ATTRS + ("var_", "noise_variance_", "n_samples_seen_"):
        assert_allclose(getattr(ours, attr), getattr(ref, attr), rtol=1e-12, atol=1e-14, err_msg=attr)
    # lazy input: one IncrementalPCA step a chunk of max(batch_size, n_components) rows
    lazy = StreamingPCA(3, method="incremental", batch_size=40)
    lazy.partial_fit(as_zarr(X, 9))
    assert_allclose(lazy.components_, ref.components_, atol=1e-10)


def test_partial_fit_after_fit_continues_from_the_model():
    X = low_rank(n=300, d=8)
    est = StreamingPCA(None, method="covariance", batch_size=50).fit(X[:200])  # all components: exact sums
    est.partial_fit(X[200:])
    ref = PCA(svd_solver="full").fit(X)
    assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-10)
    assert_allclose(np.abs(est.components_), np.abs(ref.components_), atol=1e-8)
    ipca = StreamingPCA(3, method="incremental", batch_size=50).fit(X[:200])
    ipca.partial_fit(X[200:])
    assert ipca.n_samples_seen_ == 300
    with pytest.raises(ValueError, match="method='randomized'"):
        StreamingPCA(3, method="randomized").partial_fit(X)
    with pytest.raises(ValueError, match="X has 7 features"):
        est.partial_fit(X[:, :7])
