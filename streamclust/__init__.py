"""streamclust: cluster and model image collections far larger than memory."""

__version__ = "0.1.0"
