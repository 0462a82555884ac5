"""Tests of streamclust.models.embed: StreamingTSNE and embed_to_zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

pytest.importorskip("openTSNE")

from streamclust.engine import Checkpointer, fit_streaming  # noqa: E402
from streamclust.models.embed import StreamingTSNE, embed_to_zarr  # noqa: E402

FAST = dict(n_iter=150, early_exaggeration_iter=60, transform_n_iter=40)


def as_zarr(X, chunk_rows):
    arr = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(chunk_rows, *X.shape[1:]),
                            dtype=X.dtype)
    arr[:] = X
    return arr


@pytest.fixture(scope="module")
def fitted():
    X, y = make_blobs(2000, 8, centers=5, cluster_std=2.0, random_state=0)
    est = StreamingTSNE(sample_size=400, batch_size=300, random_state=0, **FAST).fit(as_zarr(X, 128))
    return X, y, est


def test_sample_keeps_positions_and_new_points_land_among_their_neighbours(fitted):
    X, y, est = fitted
    assert est.embedding_.shape == (400, 2) and est.sample_.shape == (400, 8)
    assert np.all(np.diff(est.sample_indices_) > 0)
    assert_array_equal(est.sample_, X[est.sample_indices_])
    Y = est.transform(X)
    assert_array_equal(Y[est.sample_indices_], est.embedding_)
    new = np.setdiff1d(np.arange(len(X)), est.sample_indices_)
    knn = KNeighborsClassifier(5).fit(est.embedding_, y[est.sample_indices_])
    assert (knn.predict(Y[new]) == y[new]).mean() >= 0.9


def test_transform_is_deterministic_and_streams_over_zarr(fitted):
    X, _, est = fitted
    a = est.transform(X[:600])
    assert_array_equal(est.transform(as_zarr(X[:600], 100)), a)
    assert np.isfinite(a).all()


def test_embed_to_zarr_writes_float32_chunks_and_resumes(fitted, tmp_path):
    X, _, est = fitted
    path = tmp_path / "embedding.zarr"
    ref = est.transform(X).astype(np.float32)
    arr = embed_to_zarr(est, as_zarr(X, 128), path, batch_size=300)
    assert arr.dtype == np.float32 and arr.shape == (2000, 2) and arr.attrs["complete"]
    assert_allclose(arr[:], ref, rtol=0, atol=0)

    class Stop(Exception):
        pass

    def stop_after_900(name, done, total):
        if done >= 900:
            raise Stop

    path2 = tmp_path / "resumed.zarr"
    with pytest.raises(Stop):
        embed_to_zarr(est, X, path2, batch_size=300, progress=stop_after_900)
    partial = zarr.open_array(str(path2))
    assert partial.attrs["rows_done"] == 900 and not partial.attrs["complete"]
    seen = []
    arr2 = embed_to_zarr(est, X, path2, batch_size=300, progress=lambda n, d, t: seen.append(d))
    assert seen[0] == 1200  # started after the 900 rows already written
    assert_array_equal(arr2[:], arr[:])
    rows = np.arange(0, 2000, 4)
    sub = embed_to_zarr(est, X, tmp_path / "sub.zarr", rows=rows, batch_size=300)
    assert sub.shape == (500, 2)


def test_resume_of_the_fit(tmp_path):
    X, _ = make_blobs(600, 4, random_state=0)
    params = dict(sample_size=150, batch_size=100, random_state=3, **FAST)
    full = StreamingTSNE(**params).fit(X)
    path = tmp_path / "tsne.ckpt.npz"

    class Stop(Exception):
        pass

    def stop(name, done, total):
        if done >= 300:
            raise Stop

    with pytest.raises(Stop):
        fit_streaming(StreamingTSNE(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0), progress=stop)
    resumed = fit_streaming(StreamingTSNE(**params), X, checkpoint=Checkpointer(path, "k", every_seconds=0))
    assert_array_equal(resumed.embedding_, full.embedding_)
    assert_array_equal(resumed.sample_indices_, full.sample_indices_)


def test_errors():
    X, _ = make_blobs(50, 3, random_state=0)
    with pytest.raises(NotFittedError):
        StreamingTSNE().transform(X)
    with pytest.raises(InvalidParameterError, match="sample_size"):
        StreamingTSNE(sample_size=1).fit(X)
    with pytest.raises(ValueError, match="at least 3 samples"):
        StreamingTSNE().fit(X[:2])
    est = StreamingTSNE(sample_size=30, random_state=0, **FAST).fit(X)
    with pytest.raises(ValueError, match="3 features"):
        est.transform(np.zeros((2, 5)))


@parametrize_with_checks([StreamingTSNE(sample_size=25, batch_size=7, random_state=0, **FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
