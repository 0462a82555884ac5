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

from ..engine.backend import PLACEMENT_PARAMS

from .._atomic import load_npz, save_npz
from ..errors import IntegrityError, RunDirError

__all__ = ["save_model", "load_model", "model_arrays", "validate_model"]

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
    """Write ``estimator``'s parameters (but where it ran: ``backend`` and ``device``, which a
    loaded model takes as ``"auto"``) and learned attributes to ``path`` atomically."""
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k not in PLACEMENT_PARAMS}
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
    """Rebuild the estimator saved by :func:`save_model` (``allow_pickle=False`` throughout).

    The file is validated (:func:`validate_model`): an unreadable or truncated file, or
    learned values that no fit gives (shapes that disagree, NaN or infinite values, mixture
    weights that are negative or do not sum to 1, covariances that are not positive)
    raise :class:`~streamclust.errors.IntegrityError`, one line naming the file and the
    command that rebuilds it.
    """
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"model file {str(path)!r} does not exist; run `streamclust fit` first")
    try:
        arrays = load_npz(path)
        meta = json.loads(arrays.pop(_META).tobytes().decode())
        registry = _registry()
        if meta.get("class") not in registry:
            raise ValueError(f"unknown model class {meta.get('class')!r}")
        cls = registry[meta["class"]]
        params = dict(meta["params"])
        for key in meta["array_params"]:
            params[key] = arrays.pop(f"param:{key}")
        est = cls(**{k: v for k, v in params.items() if k in cls().get_params(deep=False)})
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes numpy, zipfile or json raise
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise _damaged(path, f"the model file cannot be read ({why})") from None
    for key, value in arrays.items():
        setattr(est, key, value.item() if value.ndim == 0 else value)
    est._streamclust_extra = meta.get("extra", {})
    problem = validate_model(est)
    if problem:
        raise _damaged(path, problem)
    return est


def _damaged(path: Path, problem: str) -> IntegrityError:
    if path.parent.name == "model":
        rebuild = f"rebuild with `streamclust fit {path.parent.parent} --overwrite`"
    else:
        rebuild = "save the model again (streamclust.models.io.save_model)"
    return IntegrityError(f"{path}: {problem}; {rebuild}")


#: learned values that may be infinite in a sound model (a first lower bound of -inf)
_NONFINITE_OK = frozenset({"lower_bound_", "lower_bounds_"})


def validate_model(est) -> str | None:
    """What is wrong with a loaded estimator's learned values, or ``None`` when nothing is.

    Every learned float array finite; for the PCA, k-means and the mixture, shapes that
    agree with each other and with ``n_features_in_``; explained variances >= 0; mixture
    weights >= 0 summing to 1; variances, covariance diagonals and precision Cholesky
    diagonals > 0.
    """
    for key, value in model_arrays(est).items():
        if key in _NONFINITE_OK or value.dtype.kind not in "fc":
            continue
        if not np.all(np.isfinite(value)):
            return f"{key} holds NaN or infinite values"
    name = type(est).__name__
    d = getattr(est, "n_features_in_", None)

    def shape(key: str, expected: tuple) -> str | None:
        value = getattr(est, key, None)
        if value is None:
            return f"{key} is missing"
        got = np.shape(value)
        if len(got) != len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
            return f"{key} has shape {got}, expected {tuple('?' if e is None else e for e in expected)}"
        return None

    if name == "StreamingPCA":
        comps = getattr(est, "components_", None)
        k = np.shape(comps)[0] if comps is not None and np.ndim(comps) == 2 else None
        problem = (shape("components_", (None, d)) or shape("mean_", (d,))
                   or shape("explained_variance_", (k,)))
        if problem:
            return problem
        if np.any(np.asarray(est.explained_variance_) < 0):
            return "explained_variance_ has negative values"
    elif name == "StreamingKMeans":
        return shape("cluster_centers_", (None, d))
    elif name == "StreamingGaussianMixture":
        problem = shape("weights_", (None,))
        if problem:
            return problem
        g = np.shape(est.weights_)[0]
        cov = {"full": (g, d, d), "tied": (d, d), "diag": (g, d), "spherical": (g,)}.get(est.covariance_type)
        if cov is None:
            return f"unknown covariance_type {est.covariance_type!r}"
        problem = (shape("means_", (g, d)) or shape("covariances_", cov)
                   or shape("precisions_cholesky_", cov))
        if problem:
            return problem
        w = np.asarray(est.weights_, dtype=np.float64)
        if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-4:
            return f"weights_ are not >= 0 summing to 1 (sum {w.sum():.6g}, min {w.min():.6g})"
        for key in ("covariances_", "precisions_cholesky_"):
            value = np.asarray(getattr(est, key), dtype=np.float64)
            diag = np.diagonal(value, axis1=-2, axis2=-1) if est.covariance_type in ("full", "tied") else value
            if np.any(diag <= 0):
                return f"{key} are not positive"
    return None
