"""The array operations the passes' kernels share, for NumPy arrays and PyTorch tensors alike.

The kernels take the namespace of their batch (``xp = namespace(X)``: NumPy or PyTorch
through ``array-api-compat``) and write their maths once.  This module holds what the
array API standard leaves out and the kernels need: moving arrays between the host and a
device (:func:`host`, :func:`like`), one-hot products, bincounts and the largest entries,
products into a given output, and :class:`DeviceState`, the sums of a pass that follow
its batches to their device.  Which library and device a fit uses is
:mod:`streamclust.engine.backend`'s business.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "namespace", "is_numpy", "host", "host_rows", "like", "float64", "as_dtype", "numpy_dtype", "empty",
    "subtract", "multiply", "matmul", "sum_squares", "bincount", "one_hot", "largest", "zeros",
    "Segments", "DeviceState", "to_host_all", "to_device_all", "SharedPassParts", "joint_steps", "flush_subnormal_",
]


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
    return as_dtype(ref, np.float64)


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


def multiply(a, b, out):
    """``out[...] = a * b`` without a temporary."""
    if is_numpy(out):
        return np.multiply(a, b, out=out)
    import torch

    return torch.mul(a, b, out=out)


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


def zeros(shape, like_array, dtype=None):
    """Zeros on ``like_array``'s device (its dtype unless ``dtype``); NumPy's are mapped
    lazily, not written."""
    if is_numpy(like_array):
        return np.zeros(shape, dtype=like_array.dtype if dtype is None else dtype)
    import torch

    return torch.zeros(shape, dtype=like_array.dtype if dtype is None else dtype, device=like_array.device)


#: the smallest normal float64: products with anything smaller are below the rounding of any sum
_TINY = np.finfo(np.float64).tiny


def flush_subnormal_(R: np.ndarray) -> np.ndarray:
    """Subnormal entries of a NumPy array of responsibilities made zeros, in place.

    ``exp`` of a log-responsibility between about -745 and -708 is subnormal; a matrix
    product with a few of them (0.1 % of a real CIFAR-10 batch's) is a third slower on x86,
    whose arithmetic on subnormal numbers takes a microcode detour; what they add to the
    moments is below the rounding of any sum (the products were bit-identical on that batch).
    """
    np.copyto(R, 0.0, where=R < _TINY)
    return R


class Segments:
    """Consecutive column ranges of a matrix (each mixture's components among a shared
    pass's), with a softmax of each range (:meth:`softmax_`) in a few operations whatever
    the number of ranges on PyTorch."""

    def __init__(self, sizes):
        sizes = np.asarray(sizes, dtype=np.int64)
        if sizes.ndim != 1 or sizes.size == 0 or np.any(sizes < 1):
            raise ValueError("segments need one size >= 1 per range")
        ends = np.cumsum(sizes)
        self.starts = ends - sizes
        self.bounds = [(int(a), int(b)) for a, b in zip(self.starts, ends)]
        self.ids = np.repeat(np.arange(sizes.size), sizes)  # the range of each column
        self._dev: dict = {}

    def __len__(self) -> int:
        return len(self.bounds)

    def _on(self, A) -> tuple:
        """The column ranges (``int64``) and the one-hot ``(K, ranges)`` matrix on ``A``'s device, in its dtype."""
        key = (str(A.device), str(A.dtype))
        if key not in self._dev:
            import torch

            ids = torch.as_tensor(self.ids, device=A.device)
            S = torch.zeros((self.ids.size, len(self)), dtype=A.dtype, device=A.device)
            S[torch.arange(self.ids.size, device=A.device), ids] = 1
            self._dev[key] = (ids, S)
        return self._dev[key]

    def softmax_(self, A, tops, totals) -> None:
        """Each range of ``A``'s columns turned, row by row, into its softmax in place:
        ``tops[:, j]`` gets the range's largest entry (0 where that is not finite),
        ``A[:, range j]`` its ``exp(a - top)`` over their sum, ``totals[:, j]`` that sum; so
        ``log(totals) + tops`` is each range's log-sum-exp.

        NumPy: range by range (each range's block stays in the cache for its steps), and
        subnormal entries made zeros (:func:`flush_subnormal_`); PyTorch: a handful of
        operations over all the ranges.
        """
        if is_numpy(A):
            for j, (a, b) in enumerate(self.bounds):
                seg = A[:, a:b]
                top = np.nan_to_num(np.max(seg, axis=1, keepdims=True), nan=0.0, posinf=0.0, neginf=0.0)
                seg -= top
                np.exp(seg, out=seg)
                total = np.sum(seg, axis=1, keepdims=True)
                seg /= total
                flush_subnormal_(seg)
                tops[:, j:j + 1] = top
                totals[:, j:j + 1] = total
            return
        import torch

        ids, S = self._on(A)
        tops.fill_(-float("inf")).scatter_reduce_(1, ids.expand(A.shape[0], -1), A, "amax")
        torch.nan_to_num(tops, nan=0.0, posinf=0.0, neginf=0.0, out=tops)
        A.sub_(tops.index_select(1, ids)).exp_()
        torch.matmul(A, S, out=totals)  # a product with the one-hot matrix: summed deterministically
        A.div_(totals.index_select(1, ids))


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
        if not is_numpy(X):
            _state_to_device([self], X.device)

    def to_host(self) -> None:
        to_host_all([self])


def to_device_all(parts, X) -> None:
    """Copy what ``parts`` need on the device of the batch ``X`` for a pass, in one copy per dtype.

    A part says what through ``_device_inputs(X)`` (NumPy arrays, to become ``X``'s dtype
    unless the part's ``_inputs_keep_dtype`` is true; an empty list: nothing) and takes the
    copies through ``_take_device_inputs(X, tensors)``; the NumPy state of a
    :class:`DeviceState` part follows too (dtypes kept).  Without it
    each part copies its own as its first batch arrives: a few copies per candidate of a
    shared pass, each one waiting on the device.  Nothing happens for a NumPy batch.
    """
    if is_numpy(X):
        return
    inputs = [(part, [np.asarray(a) for a in part._device_inputs(X)]) for part in parts
              if hasattr(part, "_device_inputs")]
    slots = list(_slots([p for p in parts if isinstance(p, DeviceState)], _on_host))
    copied = iter(_copy_joined([a for _, got in inputs for a in got] + [v for *_, v in slots], X.device))
    for part, got in inputs:
        if got:
            keep = getattr(part, "_inputs_keep_dtype", False)
            part._take_device_inputs(X, [next(copied) if keep else next(copied).to(X.dtype) for _ in got])
    for slot in slots:
        _put(*slot[:3], next(copied))


def _on_host(value) -> bool:
    return isinstance(value, np.ndarray)


def _on_device(value) -> bool:
    return not is_numpy(value)


def _slots(states, where):
    """``(state, name, index in a list or None, value)`` of the values of the states'
    ``_device_state`` attributes (and of their lists' items) for which ``where(value)``."""
    for state in states:
        for name in state._device_state:
            value = getattr(state, name, None)
            for i, v in enumerate(value) if isinstance(value, list) else [(None, value)]:
                if v is not None and where(v):
                    yield state, name, i, v


def _put(state, name: str, i, value) -> None:
    if i is None:
        setattr(state, name, value)
    else:
        getattr(state, name)[i] = value


def _state_to_device(states, device) -> None:
    """The NumPy state of ``states`` on ``device``, dtypes kept (float64 sums stay float64)."""
    slots = list(_slots(states, _on_host))
    for slot, tensor in zip(slots, _copy_joined([v for *_, v in slots], device)):
        _put(*slot[:3], tensor)


def _copy_joined(arrays: list, device) -> list:
    """``arrays`` (NumPy) on ``device``, dtypes kept: those up to :data:`JOIN_BYTES` joined
    per dtype into one copy, larger ones one copy each."""
    import torch

    out: list = [None] * len(arrays)
    groups: dict = {}
    for n, a in enumerate(arrays):
        groups.setdefault((a.dtype, n if a.nbytes > JOIN_BYTES else -1), []).append(n)
    for members in groups.values():
        joined = np.ascontiguousarray(arrays[members[0]]).reshape(-1) if len(members) == 1 else \
            np.concatenate([arrays[n].reshape(-1) for n in members])  # one array: copied once, not twice
        flat = torch.as_tensor(joined).to(device)
        at = 0
        for n in members:
            out[n] = flat[at:at + arrays[n].size].reshape(arrays[n].shape)
            at += arrays[n].size
    return out


class SharedPassParts:
    """For an accumulator whose ``parts`` are fed the same batches (a shared pass).

    :meth:`_feed` gives each batch to the parts (through nested shared passes), those that
    can do a batch's work together as one step (:func:`joint_steps`: the diagonal mixtures' E-steps,
    say); on a device, what they need there is copied together, once a pass
    (:func:`to_device_all`), and their sums come back together (:func:`to_host_all`).
    """

    parts: list

    def _forwarded(self) -> list:
        """The accumulators this one feeds: its parts, and those of parts that are themselves
        shared passes (which only forward their batches), nested."""
        return [leaf for part in self.parts
                for leaf in (part._forwarded() if isinstance(part, SharedPassParts) else [part])]

    def _steps(self, X) -> tuple[list, list]:
        """``(fed, steps)``: :meth:`_forwarded`, and what takes the batches ``X`` are like
        (:func:`joint_steps`; on a device, a part that can join others takes a step of its own
        too)."""
        cached = self.__dict__.get("_joint")
        if cached is None:
            fed = self._forwarded()
            cached = self._joint = (fed, joint_steps(fed, alone=not is_numpy(X)))
        return cached

    def _feed(self, X, offset: int) -> None:
        """Feed the batch ``X`` (rows ``offset:``) to every accumulator, through the joint steps
        (which hold the state of their parts while they are fed)."""
        _, steps = self._steps(X)
        if not is_numpy(X) and getattr(self, "_staged", None) != X.device:
            to_device_all(steps, X)
            self._staged = X.device
        for step in steps:
            step.update(X, offset)

    def to_host(self) -> None:
        """The state of every accumulator fed back in its own attributes: as NumPy, with one
        copy per device and dtype; a joint step's sums split back into its parts (its
        ``to_host``: on a device they stay there)."""
        cached = self.__dict__.get("_joint")
        held = cached[1] if cached is not None else self._forwarded()
        to_host_all([s for s in held if isinstance(s, DeviceState)])
        for step in held:
            if not isinstance(step, DeviceState) and hasattr(step, "to_host"):
                step.to_host()

    def __getstate__(self) -> dict:
        self.to_host()  # what was fed is in the parts (a dask task returns its accumulator)
        state = self.__dict__.copy()
        for cached in ("_joint", "_staged"):  # rebuilt where the accumulator is fed (a dask worker)
            state.pop(cached, None)
        return state


def joint_steps(parts: list, *, alone: bool = False) -> list:
    """``parts`` in order, those that can share a batch's work grouped into one step each.

    A part that can says so through ``_joint_step()``: ``(key, make)``, where two or more
    parts with equal keys are fed together by ``make(those parts)`` (an object with ``update(X, offset)``
    that gives each part what its own ``update`` would add; and, if it needs inputs on a
    device, ``_device_inputs``/``_take_device_inputs``), placed where the first of them was.
    With ``alone``, a part with no other of its key gets such a step too (on a device, where
    the step keeps its sums and its M-step there); otherwise it is fed by its own ``update``.
    """
    groups: dict = {}
    order: list = []
    for part in parts:
        joint = getattr(part, "_joint_step", None)
        how = joint() if joint is not None else None
        if how is None:
            order.append(part)
            continue
        key, make = how
        if key not in groups:
            groups[key] = (make, [])
            order.append(groups[key])
        groups[key][1].append(part)
    return [(item[0](item[1]) if alone or len(item[1]) > 1 else item[1][0]) if isinstance(item, tuple) else item
            for item in order]


#: arrays up to this size are joined into one copy by :func:`to_host_all` and :func:`to_device_all`
JOIN_BYTES = 4 << 20


def to_host_all(states) -> None:
    """Bring the device state of every one of ``states`` back to NumPy (floats for 0-d values)
    with one copy per device and dtype (arrays over :data:`JOIN_BYTES` one copy each).

    Each copy from a GPU waits for the work queued before it: a shared pass's candidates
    brought back one array at a time (a few each) would stop the device as many times
    at the end of every pass; here their arrays are joined on the device and cross once.
    """
    tensors = list(_slots(states, _on_device))
    groups: dict = {}
    for n, entry in enumerate(tensors):
        t = entry[3]
        # a large array (a PCA's scatter slabs) crosses alone: joining it would double it on the device
        alone = t.numel() * t.element_size() > JOIN_BYTES
        groups.setdefault((t.device, t.dtype, n if alone else -1), []).append(entry)
    for entries in groups.values():
        import torch

        flat = host(torch.cat([t.detach().reshape(-1) for *_, t in entries]))
        at = 0
        for state, name, i, t in entries:
            part = flat[at:at + t.numel()].reshape(tuple(t.shape))
            at += t.numel()
            _put(state, name, i, part.item() if t.ndim == 0 else part)
