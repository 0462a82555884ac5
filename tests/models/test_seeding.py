"""k-means++ where the sample is: scikit-learn's seeds exactly on NumPy, the same on PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus
from sklearn.datasets import make_blobs

from streamclust.engine import RowSource, run_passes
from streamclust.engine.backend import NUMPY
from streamclust.models._seeding import kmeans_plusplus

CASES = [  # rows, features, seeds, weighted, trials
    (500, 5, 7, False, None),
    (3000, 40, 200, False, None),
    (2000, 30, 40, True, None),
    (60, 3, 60, False, None),  # every row a seed
    (800, 8, 1, True, None),
    (900, 6, 25, False, 1),
]


def _data(n, d, weighted, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.linspace(3, 0.5, d)
    X[: n // 10] = X[0]  # repeated rows: equal distances, equal potentials
    return X, (rng.uniform(0.1, 3.0, size=n) if weighted else None)


@pytest.mark.parametrize("n,d,k,weighted,trials", CASES)
def test_the_seeds_are_scikit_learns_exactly(n, d, k, weighted, trials):
    X, w = _data(n, d, weighted)
    for seed in (0, 7):
        want, want_idx = sklearn_kmeans_plusplus(X, k, random_state=seed, sample_weight=w, n_local_trials=trials)
        got, idx = kmeans_plusplus(X, k, random_state=seed, sample_weight=w, n_local_trials=trials)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float64 and idx.shape == (k,)


def test_a_random_state_object_is_drawn_from_as_scikit_learns():
    X, _ = _data(400, 4, False)
    a, b = np.random.RandomState(3), np.random.RandomState(3)
    for _ in range(3):  # successive seedings from one generator: the same draws in the same order
        np.testing.assert_array_equal(kmeans_plusplus(X, 9, random_state=a)[1],
                                      sklearn_kmeans_plusplus(X, 9, random_state=b)[1])
    assert a.uniform() == b.uniform()


def test_float32_rows_are_seeded_in_float64():
    X, _ = _data(300, 5, False)
    got = kmeans_plusplus(X.astype(np.float32), 6, random_state=1)
    want = kmeans_plusplus(X.astype(np.float32).astype(np.float64), 6, random_state=1)
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.float64


def test_fewer_rows_than_seeds_is_scikit_learns_error():
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_clusters=4"):
        kmeans_plusplus(np.zeros((3, 2)), 4)


# ----------------------------------------------------------------- on a PyTorch device
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("n,d,k,weighted,trials", CASES)
def test_on_a_device_the_seeds_are_the_same(n, d, k, weighted, trials):
    X, w = _data(n, d, weighted, seed=1)
    want, want_idx = kmeans_plusplus(X, k, random_state=4, sample_weight=w, n_local_trials=trials)
    got, idx = kmeans_plusplus(torch.as_tensor(X), k, random_state=4, sample_weight=w, n_local_trials=trials)
    assert isinstance(got, np.ndarray) and isinstance(idx, np.ndarray)
    # once every distinct row is a seed the potential is rounding, and so are the last draws
    m = min(k, len(np.unique(X, axis=0)))
    np.testing.assert_array_equal(idx[:m], want_idx[:m])
    np.testing.assert_array_equal(got[:m], want[:m])
    assert len(np.unique(got, axis=0)) == m


def test_on_a_device_nothing_comes_back_until_the_last_seed(monkeypatch):
    """No tensor is read by the host (``item``, a conversion to a Python number, a boolean
    mask or ``nonzero``, whose sizes the host must know) while the seeds are chosen; the
    seeds and their indices cross once each, at the end."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads, copies = [], []
    waits = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default)

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            boolean_index = func is torch.ops.aten.index.Tensor and any(
                i is not None and i.dtype == torch.bool for i in args[1])
            if func in waits or boolean_index:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    for name in ("cpu", "numpy", "tolist", "__array__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **kw: (
            copies.append(_name), _real(self, *a, **kw))[1])
    X, w = _data(1000, 12, True)
    T = torch.as_tensor(X)
    with Watch():
        centres, idx = kmeans_plusplus(T, 30, random_state=2, sample_weight=w)
    assert reads == []
    assert copies == ["cpu", "numpy", "cpu", "numpy"]  # the seeds, then their indices
    np.testing.assert_array_equal(idx, kmeans_plusplus(X, 30, random_state=2, sample_weight=w)[1])


def test_the_seedings_on_a_device_equal_the_cpus():
    """The GPU branches (the sample copied to the device once, k-means++ and the in-memory Lloyd
    there), run on PyTorch's CPU device: k-means' seeding and a mixture's k-means initialisation."""
    from streamclust.models.gmm import GMMPlan
    from streamclust.models.kmeans import _seed_centers
    from .test_backend import _DeviceLinalg

    device = _DeviceLinalg("torch", "cpu")
    X, _ = make_blobs(3000, 6, centers=5, cluster_std=[1.0, 2.0, 0.5, 1.5, 1.0], random_state=3)
    w = np.random.default_rng(0).uniform(0.5, 2.0, size=len(X))
    for weights in (None, w):
        a = _seed_centers(X[:1500], 5, "k-means++", 3, 30, 1e-4, 11, sample_weight=None if weights is None
                          else weights[:1500])
        b = _seed_centers(X[:1500], 5, "k-means++", 3, 30, 1e-4, 11, sample_weight=None if weights is None
                          else weights[:1500], backend=device)
        np.testing.assert_allclose(b[0], a[0], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(b[1], a[1], rtol=1e-12)

        kw = dict(n_samples=len(X), n_features=6, n_components=5, covariance_type="diag", tol=1e-3,
                  reg_covar=1e-6, max_iter=20, n_init=2, init_params="kmeans", seed=5, sample_weight=weights)
        plans = [GMMPlan(**kw, backend=b) for b in (NUMPY, device)]
        for plan in plans:
            run_passes(plan, RowSource(X), 700)
        assert plans[0].pass_index == plans[1].pass_index
        np.testing.assert_array_equal(plans[1].n_iter, plans[0].n_iter)
        for name in ("weights", "means", "covariances"):
            np.testing.assert_allclose(getattr(plans[1], name), getattr(plans[0], name), rtol=1e-9, atol=1e-12)
