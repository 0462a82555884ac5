"""Tests of the streamed Gaussian mixture (streamclust.models.gmm)."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _estimate_log_gaussian_prob
from sklearn.utils.estimator_checks import parametrize_with_checks

from streamclust.engine import Checkpointer, RowSource, fit_streaming
from streamclust.errors import ConvergenceError
from streamclust.models import gmm as gmm_module
from streamclust.models._gmm_stats import (
    GMMStatsAccumulator,
    GMMSuffStats,
    HardAssignAccumulator,
    RandomRespAccumulator,
    m_step,
)
from streamclust.models.gmm import IllDefinedCovarianceError, StreamingGaussianMixture, gmm_log_prob

COV_TYPES = ["full", "tied", "diag", "spherical"]
FITTED = ["weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"]


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _blobs(n=600, d=3, seed=0, offset=0.0):
    r = np.random.default_rng(seed)
    parts = [r.normal(size=(n // 3, d)) * s + c for s, c in [(1.0, 0.0), (0.5, 5.0), (2.0, -6.0)]]
    X = np.vstack(parts) + offset
    r.shuffle(X)
    return X


def _poor_init(X, ct):
    """Poor initial parameters (all means near the centre): EM needs tens of iterations."""
    d = X.shape[1]
    scales = np.array([0.5, 1.0, 2.0])
    precisions = {
        "full": scales[:, None, None] * np.eye(d),
        "tied": 0.3 * np.eye(d),
        "diag": scales[:, None] * np.ones((3, d)),
        "spherical": scales,
    }[ct]
    means = X.mean(axis=0) + 0.3 * np.eye(3, d)
    return {"weights_init": np.array([0.2, 0.3, 0.5]), "means_init": means, "precisions_init": precisions}


# --------------------------------------------------------------------------------------
# exact equality with scikit-learn


@pytest.mark.parametrize("ct", COV_TYPES)
def test_same_iterates_as_sklearn(ct):
    X = _blobs(offset=3.0)
    init = _poor_init(X, ct)
    kw = dict(covariance_type=ct, tol=1e-6, max_iter=300, **init)
    ref = GaussianMixture(3, **kw).fit(X)
    est = StreamingGaussianMixture(3, batch_size=97, **kw).fit(X)
    assert est.n_iter_ == ref.n_iter_ and est.n_iter_ >= 20
    assert est.converged_ is True and ref.converged_
    for attr in FITTED:
        assert getattr(est, attr).shape == getattr(ref, attr).shape
        assert_allclose(getattr(est, attr), getattr(ref, attr), rtol=1e-8, atol=1e-10, err_msg=attr)
    assert_allclose(est.lower_bound_, ref.lower_bound_, rtol=1e-10)
    assert_allclose(est.lower_bounds_, ref.lower_bounds_, rtol=1e-10)
    assert_allclose(est.score(X), ref.score(X), rtol=1e-10)
    assert_allclose(est.bic(X), ref.bic(X), rtol=1e-10)
    assert_allclose(est.aic(X), ref.aic(X), rtol=1e-10)
    assert_allclose(est.score_samples(X), ref.score_samples(X), rtol=1e-9)
    assert_array_equal(est.predict(X), ref.predict(X))
    assert_allclose(est.predict_proba(X), ref.predict_proba(X), rtol=1e-7, atol=1e-12)
    assert_array_equal(est.fit_predict(X), ref.predict(X))


@pytest.mark.parametrize("ct", COV_TYPES)
def test_max_iter_and_warm_start_match_sklearn(ct):
    X = _blobs(seed=1)
    init = _poor_init(X, ct)
    kw = dict(covariance_type=ct, max_iter=1, warm_start=True, **init)
    ref = GaussianMixture(3, **kw)
    est = StreamingGaussianMixture(3, batch_size=64, **kw)
    with pytest.warns(ConvergenceWarning):
        for _ in range(3):
            ref.fit(X)
            est.fit(X)
    assert est.n_iter_ == ref.n_iter_ == 1 and est.converged_ == ref.converged_
    for attr in FITTED:
        assert_allclose(getattr(est, attr), getattr(ref, attr), rtol=1e-8, atol=1e-10, err_msg=attr)
    assert_allclose(est.lower_bound_, ref.lower_bound_, rtol=1e-10)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_log_prob_matches_sklearn(ct, rng):
    X = rng.normal(size=(50, 4))
    est = StreamingGaussianMixture(3, covariance_type=ct, random_state=0, batch_size=16).fit(X)
    got = gmm_log_prob(X, est.means_, est.precisions_cholesky_, ct)
    want = _estimate_log_gaussian_prob(X, est.means_, est.precisions_cholesky_, ct)
    assert got.shape == (50, 3)
    assert_allclose(got, want, rtol=1e-12)


def test_sample_matches_sklearn():
    X = _blobs()
    init = _poor_init(X, "full")
    ref = GaussianMixture(3, random_state=3, **init).fit(X)
    est = StreamingGaussianMixture(3, random_state=3, batch_size=100, **init).fit(X)
    Xs, ys = est.sample(500)
    Xr, yr = ref.sample(500)
    assert Xs.shape == (500, 3) and ys.shape == (500,)
    assert_array_equal(ys, yr)
    assert_allclose(Xs, Xr, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(0)


# --------------------------------------------------------------------------------------
# lazy inputs


def _zarr(X, chunk_rows):
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype="f8")
    z[:] = X
    return z


@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_zarr_and_dask_equal_numpy(init_params):
    da = pytest.importorskip("dask.array")
    X = _blobs(seed=2)
    kw = dict(n_components=3, init_params=init_params, random_state=5, n_init=2, batch_size=97, tol=1e-4)
    ref = StreamingGaussianMixture(**kw).fit(X)
    for lazy in (_zarr(X, 37), da.from_array(X, chunks=(53, 3))):
        est = StreamingGaussianMixture(**kw).fit(lazy)
        assert est.n_features_in_ == 3
        for attr in FITTED:
            assert_array_equal(getattr(est, attr), getattr(ref, attr))
        assert est.lower_bound_ == ref.lower_bound_ and est.n_iter_ == ref.n_iter_
        pred = est.predict(lazy)
        assert isinstance(pred, np.ndarray) and pred.shape == (600,)
        assert_array_equal(pred, ref.predict(X))
        assert_allclose(est.score_samples(lazy), ref.score_samples(X), rtol=1e-12)
        assert_allclose(est.predict_proba(lazy), ref.predict_proba(X), rtol=1e-12)
        assert_allclose(est.score(lazy), ref.score(X), rtol=1e-12)
        assert_allclose(est.bic(lazy), ref.bic(X), rtol=1e-12)
        assert_allclose(est.aic(lazy), ref.aic(X), rtol=1e-12)


def test_nan_in_lazy_input_raises():
    X = _blobs()
    X[301, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StreamingGaussianMixture(2, batch_size=50).fit(_zarr(X, 41))


# --------------------------------------------------------------------------------------
# resume


class _Interrupt(Exception):
    pass


def _interrupted_then_resumed(X, kw, stop_after, path):
    ckpt = Checkpointer(path, key="gmm-test", every_seconds=0)
    seen = []

    def progress(name, done, n):
        seen.append(name)
        if len(seen) == stop_after:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        fit_streaming(StreamingGaussianMixture(**kw), X, checkpoint=ckpt, progress=progress)
    meta, _, _ = ckpt.load()
    assert meta["in_pass"] and meta["next_row"] > 0  # stopped in the middle of a pass
    resumed = fit_streaming(StreamingGaussianMixture(**kw), X, checkpoint=Checkpointer(path, key="gmm-test", every_seconds=0))
    return resumed, seen[-1]


@pytest.mark.parametrize(
    "init_params, ct, phase",
    [
        ("kmeans", "full", "sampling rows"),
        ("kmeans", "diag", "k-means init pass 1"),
        ("kmeans", "tied", "EM iteration 3"),
        ("random", "spherical", "random init pass"),
        ("random", "full", "EM iteration 2"),
        ("k-means++", "diag", "nearest-centre init pass 1"),
    ],
)
def test_resume_mid_pass_is_exact(tmp_path, init_params, ct, phase):
    X = _blobs(seed=4)
    kw = dict(
        n_components=3, covariance_type=ct, init_params=init_params, random_state=7, n_init=2, batch_size=97, tol=1e-6
    )
    names = []
    ref = fit_streaming(StreamingGaussianMixture(**kw), X, progress=lambda name, done, n: names.append(name))
    assert ref.n_iter_ >= 3
    # EM pass names end with the last log-likelihood, e.g. "EM iteration 3 (log-lik -4.2)"
    stop_after = next(i for i, n in enumerate(names) if n == phase or n.startswith(phase + " (")) + 3
    resumed, stopped_in = _interrupted_then_resumed(X, kw, stop_after, tmp_path / "gmm.npz")
    assert stopped_in == phase or stopped_in.startswith(phase + " (")
    for attr in FITTED:
        assert_array_equal(getattr(resumed, attr), getattr(ref, attr))
    assert resumed.lower_bound_ == ref.lower_bound_
    assert resumed.lower_bounds_ == ref.lower_bounds_
    assert resumed.n_iter_ == ref.n_iter_ and resumed.converged_ == ref.converged_


# --------------------------------------------------------------------------------------
# statistics accumulator


@pytest.mark.parametrize("ct", COV_TYPES)
def test_stats_merge_equals_single_pass(ct, rng):
    X = rng.normal(size=(300, 4)) * 3 + 100.0
    est = StreamingGaussianMixture(3, covariance_type=ct, random_state=0, batch_size=64).fit(X)
    args = (est.weights_, est.means_, est.precisions_cholesky_, ct)
    whole = GMMStatsAccumulator(*args)
    whole.update(X, 0)
    a, b = GMMStatsAccumulator(*args), GMMStatsAccumulator(*args, shift=np.zeros((3, 4)))
    a.update(X[:120], 0)
    b.update(X[120:], 120)
    merged = a.merge(b)
    for key in ("nk", "sx", "sxx", "log_likelihood"):
        assert_allclose(getattr(merged, key), getattr(whole, key), rtol=1e-9, atol=1e-7, err_msg=key)
    assert merged.n_rows == 300
    # the M-step on the streamed statistics equals scikit-learn's one on the whole data
    w, m, c, _ = m_step(merged, 1e-6)
    ref = GaussianMixture(3, covariance_type=ct, max_iter=1, weights_init=est.weights_,
                          means_init=est.means_, precisions_init=est.precisions_)
    with pytest.warns(ConvergenceWarning):
        ref.fit(X)
    assert_allclose(m, ref.means_, rtol=1e-10)
    assert_allclose(c, ref.covariances_, rtol=1e-7)
    assert_allclose(w, ref.weights_, rtol=1e-10)


def test_stats_state_roundtrip_and_random_resp_determinism(rng):
    X = rng.normal(size=(200, 3))
    acc = RandomRespAccumulator(4, 3, "full", seed=1, pass_index=2)
    for lo in range(0, 200, 50):
        acc.update(X[lo : lo + 50], lo)
    again = RandomRespAccumulator(4, 3, "full", seed=1, pass_index=2)
    for lo in range(0, 200, 50):
        again.update(X[lo : lo + 50], lo)
    restored = RandomRespAccumulator(4, 3, "full", seed=1, pass_index=2)
    restored.load_state_dict(acc.state_dict())
    for key in ("nk", "sx", "sxx", "shift"):
        assert_array_equal(getattr(again, key), getattr(acc, key))
        assert_array_equal(getattr(restored, key), getattr(acc, key))
    assert_allclose(acc.nk.sum(), 200.0)


def test_empty_component_stays_finite():
    X = np.repeat(np.array([[0.0, 0.0], [10.0, 10.0]]), 50, axis=0)
    acc = HardAssignAccumulator(np.array([[0.0, 0.0], [10.0, 10.0], [50.0, 50.0]]), "full")
    acc.update(X, 0)
    assert acc.nk[2] == 0
    weights, means, cov, prec_chol = m_step(acc, 1e-6)
    for a in (weights, means, cov, prec_chol):
        assert np.all(np.isfinite(a))
    assert 0 < weights[2] < 1e-15
    assert_allclose(means[2], [50.0, 50.0])  # an empty component stays where it was
    assert_allclose(cov[2], 1e-6 * np.eye(2))


# --------------------------------------------------------------------------------------
# quality of the streamed initialisations and of partial_fit


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data"])
def test_init_quality_close_to_sklearn(init_params):
    X, _ = make_blobs(1500, n_features=4, centers=4, cluster_std=1.0, random_state=0)
    ref = GaussianMixture(4, random_state=0).fit(X).score(X)
    est = StreamingGaussianMixture(4, init_params=init_params, random_state=0, batch_size=128, n_init=3).fit(X)
    assert est.converged_
    assert abs(est.score(X) - ref) <= 0.005 * abs(ref)


def test_default_init_close_to_sklearn():
    X, _ = make_blobs(2000, n_features=5, centers=5, cluster_std=0.8, random_state=3)
    ref = GaussianMixture(5, random_state=0).fit(X).score(X)
    est = StreamingGaussianMixture(5, random_state=0, batch_size=300).fit(X)
    assert abs(est.score(X) - ref) <= 0.005 * abs(ref)


def test_n_init_keeps_best():
    X, _ = make_blobs(900, n_features=2, centers=6, cluster_std=1.5, random_state=1)
    kw = dict(init_params="random_from_data", random_state=2, batch_size=100, tol=1e-5, max_iter=300)
    one = StreamingGaussianMixture(6, n_init=1, **kw).fit(X)
    several = StreamingGaussianMixture(6, n_init=4, **kw).fit(X)
    # run 0 of the n_init=4 fit is the n_init=1 fit (same seeds), so it can only improve
    assert several.lower_bound_ >= one.lower_bound_


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_partial_fit_close_to_full_fit(ct):
    X, _ = make_blobs(3000, n_features=4, centers=4, cluster_std=1.0, random_state=0)
    full = StreamingGaussianMixture(4, covariance_type=ct, random_state=0, batch_size=256).fit(X)
    online = StreamingGaussianMixture(4, covariance_type=ct, random_state=0, batch_size=200)
    for _ in range(2):
        for lo in range(0, 3000, 200):
            online.partial_fit(X[lo : lo + 200])
    assert online.n_iter_ == 29 and len(online.lower_bounds_) == 29
    assert abs(online.score(X) - full.score(X)) <= 0.005 * abs(full.score(X))
    # one call with a larger X makes one update per batch_size rows
    chunked = StreamingGaussianMixture(4, covariance_type=ct, random_state=0, batch_size=200)
    chunked.partial_fit(X)
    chunked.partial_fit(X)
    for attr in FITTED:
        assert_allclose(getattr(chunked, attr), getattr(online, attr), rtol=1e-12)
    with pytest.raises(ValueError, match="features"):
        online.partial_fit(X[:10, :3])


def test_partial_fit_after_fit_continues_from_model():
    X = _blobs()
    est = StreamingGaussianMixture(3, random_state=0, batch_size=100).fit(X)
    before = est.score(X)
    est.partial_fit(X)
    assert est.n_iter_ == 5
    assert abs(est.score(X) - before) < 0.01 * abs(before)


# --------------------------------------------------------------------------------------
# degenerate input and errors


@pytest.mark.parametrize("ct", COV_TYPES)
def test_duplicated_points_give_finite_model(ct):
    X = np.repeat(np.array([[0.0, 1.0], [3.0, 3.0], [8.0, -2.0]]), 100, axis=0)
    # four components for three distinct points: one is duplicated or empty
    est = StreamingGaussianMixture(4, covariance_type=ct, random_state=0, batch_size=64).fit(X)
    for attr in FITTED:
        assert np.all(np.isfinite(getattr(est, attr))), attr
    assert np.isfinite(est.lower_bound_)
    assert np.all(np.isfinite(est.score_samples(X)))
    assert_allclose(est.weights_.sum(), 1.0)


def test_collapsed_component_without_regularisation_raises():
    X = np.repeat(np.array([[0.0, 1.0], [3.0, 3.0]]), 50, axis=0)
    with pytest.raises(ConvergenceError, match="reg_covar") as info:
        StreamingGaussianMixture(2, reg_covar=0.0, random_state=0).fit(X)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, IllDefinedCovarianceError)


def test_nan_input_raises():
    X = _blobs()
    X[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StreamingGaussianMixture(2).fit(X)
    est = StreamingGaussianMixture(2, random_state=0).fit(_blobs())
    with pytest.raises(ValueError, match="NaN"):
        est.predict(X)


def test_too_many_components_raises():
    X = _blobs(n=30)
    with pytest.raises(ValueError, match="n_components = 31, n_samples = 30"):
        StreamingGaussianMixture(31).fit(X)


def test_bad_init_arrays_raise():
    X = _blobs()
    with pytest.raises(ValueError, match="normalized"):
        StreamingGaussianMixture(2, weights_init=[0.5, 0.6]).fit(X)
    with pytest.raises(ValueError, match="shape"):
        StreamingGaussianMixture(2, means_init=np.zeros((3, 3))).fit(X)
    with pytest.raises(ValueError, match="positive"):
        StreamingGaussianMixture(2, covariance_type="diag", precisions_init=-np.ones((2, 3))).fit(X)
    with pytest.raises(ValueError, match="batch_size"):
        StreamingGaussianMixture(2, batch_size=0).fit(X)


def test_max_iter_zero_returns_initialisation():
    X = _blobs()
    est = StreamingGaussianMixture(3, max_iter=0, random_state=0, batch_size=100).fit(X)
    assert est.n_iter_ == 0 and est.lower_bound_ == -np.inf and est.lower_bounds_ == []
    assert np.all(np.isfinite(est.means_))


def test_suff_stats_reshift_is_exact(rng):
    X = rng.normal(size=(100, 3)) + 5
    resp = rng.dirichlet(np.ones(2), size=100)
    for ct in COV_TYPES:
        a = GMMSuffStats(2, 3, ct, shift=np.zeros((2, 3)))
        a.accumulate(X, resp)
        b = GMMSuffStats(2, 3, ct, shift=np.full((2, 3), 5.0))
        b.accumulate(X, resp)
        a.reshift(b.shift)
        assert_allclose(a.sx, b.sx, atol=1e-9)
        assert_allclose(a.sxx, b.sxx, rtol=1e-10, atol=1e-9)


def test_docstring_examples():
    result = doctest.testmod(gmm_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------
# scikit-learn's estimator checks


@parametrize_with_checks([StreamingGaussianMixture()])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_kmeans_init_from_small_sample_streams_lloyd_passes(monkeypatch):
    # a 40-row sample: the seeds are rough, so streamed Lloyd passes must refine them
    monkeypatch.setattr(gmm_module, "_SAMPLE_MIN", 40)
    monkeypatch.setattr(gmm_module, "_SAMPLE_PER_COMPONENT", 1)
    X, _ = make_blobs(2000, n_features=3, centers=6, cluster_std=1.2, random_state=4)
    names = []
    est = fit_streaming(
        StreamingGaussianMixture(6, random_state=1, batch_size=250, max_iter=300),
        X,
        progress=lambda name, done, n: names.append(name),
    )
    n_batches = 8
    assert names[0] == "sampling rows" and names.count("sampling rows") == n_batches
    lloyd = {name for name in names if name.startswith("k-means init pass")}
    assert 2 <= len(lloyd) <= gmm_module._KMEANS_MAX_PASSES
    ref = GaussianMixture(6, random_state=0, n_init=3).fit(X).score(X)
    assert abs(est.score(X) - ref) <= 0.005 * abs(ref)


def test_fit_on_row_subset_equals_fit_on_selected_rows():
    X = _blobs(seed=6)
    rows = np.flatnonzero(np.arange(600) % 3 != 1)
    kw = dict(n_components=3, random_state=2, batch_size=71)
    sub = fit_streaming(StreamingGaussianMixture(**kw), _zarr(X, 29), rows=rows)
    ref = StreamingGaussianMixture(**kw).fit(X[rows])
    for attr in FITTED:
        assert_array_equal(getattr(sub, attr), getattr(ref, attr))


# --------------------------------------------------------------------------------------
# sample_weight


def _integer_weights(n, seed=0):
    return np.random.default_rng(seed).integers(1, 5, size=n)


@pytest.mark.parametrize("ct", COV_TYPES)
@pytest.mark.parametrize("init", ["all three", "means_init"])
def test_integer_weights_equal_repeated_rows(ct, init):
    """sklearn's GaussianMixture has no sample_weight: an integer weight must be the row repeated.

    With all three initial arrays the reference is scikit-learn's fit of the repeated rows.
    With ``means_init`` alone (streamclust then initialises from one nearest-centre pass,
    which scikit-learn does not do) it is streamclust's own fit of the repeated rows, so
    the weighted initialisation pass is checked too.
    """
    X = _blobs(offset=3.0)
    w = _integer_weights(X.shape[0])
    given = _poor_init(X, ct)
    if init == "means_init":
        given = {"means_init": given["means_init"]}
    kw = dict(covariance_type=ct, tol=1e-6, max_iter=300, **given)
    repeated = np.repeat(X, w, axis=0)
    if init == "means_init":
        ref = StreamingGaussianMixture(3, batch_size=211, **kw).fit(repeated)
    else:
        ref = GaussianMixture(3, **kw).fit(repeated)
    est = StreamingGaussianMixture(3, batch_size=97, **kw).fit(X, sample_weight=w)
    assert est.n_iter_ == ref.n_iter_ and est.n_iter_ >= 5
    for attr in FITTED:
        assert_allclose(getattr(est, attr), getattr(ref, attr), rtol=1e-8, atol=1e-10, err_msg=attr)
    assert_allclose(est.lower_bound_, ref.lower_bound_, rtol=1e-10)
    assert_allclose(est.lower_bounds_, ref.lower_bounds_, rtol=1e-10)
    # scaling every weight changes nothing
    half = StreamingGaussianMixture(3, batch_size=97, **kw).fit(X, sample_weight=0.5 * w)
    assert_allclose(half.means_, est.means_, rtol=1e-10)
    assert_allclose(half.lower_bound_, est.lower_bound_, rtol=1e-10)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_weighted_fit_on_zarr_and_dask_equals_numpy_and_uses_the_weights(init_params):
    import dask.array as da
    import zarr

    X = _blobs(seed=2)
    w = np.random.default_rng(1).uniform(0.2, 3.0, size=X.shape[0])
    Z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(61, 3), dtype="f8")
    Z[:] = X
    kw = dict(n_components=3, covariance_type="diag", init_params=init_params, random_state=3, batch_size=89)
    a = StreamingGaussianMixture(**kw).fit(X, sample_weight=w)
    b = StreamingGaussianMixture(**kw).fit(Z, sample_weight=w)
    c = StreamingGaussianMixture(**kw).fit(da.from_array(X, chunks=(113, 3)), sample_weight=da.from_array(w))
    for other in (b, c):
        for attr in FITTED:
            assert_array_equal(getattr(other, attr), getattr(a, attr), err_msg=attr)
    unweighted = StreamingGaussianMixture(**kw).fit(X)
    assert not np.allclose(unweighted.lower_bound_, a.lower_bound_)


def test_weighted_resume_mid_pass_is_exact(tmp_path):
    X = _blobs(seed=4)
    w = _integer_weights(X.shape[0], seed=5).astype(float)
    kw = dict(n_components=3, covariance_type="full", random_state=7, n_init=2, batch_size=97, tol=1e-6)
    ref = StreamingGaussianMixture(**kw).fit(X, sample_weight=w)
    path = tmp_path / "gmm.npz"
    seen = []

    def stop(name, done, n):
        seen.append(name)
        if len(seen) == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_streaming(StreamingGaussianMixture(**kw), X, sample_weight=w,
                      checkpoint=Checkpointer(path, "key", every_seconds=0), progress=stop)
    assert seen[-1].startswith("EM iteration")
    resumed = fit_streaming(StreamingGaussianMixture(**kw), X, sample_weight=w,
                            checkpoint=Checkpointer(path, "key", every_seconds=0))
    for attr in FITTED:
        assert_array_equal(getattr(resumed, attr), getattr(ref, attr))
    assert resumed.lower_bounds_ == ref.lower_bounds_


@pytest.mark.parametrize("ct", COV_TYPES)
def test_weighted_pass_in_dask_blocks_equals_in_process(ct, rng):
    """What a dask task does: a copy of the pass's accumulator over a block of rows, merged."""
    from streamclust.engine.cluster import _accumulate
    from streamclust.engine import RowSource

    X = rng.normal(size=(400, 3)) * 2 + 10.0
    w = rng.uniform(0.1, 2.0, size=400)
    est = StreamingGaussianMixture(3, covariance_type=ct, random_state=0, batch_size=64).fit(X)
    source = RowSource(X)
    for make in (lambda: GMMStatsAccumulator(est.weights_, est.means_, est.precisions_cholesky_, ct,
                                             sample_weight=w),
                 lambda: HardAssignAccumulator(est.means_, ct, sample_weight=w)):
        whole = make()
        for lo, Xb in source.iter_batches(50):
            whole.update(Xb, lo)
        parts = [_accumulate(make(), source, lo, hi, 50, np.float64) for lo, hi in [(0, 150), (150, 300), (300, 400)]]
        for part in parts[1:]:
            parts[0].merge(part)
        for key, value in whole.state_dict().items():
            assert_allclose(parts[0].state_dict()[key], value, rtol=1e-9, atol=1e-8, err_msg=key)
        assert parts[0].weight_sum == pytest.approx(w.sum())


