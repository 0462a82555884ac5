"""Streaming estimators: PCA, k-means and Gaussian mixtures over arrays larger than memory."""

from ._base import fit_streaming
from .gmm import StreamingGaussianMixture
from .kmeans import StreamingKMeans
from .pca import StreamingPCA

__all__ = ["StreamingPCA", "StreamingKMeans", "StreamingGaussianMixture", "fit_streaming"]
