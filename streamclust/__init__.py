"""streamclust: cluster and model image collections far larger than memory.

The estimators follow scikit-learn's conventions and accept NumPy, zarr or dask arrays,
streaming over them ``batch_size`` rows at a time::

    >>> from streamclust import StreamingPCA, StreamingKMeans, StreamingGaussianMixture
"""

__version__ = "0.1.0"

from .config import FitConfig, IngestConfig
from .models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA, fit_streaming
from .models.io import load_model, save_model

__all__ = [
    "StreamingPCA",
    "StreamingKMeans",
    "StreamingGaussianMixture",
    "fit_streaming",
    "IngestConfig",
    "FitConfig",
    "load_model",
    "save_model",
    "__version__",
]