# --------------------------------------------------------------------------------------
# float32, messages


@pytest.mark.parametrize("ct", COV_TYPES)
def test_float32_input_gives_float32_attributes_from_float64_statistics(ct):
    X32 = _blobs(seed=6).astype(np.float32)
    kw = dict(n_components=3, covariance_type=ct, random_state=0, batch_size=97)
    g32 = StreamingGaussianMixture(**kw).fit(X32)
    g64 = StreamingGaussianMixture(**kw).fit(X32.astype(np.float64))
    for attr in FITTED:
        assert getattr(g32, attr).dtype == np.float32, attr
        assert_array_equal(getattr(g32, attr), getattr(g64, attr).astype(np.float32), err_msg=attr)
    assert g32.n_iter_ == g64.n_iter_ and g32.lower_bound_ == g64.lower_bound_
    assert g32.predict_proba(X32).dtype == np.float32 and g32.score_samples(X32).dtype == np.float32
    assert g32.predict_proba(X32.astype(np.float64)).dtype == np.float64
    # inference uses the float64 parameters the attributes were cast from
    assert_array_equal(g32.predict(X32), g64.predict(X32))
    assert g32.score(X32) == g64.score(X32)
    # warm start from float32 attributes continues the float64 fit
    warm = dict(kw, warm_start=True, max_iter=1)
    with pytest.warns(ConvergenceWarning):
        a = StreamingGaussianMixture(**warm).fit(X32).fit(X32)
        b = StreamingGaussianMixture(**warm).fit(X32.astype(np.float64)).fit(X32.astype(np.float64))
    assert_array_equal(a.means_, b.means_.astype(np.float32))
    g32.partial_fit(X32[:200])
    assert g32.means_.dtype == np.float32


