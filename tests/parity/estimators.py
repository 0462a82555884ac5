"""Our estimators under scikit-learn's names, as scikit-learn's test modules see them.

Each class is the streamclust estimator with

- a small odd ``batch_size`` (:data:`BATCH`), so that every fit of the tests' small data
  sets streams over several batches (the last one short);
- scikit-learn's defaults for the parameters both estimators share but default
  differently (``max_iter``, ``tol``, ``max_no_improvement``), so that a test relying
  on a default sees scikit-learn's;
- the class name of scikit-learn's estimator (error messages such as "This
  GaussianMixture instance is not fitted yet" name the class).

Nothing else is changed: every method is ours.

:func:`as_zarr` and :func:`as_dask` build the lazy inputs that replace the sparse
containers of the k-means module; :func:`lazy_input` converts in-memory arrays to the
input kind a test is parametrized with (``parity_input``, see ``conftest.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect

import dask.array as da
import numpy as np
import zarr

from streamclust.models.gmm import StreamingGaussianMixture
from streamclust.models.kmeans import StreamingKMeans
from streamclust.models.pca import StreamingPCA

__all__ = ["BATCH", "KMeans", "MiniBatchKMeans", "GaussianMixture", "PCA", "IncrementalPCA", "as_zarr", "as_dask",
           "input_kind"]

#: rows per batch of every parity fit (odd, and smaller than the tests' data sets)
BATCH = 7

#: the input kind ("numpy", "zarr" or "dask") that the estimators below convert to
_INPUT_KIND: contextvars.ContextVar[str] = contextvars.ContextVar("parity_input", default="numpy")


def _dense(X, dtype=None):
    """``X`` as a NumPy array (a SciPy sparse matrix densified: the PCA modules build their
    "sparse" input with SciPy, and the lazy containers stand in for it)."""
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.asarray(X, dtype=dtype)


def as_zarr(X, dtype=None):
    """``X`` as an in-memory zarr array in chunks of :data:`BATCH` - 2 rows (not batch-aligned)."""
    X = _dense(X, dtype)
    arr = zarr.create_array(store=zarr.storage.MemoryStore(), shape=X.shape,
                            chunks=(max(BATCH - 2, 1), *X.shape[1:]), dtype=X.dtype)
    arr[:] = X
    return arr


def as_dask(X, dtype=None):
    """``X`` as a dask array in chunks of :data:`BATCH` + 2 rows."""
    X = _dense(X, dtype)
    return da.from_array(X, chunks=(BATCH + 2, *X.shape[1:]))


_CONVERT = {"zarr": as_zarr, "dask": as_dask}


@contextlib.contextmanager
def input_kind(kind: str):
    """Within the block, the estimators below see their in-memory inputs as ``kind`` arrays."""
    token = _INPUT_KIND.set(kind)
    try:
        yield
    finally:
        _INPUT_KIND.reset(token)


def _lazy(X):
    kind = _INPUT_KIND.get()
    if kind == "numpy" or not isinstance(X, np.ndarray) or X.ndim != 2:
        return X
    return _CONVERT[kind](X)


class _LazyInput:
    """Feeds the methods that take ``X`` the input kind of the current test."""

    def fit(self, X, y=None, **fit_params):
        return super().fit(_lazy(X), y, **fit_params)

    def predict(self, X):
        return super().predict(_lazy(X))

    def score(self, X, y=None):
        return super().score(_lazy(X), y)


def _with_defaults(base, name: str, doc: str, *, methods: tuple[str, ...] = (), aliases: dict | None = None,
                   **defaults):
    """``base`` under scikit-learn's class ``name``, with other defaults for some parameters.

    The constructor keeps ``base``'s signature (with the new defaults), so ``get_params``,
    ``clone`` and ``set_params`` see exactly ``base``'s parameters.  ``methods`` (besides
    ``fit``, ``predict`` and ``score``) also convert their ``X`` to the test's input kind.
    ``aliases`` maps a scikit-learn keyword the constructor also takes (however it is
    passed, e.g. from a ``**kwargs`` dict) to ``(our parameter, value conversion)``.
    """
    aliases = dict(aliases or {})
    sig = inspect.signature(base.__init__)
    unknown = set(defaults) - set(sig.parameters)
    if unknown:
        raise TypeError(f"{base.__name__} has no parameters {sorted(unknown)}")
    new_sig = sig.replace(parameters=[p.replace(default=defaults.get(p.name, p.default))
                                      for p in sig.parameters.values()])

    def __init__(self, *args, **kwargs):
        for alias, (param, convert) in aliases.items():
            if alias in kwargs:
                kwargs[param] = convert(kwargs.pop(alias))
        bound = new_sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        base.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = new_sig
    namespace = {"__init__": __init__, "__doc__": doc, "__module__": __name__, "__qualname__": name}
    for method in methods:
        if hasattr(base, method):  # methods the estimator does not have (yet) stay absent
            namespace[method] = _lazy_method(base, method)
    return type(name, (_LazyInput, base), namespace)


def _lazy_method(base, method: str):
    def call(self, X, *args, **kwargs):
        return getattr(base, method)(self, _lazy(X), *args, **kwargs)

    call.__name__ = method
    return call


KMeans = _with_defaults(
    StreamingKMeans, "KMeans",
    """``StreamingKMeans(method="lloyd")``: exact Lloyd passes, as ``sklearn.cluster.KMeans``.""",
    methods=("transform", "fit_predict", "fit_transform"),
    method="lloyd", max_iter=300, tol=1e-4, batch_size=BATCH,
)
MiniBatchKMeans = _with_defaults(
    StreamingKMeans, "MiniBatchKMeans",
    """``StreamingKMeans(method="minibatch")``: mini-batch epochs, as ``sklearn.cluster.MiniBatchKMeans``.""",
    methods=("transform", "fit_predict", "fit_transform"),
    method="minibatch", max_iter=100, tol=0.0, max_no_improvement=10, batch_size=BATCH,
)
GaussianMixture = _with_defaults(
    StreamingGaussianMixture, "GaussianMixture",
    """``StreamingGaussianMixture`` (exact streamed EM), as ``sklearn.mixture.GaussianMixture``.""",
    methods=("predict_proba", "score_samples", "bic", "aic", "fit_predict"),
    batch_size=BATCH,
)
#: scikit-learn's PCA solvers -> StreamingPCA's methods: the exact ones (a full SVD, the
#: covariance's eigh, and ARPACK, an exact truncated solver) -> the exact covariance method;
#: the randomized SVD -> the streamed randomized subspace iteration; "auto" -> "auto" (our
#: rule, see deviations.py)
SOLVER_METHOD = {"full": "covariance", "covariance_eigh": "covariance", "randomized": "randomized",
                 "arpack": "covariance", "auto": "auto"}

PCA = _with_defaults(
    StreamingPCA, "PCA",
    """``StreamingPCA``, as ``sklearn.decomposition.PCA``: ``svd_solver`` becomes ``method``
    (:data:`SOLVER_METHOD`), ``iterated_power`` ``n_power_iter``.

    Two defaults as scikit-learn's: the sketch multiplies in float64 (``dtype="float64"``;
    streamclust's default, float32 products for pixels, is not what scikit-learn does with
    float64 data), and 7 power iterations (scikit-learn's ``iterated_power="auto"`` for a
    few components).""",
    methods=("transform", "fit_transform", "inverse_transform", "score_samples", "partial_fit"),
    aliases={"svd_solver": ("method", SOLVER_METHOD.__getitem__), "iterated_power": ("n_power_iter", int)},
    batch_size=BATCH, dtype="float64", n_power_iter=7,
)
IncrementalPCA = _with_defaults(
    StreamingPCA, "IncrementalPCA",
    """``StreamingPCA(method="incremental")``, as ``sklearn.decomposition.IncrementalPCA``.""",
    methods=("transform", "fit_transform", "inverse_transform", "score_samples", "partial_fit"),
    method="incremental", batch_size=BATCH,
)
