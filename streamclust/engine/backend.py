"""Where the passes' arithmetic runs: NumPy on the CPU, or PyTorch on a CPU or GPU device.

The kernels of the streaming passes (the PCA's sketch and scatter products, Lloyd's sums
and counts, the mixture's responsibilities and moments, log-likelihoods, assignments) are
written once, against the array API standard: they take the namespace of their batch
(``xp = namespace(X)``, NumPy or PyTorch through ``array-api-compat``; what the standard
leaves out is in :mod:`streamclust.engine.arrays`).  This module holds the choice of
backend, and the dense linear algebra (QR, symmetric eigendecompositions) a plan runs on
it between passes:

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

from .arrays import host

__all__ = [
    "BACKENDS", "PRECISIONS", "PLACEMENT_PARAMS", "PARAMETER_CONSTRAINTS", "GPU_BATCH_BYTES", "GPU_BATCH_MAX_ROWS",
    "gpu_batch_rows", "Backend",
    "BackendError", "NUMPY", "resolve_backend", "document_parameters", "qr_basis", "symmetric_eigh",
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

    def batch_rows(self, requested: int, n_features: int, *, log: bool = True, max_rows: int | None = None,
                   limited_by: str | None = None) -> int:
        """Rows per batch: ``requested``, or on a GPU at least what fills :data:`GPU_BATCH_BYTES`.

        A GPU computes a batch in microseconds; what costs is the launching of its many
        small kernels, once per batch: larger batches keep it busy.  Only for passes whose
        result does not depend on the batches but for rounding (not mini-batch k-means).
        ``max_rows``: the most rows a memory limit leaves room for (the host's read-ahead
        of them, :func:`~streamclust.engine.transfer.read_ahead_rows`), ``limited_by`` that
        limit in words; a batch is never made smaller than ``requested``
        (:func:`gpu_batch_rows`).  With ``log``, a batch larger than the one asked for, or
        one the limit keeps smaller than a GPU needs, is said in one info line.
        """
        if not self.on_gpu:
            return int(requested)
        itemsize = 8 if self.precision == "float64" else 4
        wanted = gpu_batch_rows(requested, n_features, itemsize)
        rows = gpu_batch_rows(requested, n_features, itemsize, max_rows=max_rows)
        mib = rows * n_features * itemsize / 2**20
        if log and rows < wanted:
            logger.info("on %s a batch is %d rows (%.0f MiB in %s), not the %d rows (%.0f MiB) a GPU needs to be "
                        "busy: %s leaves room for no more (the host holds the batches read ahead of the GPU)",
                        self.device, rows, mib, self.precision, wanted, wanted * n_features * itemsize / 2**20,
                        limited_by or "the memory limit")
        elif log and rows > requested:
            logger.info("on %s a batch is %d rows (%.0f MiB in %s), not the %d asked for: a GPU needs larger "
                        "batches to be busy (the same results, to rounding)", self.device, rows, mib,
                        self.precision, requested)
        return rows

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
#: in its stored dtype, read and copied ahead, a fraction of that in the host's memory (within
#: what a memory limit leaves for it, :func:`~streamclust.engine.transfer.read_ahead_bytes`)
GPU_BATCH_BYTES = 128 << 20
GPU_BATCH_MAX_ROWS = 65536


def gpu_batch_rows(requested: int, n_features: int, itemsize: int, *, max_rows: int | None = None) -> int:
    """Rows per batch on a GPU: ``requested`` grown until the batch holds :data:`GPU_BATCH_BYTES`
    of ``itemsize``-byte numbers (at most :data:`GPU_BATCH_MAX_ROWS` rows), and to no more
    than ``max_rows`` (what a memory limit leaves room for; ``None``: no limit); never
    fewer than ``requested``, the batch the stage's memory plan chose."""
    rows = min(GPU_BATCH_MAX_ROWS, GPU_BATCH_BYTES // (int(itemsize) * max(1, int(n_features))))
    if max_rows is not None:
        rows = min(rows, int(max_rows))
    return int(max(int(requested), rows))


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
                    log: bool = True, distributed: bool = False) -> Backend:
    """The concrete :class:`Backend` for the user's choices.

    ``backend="auto"`` is PyTorch when ``device`` is a GPU, or when ``device="auto"`` and
    PyTorch sees a GPU, and NumPy otherwise; ``device="auto"`` is the first GPU for the
    PyTorch backend when there is one, else the CPU.  A GPU asked for without PyTorch or
    without a GPU, or NumPy on a GPU, is a :class:`BackendError`.  With ``log`` the choice
    made by ``auto`` is logged in one info line.  ``distributed``: the passes run on dask
    workers, with NumPy, so ``auto`` is NumPy and PyTorch or a GPU is refused.
    """
    if distributed:
        if backend == "torch" or str(device) not in ("auto", "cpu"):
            what = "--backend torch" if backend == "torch" else f"--device {device}"
            raise BackendError(f"{what} runs the passes in this process, but --scheduler runs them on the dask "
                               f"workers, with NumPy: leave out {what} (auto is NumPy with a scheduler) "
                               "or leave out --scheduler")
        backend, device, log = "numpy", "cpu", False
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
        gpu, cuda_build = False, False
        if _torch_available():
            import torch

            gpu, cuda_build = torch.cuda.is_available(), bool(torch.version.cuda)
        chosen = Backend("torch", "cuda:0", precision) if gpu else Backend("numpy", "cpu", precision)
        if not gpu and log:
            # an info line where a GPU was to be expected (a CUDA build of PyTorch that sees none)
            logger.log(logging.INFO if cuda_build else logging.DEBUG,
                       "no GPU found (PyTorch %s): the passes run with NumPy on the CPU",
                       "sees none" if _torch_available() else "is not installed")
            return chosen
    if log:
        logger.info("the passes run with %s", chosen.describe())
    return chosen


# ------------------------------------------------- dense linear algebra on the backend
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
