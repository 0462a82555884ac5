"""Quality on real images, against in-memory scikit-learn on the same pixels or features."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from streamclust.models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA


def test_cifar_pca_at_99_percent_is_scikit_learns(cifar):
    """The exact method: the same number of components for 0.99, every ratio equal to 1e-6."""
    est = StreamingPCA(0.99, batch_size=700).fit(cifar.images)
    ref = PCA(0.99, svd_solver="full").fit(cifar.X)
    assert est.method_ == "covariance"
    assert est.n_components_ == ref.n_components_ > 300  # real photos: hundreds of components
    assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=0, atol=1e-6)
    assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-6)
    cos = np.abs(np.sum(est.components_[:20] * ref.components_[:20], axis=1))
    assert cos.min() >= 0.9999


def test_cifar_randomized_reaches_the_fraction(cifar):
    """The randomized sketch, grown past the 256 components it starts with, reaches 0.97 too."""
    ref = PCA(0.97, svd_solver="full").fit(cifar.X)
    assert ref.n_components_ > 256
    est = StreamingPCA(0.97, method="randomized", batch_size=700, random_state=0).fit(cifar.images)
    assert est.explained_variance_ratio_.sum() > 0.97
    assert abs(est.n_components_ - ref.n_components_) <= 0.02 * ref.n_components_
    assert_allclose(est.explained_variance_ratio_[:50], ref.explained_variance_ratio_[:50], atol=1e-6)


def test_orl_eigenfaces_are_scikit_learns(orl):
    est = StreamingPCA(10, batch_size=64, random_state=0).fit(orl.images)
    ref = PCA(10, svd_solver="full").fit(orl.X)
    cos = np.abs(np.sum(est.components_ * ref.components_, axis=1))
    assert cos.min() >= 0.999, cos
    assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)


@pytest.mark.parametrize("model", ["kmeans", "gmm"])
def test_mnist_clusters_as_well_as_scikit_learn(mnist, model):
    """ARI against the digit labels, mean over 5 seeds, within 0.02 of scikit-learn's on the same features."""
    F = PCA(30, svd_solver="full").fit_transform(mnist.X)
    ours, theirs = [], []
    for seed in range(5):
        if model == "kmeans":
            a = StreamingKMeans(10, method="lloyd", batch_size=333, random_state=seed).fit(F).predict(F)
            b = KMeans(10, n_init=1, random_state=seed).fit_predict(F)
        else:
            a = StreamingGaussianMixture(10, covariance_type="diag", batch_size=333, random_state=seed).fit(F).predict(F)
            b = GaussianMixture(10, covariance_type="diag", random_state=seed).fit(F).predict(F)
        ours.append(adjusted_rand_score(mnist.y, a))
        theirs.append(adjusted_rand_score(mnist.y, b))
    assert np.mean(theirs) > 0.25  # the task is real: digits, not noise
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.02, (ours, theirs)
