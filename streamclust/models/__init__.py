"""Streaming estimators: PCA, k-means and Gaussian mixtures over arrays larger than memory,
plus kernel PCA, agglomerative clustering and a t-SNE map built on the same passes."""

from ..engine import fit_streaming
from .agglomerative import StreamingAgglomerative
from .embed import StreamingTSNE
from .gmm import StreamingGaussianMixture
from .kmeans import StreamingKMeans
from .kpca import StreamingKernelPCA
from .pca import StreamingPCA

__all__ = [
    "StreamingPCA",
    "StreamingKMeans",
    "StreamingGaussianMixture",
    "StreamingKernelPCA",
    "StreamingAgglomerative",
    "StreamingTSNE",
    "fit_streaming",
]
