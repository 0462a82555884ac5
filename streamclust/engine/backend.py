"""Where the passes' arithmetic runs: NumPy on the CPU, or PyTorch on a CPU or GPU device.

The kernels of the streaming passes (the PCA's sketch and scatter products, Lloyd's sums
and counts, the mixture's responsibilities and moments, log-likelihoods, assignments) are
written once, against the array API standard: they take the namespace of their batch
(``xp = namespace(X)``, NumPy or PyTorch through ``array-api-compat``) and never import
NumPy or PyTorch for their maths.  This module holds what the standard leaves out and the
kernels need (scatter-adds by label, a one-hot product, the largest entries, moving
arrays between the host and a device), and the choice of backend:

``Backend``
    The backend, device and precision a fit runs with (a frozen, picklable value).
``resolve_backend(backend, device, precision)``
    The user's ``auto | numpy | torch`` and ``auto | cpu | cuda[:N]`` made concrete, or a
    :class:`BackendError` saying in one line what is wrong and how to fix it.

Numerics: the batch is copied to the device in the dtype it is stored in and converted
there to the compute dtype, ``float64`` by default (equal to the NumPy path to rounding)
or ``float32`` (``precision="float32"``: the products in float32, every sum over
batches kept in float64, for GPUs whose float64 is slow).  State that outlives a batch
(sums, counts, the model of the pass) is float64 on the device; checkpoints and results
are NumPy float64 arrays, so a fit checkpointed on a GPU resumes on a CPU and back.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.utils._param_validation import StrOptions

__all__ = [
    "BACKENDS", "PRECISIONS", "PLACEMENT_PARAMS", "PARAMETER_CONSTRAINTS", "GPU_BATCH_BYTES", "Backend",
    "BackendError", "NUMPY", "resolve_backend", "document_parameters",
    "namespace", "is_numpy", "host", "host_rows", "like", "float64", "as_dtype", "numpy_dtype",
    "empty", "subtract", "matmul", "sum_squares", "bincount", "one_hot", "largest", "qr_basis", "symmetric_eigh",
    "DeviceState",
]

logger = logging.getLogger(__name__)

#: the backends a user may name (``auto``: PyTorch on a GPU when one is present, else NumPy)
BACKENDS = ("auto", "numpy", "torch")
#: the compute precisions
PRECISIONS = ("float64", "float32")

_INSTALL_TORCH = ("install PyTorch (pip install torch; for a GPU the build matching your CUDA driver, "
                  "https://pytorch.org/get-started) or use --device cpu")


class BackendError(ValueError):
    """The backend or device asked for cannot be used here (one line: what, and the fix)."""


@dataclass(frozen=True)
class Backend:
    """The array library, device and precision the passes' arithmetic runs with.

    Parameters
    ----------
    name : {"numpy", "torch"}
    device : str
        ``"cpu"`` or a PyTorch device such as ``"cuda:0"`` (``"cpu"`` for NumPy).
    precision : {"float64", "float32"}
        The dtype of the products; sums over batches are float64 either way.
    """

    name: str = "numpy"
    device: str = "cpu"
    precision: str = "float64"

    @property
    def is_numpy(self) -> bool:
        return self.name == "numpy"

    @property
    def on_gpu(self) -> bool:
        return self.name == "torch" and self.device != "cpu"

    @property
    def xp(self):
        """The array-API namespace (``array_api_compat.numpy`` or ``array_api_compat.torch``)."""
        if self.is_numpy:
            import array_api_compat.numpy as xp
        else:
            import array_api_compat.torch as xp
        return xp

    @property
    def dtype(self):
        """The compute dtype, in the namespace's own terms."""
        return getattr(self.xp, self.precision)

    def asarray(self, a, dtype: Any = None):
        """``a`` (a NumPy array) on this backend's device, in ``dtype`` (default: the compute dtype)."""
        dtype = self.dtype if dtype is None else dtype
        if self.is_numpy:
            return np.asarray(a, dtype=dtype)
        import torch

        return torch.as_tensor(np.asarray(a), device=self.device).to(dtype)

    def batch_rows(self, requested: int, n_features: int) -> int:
        """Rows per batch: ``requested``, or on a GPU at least what fills :data:`GPU_BATCH_BYTES`.

        A GPU computes a batch in microseconds; what costs is the launching of its many
        small kernels, once per batch: larger batches keep it busy.  Only for passes whose
        result does not depend on the batches but for rounding (not mini-batch k-means).
        """
        if not self.on_gpu:
            return int(requested)
        itemsize = 8 if self.precision == "float64" else 4
        return int(max(requested, min(GPU_BATCH_MAX_ROWS, GPU_BATCH_BYTES // (itemsize * max(1, int(n_features))))))

    def describe(self) -> str:
        """One phrase for the log: what the passes run on."""
        if self.is_numpy:
            return "NumPy on the CPU"
        import torch

        where = self.device
        if self.on_gpu:
            where = f"{self.device} ({torch.cuda.get_device_name(torch.device(self.device))})"
        return f"PyTorch {torch.__version__} on {where}, {self.precision} products"


#: the default: NumPy on the CPU, float64
NUMPY = Backend()
#: a batch on a GPU holds at least this many bytes in the compute dtype (:meth:`Backend.batch_rows`);
#: in its stored dtype, read and copied ahead, a fraction of that in the host's memory
GPU_BATCH_BYTES = 128 << 20
GPU_BATCH_MAX_ROWS = 65536

#: the estimators' parameters that say where a fit runs, not what it computes: not in model
#: files nor in checkpoint keys (a fit checkpointed on a GPU resumes on a CPU; a model
#: fitted on one loads and predicts on the other)
PLACEMENT_PARAMS = ("backend", "device")

#: scikit-learn constraints of the estimators' ``backend``, ``device`` and ``precision`` parameters
PARAMETER_CONSTRAINTS = {
    "backend": [StrOptions(set(BACKENDS))],
    "device": [str],
    "precision": [StrOptions(set(PRECISIONS))],
}

#: their documentation, shared by the estimators' docstrings (:func:`document_parameters`)
_PARAMETERS_DOC = """    backend : {"auto", "numpy", "torch"}, default="auto"
        Where the passes' arithmetic runs: ``"auto"`` is PyTorch on a GPU when PyTorch sees
        one and NumPy otherwise; ``"torch"`` with ``device="cpu"`` runs the PyTorch path
        on the CPU.  Batches are read on the CPU and copied to the device ahead of use.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default="auto"
        The device of the PyTorch backend (``"auto"``: the first GPU, else the CPU).
"""
_PRECISION_DOC = """    precision : {"float64", "float32"}, default="float64"
        dtype of the products; sums over batches are float64 either way.  ``"float64"``
        gives the NumPy path's results to rounding; ``"float32"`` is for GPUs with slow
        float64 and can differ where the data's scales span many decades.
"""
_MARKER = "    {backend_parameters}\n"


def document_parameters(precision: bool = True):
    """Class decorator: the ``{backend_parameters}`` line of the docstring becomes their documentation."""

    def decorate(cls):
        if cls.__doc__ and _MARKER in cls.__doc__:
            cls.__doc__ = cls.__doc__.replace(_MARKER, _PARAMETERS_DOC + (_PRECISION_DOC if precision else ""))
        return cls

    return decorate


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _check_choice(value: str, choices: tuple, what: str) -> str:
    value = str(value)
    if value not in choices:
        raise BackendError(f"{what} {value!r} is not one of {', '.join(choices)}")
    return value


def _cuda_device(device: str) -> str:
    """``cuda`` / ``cuda:N`` checked against the GPUs PyTorch sees; the canonical name."""
    if not _torch_available():
        raise BackendError(f"--device {device} needs PyTorch, which is not installed: {_INSTALL_TORCH}")
    import torch

    if not torch.cuda.is_available():
        raise BackendError(f"--device {device}: PyTorch {torch.__version__} sees no CUDA GPU here "
                           "(no GPU, or a CPU-only build of PyTorch); use --device cpu or --device auto")
    index = 0 if device == "cuda" else int(device.split(":", 1)[1])
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise BackendError(f"--device {device}: PyTorch sees {count} GPU(s), cuda:0..cuda:{count - 1}")
    return f"cuda:{index}"


@functools.lru_cache(maxsize=None)  # one info line per choice and process, not one per fit
def resolve_backend(backend: str = "auto", device: str = "auto", precision: str = "float64", *,
                    log: bool = True) -> Backend:
    """The concrete :class:`Backend` for the user's choices.

    ``backend="auto"`` is PyTorch when ``device`` is a GPU, or when ``device="auto"`` and
    PyTorch sees a GPU, and NumPy otherwise; ``device="auto"`` is the first GPU for the
    PyTorch backend when there is one, else the CPU.  A GPU asked for without PyTorch or
    without a GPU, or NumPy on a GPU, is a :class:`BackendError`.  With ``log`` the choice
    made by ``auto`` is logged in one info line.
    """
    backend = _check_choice(backend, BACKENDS, "backend")
    precision = _check_choice(precision, PRECISIONS, "precision")
    device = str(device)
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:[0-9]+)?", device):
        raise BackendError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N")
    if backend == "numpy":
        if device not in ("auto", "cpu"):
            raise BackendError(f"--backend numpy runs on the CPU only; use --backend torch (or auto) "
                               f"with --device {device}")
        return Backend("numpy", "cpu", precision)
    if device.startswith("cuda"):
        return Backend("torch", _cuda_device(device), precision)
    if backend == "torch":
        if not _torch_available():
            raise BackendError(f"--backend torch needs PyTorch, which is not installed: {_INSTALL_TORCH}")
        if device == "cpu":
            return Backend("torch", "cpu", precision)
        import torch

        chosen = Backend("torch", "cuda:0" if torch.cuda.is_available() else "cpu", precision)
    elif device == "cpu":
        return Backend("numpy", "cpu", precision)
    else:  # auto, auto
        gpu = False
        if _torch_available():
            import torch

            gpu = torch.cuda.is_available()
        chosen = Backend("torch", "cuda:0", precision) if gpu else Backend("numpy", "cpu", precision)
        if not gpu and log:
            # an info line where a GPU was to be expected (a CUDA build of PyTorch that sees none)
            cuda_build = _torch_available() and getattr(__import__("torch").version, "cuda", None)
            logger.log(logging.INFO if cuda_build else logging.DEBUG,
                       "no GPU found (PyTorch %s): the passes run with NumPy on the CPU",
                       "sees none" if _torch_available() else "is not installed")
            return chosen
    if log:
        logger.info("the passes run with %s", chosen.describe())
    return chosen


# ----------------------------------------------------------------------------- arrays
def namespace(*arrays):
    """The array-API namespace of the arrays (NumPy's for NumPy arrays and scalars)."""
    from array_api_compat import array_namespace

    return array_namespace(*arrays)


def is_numpy(x) -> bool:
    """True for NumPy arrays (and anything that is not a PyTorch tensor)."""
    return not (type(x).__module__ or "").startswith("torch")


def host(x, dtype=None):
    """``x`` as a NumPy array (copied from its device when it is a tensor), optionally cast."""
    if not is_numpy(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


def host_rows(X, idx) -> np.ndarray:
    """``X[idx]`` as a NumPy array, for NumPy integer indices (only those rows leave the device)."""
    if is_numpy(X):
        return np.asarray(X[idx])
    import torch

    return host(X[torch.as_tensor(np.asarray(idx, dtype=np.int64), device=X.device)])


def like(ref, a, dtype=None):
    """``a`` (a NumPy array or scalar) on the device of ``ref``, in ``dtype`` (default ``ref``'s)."""
    if is_numpy(ref):
        return np.asarray(a, dtype=ref.dtype if dtype is None else dtype)
    import torch

    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t.to(device=ref.device, dtype=ref.dtype if dtype is None else dtype)


def float64(ref):
    """The float64 dtype of ``ref``'s namespace."""
    return np.float64 if is_numpy(ref) else __import__("torch").float64


def qr_basis(Z: np.ndarray, backend: "Backend") -> np.ndarray:
    """An orthonormal basis ``Q`` (NumPy, float64) of the columns of ``Z``, by QR on the backend's GPU.

    On a GPU the tall ``d x l`` factorisations of the PCA's subspace iterations take
    milliseconds; the basis spans the same space as the CPU's (its columns may differ
    by rotation, which the Rayleigh-Ritz step that follows does not see).
    """
    import torch

    return host(torch.linalg.qr(backend.asarray(Z, torch.float64), mode="reduced")[0])


def symmetric_eigh(M, backend: "Backend") -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (increasing) and eigenvectors of the symmetric ``M`` on the backend's GPU, as NumPy."""
    import torch

    w, V = torch.linalg.eigh(backend.asarray(M, torch.float64))
    return host(w), host(V)


# --------------------------------------------------------- what the standard leaves out
def bincount(labels, k: int, weights=None):
    """Per-label counts (``int64``; or float64 weight sums) of ``labels`` in ``0..k-1``."""
    if is_numpy(labels):
        if weights is None:
            return np.bincount(labels, minlength=k).astype(np.int64)
        return np.bincount(labels, weights=weights, minlength=k)
    import torch

    if weights is None:
        return torch.bincount(labels, minlength=k).to(torch.int64)
    return torch.bincount(labels, weights=like(labels, weights, torch.float64), minlength=k)


def one_hot(labels, k: int, weights=None, *, like_array):
    """The ``(k, n)`` one-hot matrix of ``labels`` (entries ``weights``), for ``R @ Y`` products.

    NumPy: a CSR matrix (each cluster's rows in increasing order), so ``R @ Y`` is
    ``O(n d)``; PyTorch: a dense matrix, so the product is one deterministic GEMM on the
    device (no atomic scatter-adds, whose order would change the last bits run to run).
    In the dtype of ``like_array``.
    """
    n = labels.shape[0]
    if is_numpy(like_array):
        from scipy import sparse

        counts = np.bincount(labels, minlength=k)
        indptr = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        order = np.argsort(labels, kind="stable")
        dtype = like_array.dtype
        data = np.ones(n, dtype=dtype) if weights is None else np.asarray(weights)[order].astype(dtype)
        return sparse.csr_matrix((data, order, indptr), shape=(k, n))
    import torch

    R = torch.zeros((k, n), dtype=like_array.dtype, device=like_array.device)
    values = (torch.ones(n, dtype=like_array.dtype, device=like_array.device) if weights is None
              else like(like_array, weights))
    R[labels.to(torch.int64), torch.arange(n, device=like_array.device)] = values
    return R


def sum_squares(X, axis=None, dtype=None):
    """``sum(X * X)`` over ``axis``, accumulated in ``dtype`` (NumPy: one ``einsum``, no temporary)."""
    if is_numpy(X):
        spec = {None: "ij,ij->", 0: "ij,ij->j", 1: "ij,ij->i"}[axis]
        return np.einsum(spec, X, X) if dtype is None else np.einsum(spec, X, X, dtype=dtype)
    dtype = None if dtype is None else as_dtype(X, dtype)
    return (X * X).sum(dtype=dtype) if axis is None else (X * X).sum(dim=axis, dtype=dtype)


def as_dtype(ref, dtype):
    """The NumPy ``dtype`` in ``ref``'s namespace (e.g. ``torch.float32``)."""
    if is_numpy(ref):
        return np.dtype(dtype)
    import torch

    return getattr(torch, np.dtype(dtype).name)


def numpy_dtype(X) -> np.dtype:
    """The NumPy dtype of an array or tensor."""
    if is_numpy(X):
        return np.dtype(X.dtype)
    return np.dtype(str(X.dtype).removeprefix("torch."))


def subtract(a, b, out):
    """``out[...] = a - b`` without a temporary (NumPy's and PyTorch's own ``out=``)."""
    if is_numpy(out):
        return np.subtract(a, b, out=out)
    import torch

    return torch.subtract(a, b, out=out)


def matmul(a, b, out):
    """``out[...] = a @ b`` without a temporary."""
    if is_numpy(out):
        return np.matmul(a, b, out=out)
    import torch

    return torch.matmul(a, b, out=out)


def largest(values, m: int):
    """Indices of the ``m`` largest entries of a 1-d array (any order; all when fewer)."""
    n = values.shape[0]
    if is_numpy(values):
        return np.arange(n) if n <= m else np.argpartition(-values, m - 1)[:m]
    import torch

    if n <= m:
        return torch.arange(n, device=values.device)
    return torch.topk(values, m, sorted=False).indices


def empty(shape, like_array, dtype=None):
    """An uninitialised array on ``like_array``'s device (its dtype unless ``dtype``)."""
    if is_numpy(like_array):
        return np.empty(shape, dtype=like_array.dtype if dtype is None else dtype)
    import torch

    return torch.empty(shape, dtype=like_array.dtype if dtype is None else dtype, device=like_array.device)


class DeviceState:
    """Accumulator state that follows the batches to their device and comes back for checkpoints.

    The attributes named in ``_device_state`` (arrays, or Python numbers that become 0-d
    tensors as tensors are added to them) are moved to the device of the first
    PyTorch batch by :meth:`_follow` (dtypes kept: float64 sums stay float64), and back
    to NumPy (floats for 0-d values) by :meth:`to_host`, which the engine calls before a
    checkpoint and at the end of a pass.
    """

    _device_state: tuple[str, ...] = ()

    def _follow(self, X) -> None:
        if is_numpy(X):
            return
        import torch

        def moved(value):
            if isinstance(value, list):
                return [moved(v) for v in value]
            return torch.as_tensor(value, device=X.device) if isinstance(value, np.ndarray) else value

        for name in self._device_state:
            setattr(self, name, moved(getattr(self, name, None)))

    def to_host(self) -> None:
        def back(value):
            if isinstance(value, list):
                return [back(v) for v in value]
            if value is None or is_numpy(value):
                return value
            return host(value).item() if value.ndim == 0 else host(value)

        for name in self._device_state:
            setattr(self, name, back(getattr(self, name, None)))