def test_float32_weights_init_normalised_at_float32_precision():
    X = _blobs().astype(np.float32)
    weights = np.random.RandomState(7).rand(4).astype(np.float32)
    weights = weights / weights.sum()
    # normalised at float32 precision, but off by more than float64's tolerance (the issue's case)
    assert 1e-8 < abs(1.0 - np.sum(weights, dtype=np.float64)) < 1e-6
    gm = StreamingGaussianMixture(4, weights_init=weights, random_state=0, batch_size=97).fit(X)
    assert_allclose(gm.weights_.sum(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="normalized"):
        StreamingGaussianMixture(4, weights_init=(weights * 1.001).astype(np.float32)).fit(X)


def test_ill_defined_covariance_has_sklearns_message():
    X = np.repeat(np.array([[0.0, 1.0], [3.0, 3.0]]), 50, axis=0)
    msg = ("Fitting the mixture model failed because some components have ill-defined empirical covariance "
           "(for instance caused by singleton or collapsed samples). Try to decrease the number of "
           "components, increase reg_covar, or scale the input data.")
    for ct in COV_TYPES:
        with pytest.raises(ValueError, match=re.escape(msg)):
            StreamingGaussianMixture(2, covariance_type=ct, reg_covar=0.0, random_state=0).fit(X)


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::DeprecationWarning", "ignore::UserWarning:distributed")
def test_weighted_fits_on_a_dask_cluster_equal_in_process():
    """The real dask driver (tasks over blocks of rows, tree-merged) with weights, k-means and GMM."""
    import zarr
    from distributed import Client, LocalCluster

    from streamclust.models import StreamingKMeans

    X = _blobs(n=900, seed=8)
    w = np.random.default_rng(2).uniform(0.2, 3.0, size=900)
    store = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(97, 3), dtype="f8")
    store[:] = X
    gkw = dict(n_components=3, covariance_type="full", batch_size=97, random_state=0)
    kkw = dict(n_clusters=3, method="lloyd", batch_size=97, random_state=0)
    local_g = StreamingGaussianMixture(**gkw).fit(store, sample_weight=w)
    local_k = StreamingKMeans(**kkw).fit(store, sample_weight=w)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dist_g = fit_streaming(StreamingGaussianMixture(**gkw), store, sample_weight=w, client=client)
        dist_k = fit_streaming(StreamingKMeans(**kkw), store, sample_weight=w, client=client)
    assert dist_g.n_iter_ == local_g.n_iter_
    for attr in FITTED:
        assert_allclose(getattr(dist_g, attr), getattr(local_g, attr), rtol=1e-8, atol=1e-10, err_msg=attr)
    assert_allclose(dist_k.cluster_centers_, local_k.cluster_centers_, rtol=1e-10)
    assert_array_equal(dist_k.labels_, local_k.labels_)
    assert dist_k.inertia_ == pytest.approx(local_k.inertia_, rel=1e-10)


