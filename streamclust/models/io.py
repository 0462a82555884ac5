"""Save and load fitted estimators as ``.npz`` files that never need pickle.

A model file holds every learned attribute (the names scikit-learn uses: ``components_``,
``cluster_centers_``, ``means_`` ...) as a plain array, plus the estimator's class name
and its parameters as JSON.  ``numpy.load(path, allow_pickle=False)`` reads it, and
:func:`load_model` rebuilds the estimator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import load_npz, save_npz
from ..errors import RunDirError

__all__ = ["save_model", "load_model", "model_arrays"]

_META = "__streamclust__"


def _registry() -> dict[str, type]:
    from . import StreamingGaussianMixture, StreamingKMeans, StreamingPCA
    from .agglomerative import StreamingAgglomerative
    from .embed import StreamingTSNE
    from .kpca import StreamingKernelPCA

    return {cls.__name__: cls for cls in (StreamingPCA, StreamingKMeans, StreamingGaussianMixture,
                                          StreamingKernelPCA, StreamingAgglomerative, StreamingTSNE)}


def _jsonable(value: Any):
    if isinstance(value, np.ndarray):
        return None
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def model_arrays(estimator) -> dict[str, np.ndarray]:
    """The learned attributes of a fitted estimator (public names ending in ``_``)."""
    out = {}
    for key, value in vars(estimator).items():
        if not key.endswith("_") or key.startswith("_") or value is None:
            continue
        arr = np.asarray(value)
        if arr.dtype == object:
            continue
        out[key] = arr
    return out


def save_model(estimator, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``estimator``'s parameters and learned attributes to ``path`` atomically."""
    params = estimator.get_params(deep=False)
    array_params = {k: np.asarray(v) for k, v in params.items() if isinstance(v, np.ndarray)}
    meta = {
        "class": type(estimator).__name__,
        "params": {k: _jsonable(v) for k, v in params.items() if k not in array_params},
        "array_params": sorted(array_params),
        "extra": extra or {},
    }
    arrays = model_arrays(estimator)
    arrays.update({f"param:{k}": v for k, v in array_params.items()})
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return save_npz(path, arrays)


def load_model(path: str | os.PathLike):
    """Rebuild the estimator saved by :func:`save_model` (``allow_pickle=False`` throughout)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"model file {str(path)!r} does not exist; run `streamclust fit` first")
    arrays = load_npz(path)
    meta = json.loads(arrays.pop(_META).tobytes().decode())
    cls = _registry()[meta["class"]]
    params = dict(meta["params"])
    for key in meta["array_params"]:
        params[key] = arrays.pop(f"param:{key}")
    est = cls(**{k: v for k, v in params.items() if k in cls().get_params(deep=False)})
    for key, value in arrays.items():
        setattr(est, key, value.item() if value.ndim == 0 else value)
    est._streamclust_extra = meta.get("extra", {})
    return est
