"""streamclust: cluster and model image collections far larger than memory.

The estimators follow scikit-learn's conventions and accept NumPy, zarr or dask arrays,
streaming over them ``batch_size`` rows at a time::

    >>> from streamclust import StreamingPCA, StreamingKMeans, StreamingGaussianMixture
    >>> from streamclust import StreamingKernelPCA, StreamingAgglomerative, StreamingTSNE

A run directory from Python (what the command line is a thin layer over)::

    >>> from streamclust import Run
    >>> run = Run("runs/faces")                            # doctest: +SKIP
    >>> run.ingest("faces.zip", size=64); run.fit(clusters=100)  # doctest: +SKIP

Names are imported on first use (PEP 562), so that light modules such as the image
decoder, which every ingestion worker process imports, do not pull in scikit-learn.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "StreamingPCA": "streamclust.models",
    "StreamingKMeans": "streamclust.models",
    "StreamingGaussianMixture": "streamclust.models",
    "StreamingKernelPCA": "streamclust.models",
    "StreamingAgglomerative": "streamclust.models",
    "StreamingTSNE": "streamclust.models",
    "fit_streaming": "streamclust.models",
    "Run": "streamclust.api",
    "IngestConfig": "streamclust.config",
    "FitConfig": "streamclust.config",
    "load_model": "streamclust.models.io",
    "save_model": "streamclust.models.io",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamclust' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