def test_initialisations_tied_to_rounding_keep_the_first():
    """Two initialisations that end in one solution (its components swapped) tie whatever
    the last bits of their lower bounds, which the backend's rounding decides."""
    plan = StreamingGaussianMixture(3, n_init=3, random_state=0)._make_plan(RowSource(_blobs()))
    lb = -10.44594035
    plan.lower_bound = np.array([lb, lb * (1 - 1e-13), lb - 1.0])
    assert plan.best() == 0
    plan.lower_bound = np.array([lb, lb * (1 - 1e-6), lb * (1 - 1e-13)])
    assert plan.best() == 1  # better by more than rounding: as scikit-learn
    plan.lower_bound = np.array([-np.inf, lb - 1.0, lb])
    assert plan.best() == 2


def test_a_centre_no_row_reaches_in_a_kmeans_init_pass_moves_to_the_worst_explained_sample_row():
    from streamclust.engine import settle
    from streamclust.models.gmm import GMMPlan
    from streamclust.models.kmeans import nearest_centre

    X, _ = make_blobs(900, 2, centers=[[0, 0], [10, 0], [0, 10]], cluster_std=0.5, random_state=0)
    plan = GMMPlan(n_samples=len(X), n_features=2, n_components=3, covariance_type="diag", tol=1e-3,
                   reg_covar=1e-6, max_iter=10, n_init=1, init_params="kmeans", seed=0)
    acc = plan.next_pass()  # the sample, seeded and refined in memory
    acc.update(X, 0)
    plan.end_pass(acc)
    centres = plan.centres[0].copy()
    labels, _ = nearest_centre(X, centres)
    acc = plan.next_pass()  # a k-means pass that only the rows of two cells reach
    acc.update(X[labels != 2], 0)
    settle(acc)
    plan.end_pass(acc)
    assert plan.hard_iter == 1 and plan.centres is not None  # not stable: another pass follows
    sample = plan._samples()[0]
    _, dist = nearest_centre(sample, plan.centres[0][:2])
    assert_array_equal(plan.centres[0][2], sample[np.argmax(dist)])
    kept = X[labels != 2]
    for j in (0, 1):
        assert_allclose(plan.centres[0][j], kept[labels[labels != 2] == j].mean(axis=0), rtol=1e-12)


def test_the_seeding_sample_and_what_is_derived_from_it_are_let_go_when_em_starts():
    from streamclust.engine import run_passes
    from streamclust.models.gmm import GMMPlan

    X, _ = make_blobs(900, 3, centers=3, random_state=1)
    plan = GMMPlan(n_samples=len(X), n_features=3, n_components=3, covariance_type="diag", tol=1e-3,
                   reg_covar=1e-6, max_iter=3, n_init=2, init_params="kmeans", seed=0)
    seen = []
    real = plan._end_hard

    def end_hard(acc):
        real(acc)
        seen.append(plan._tols is not None or plan.sample is None)

    plan._end_hard = end_hard
    run_passes(plan, RowSource(X), 300)
    assert seen and all(seen)  # the tolerances serve the k-means passes
    assert plan.sample is None and plan._tols is None  # and go with the sample
