"""What every streaming estimator shares: fit = build a plan, drive it over the data, finish.

An estimator implements ``_make_plan(source)`` and ``_finish_plan(plan, source)``
(:class:`StreamingMixin`); :func:`fit_streaming` validates the input into a
:class:`~streamclust.engine.rows.RowSource`, builds the plan, runs it with :func:`~streamclust.engine.execute.drive`
(with a checkpoint, progress, a dask client) and lets the estimator copy its results.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from .backend import Backend, resolve_backend
from .checkpoint import Checkpointer
from .execute import drive
from .plan import Plan, ProgressFn
from .rows import RowSource, as_row_source, check_sample_weight
from .transfer import DeviceFeed, HostRoom, read_ahead_rows, wire_dtype

__all__ = ["StreamingMixin", "fit_streaming", "fit_batch_rows", "draw_seed"]


def draw_seed(random_state) -> int:
    """One integer seed drawn from a scikit-learn ``random_state`` (None, int or RandomState)."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class StreamingMixin:
    """Mixin for estimators whose ``fit`` is a resumable multi-pass :class:`Plan`.

    Subclasses implement ``_make_plan(source)`` (validate parameters, build the plan) and
    ``_finish_plan(plan, source)`` (copy the learned attributes onto ``self``).  ``fit``
    then streams over the data; :func:`fit_streaming` does the same with a checkpoint and
    a progress callback, which is what the command line uses.
    """

    #: dtype of the batches the plan receives
    _batch_dtype: Any = np.float64
    #: the parameter holding the precision of the PyTorch backend's products
    _precision_param = "precision"

    def _batches_may_grow(self) -> bool:
        """Whether the fit's result is the same (to rounding) with larger batches, as a GPU reads."""
        return True

    def _make_plan(self, source: RowSource) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish_plan(self, plan: Plan, source: RowSource) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _resolved_backend(self, client=None) -> Backend:
        """The :class:`~streamclust.engine.backend.Backend` of the ``backend``, ``device`` and
        ``precision`` parameters (NumPy for estimators without them, and for ``auto`` on a
        dask cluster, whose workers run NumPy)."""
        name = getattr(self, "backend", "numpy")
        device = getattr(self, "device", "cpu")
        precision = getattr(self, self._precision_param, "float64")
        return resolve_backend(name, device, precision, distributed=client is not None)

    def _device_batches(self, source: RowSource, dtype=np.float64):
        """``(offset, batch)`` of ``source`` on the estimator's backend, for one pass of
        inference (predict, transform, score): PyTorch batches are in ``dtype``'s precision,
        read ahead and not kept on the device."""
        backend = self._resolved_backend()
        if not backend.is_numpy:
            backend = replace(backend, precision=np.dtype(dtype).name)
        rows = backend.batch_rows(int(self.batch_size), source.n_features, log=False)
        feed = DeviceFeed(source, backend, cache_bytes=0)
        try:
            yield from feed.batches(rows, dtype=dtype)
        finally:
            feed.close()


def fit_batch_rows(backend: Backend, requested: int, source: RowSource, dtype=np.float64,
                   host_room: HostRoom | None = None) -> int:
    """Rows per batch of a fit's passes on ``backend`` (:meth:`~streamclust.engine.backend.Backend.batch_rows`):
    on a GPU larger than ``requested``, but with a ``host_room`` (what a memory limit leaves)
    no larger than the batches whose read-ahead fits in it (in ``source``'s stored dtype)."""
    max_rows = limited_by = None
    if host_room is not None:
        max_rows = read_ahead_rows(host_room.bytes, source.n_features, wire_dtype(source, dtype))
        limited_by = host_room.limit
    return backend.batch_rows(requested, source.n_features, max_rows=max_rows, limited_by=limited_by)


def fit_streaming(
    estimator: StreamingMixin,
    X,
    *,
    rows=None,
    sample_weight=None,
    checkpoint: Checkpointer | None = None,
    progress: ProgressFn | None = None,
    client=None,
    host_room: HostRoom | None = None,
):
    """Fit ``estimator`` on ``X`` (NumPy, zarr or dask; optionally a subset of ``rows``).

    With ``checkpoint`` the fit saves its state as it goes and resumes a saved state first.
    With a dask.distributed ``client`` the mergeable passes run as one task per block of
    rows (see :mod:`streamclust.engine.cluster`).
    ``sample_weight`` (one weight per row of the source, i.e. per selected row when
    ``rows`` is given) goes to the estimator's ``_make_plan(source, sample_weight=w)``;
    only estimators whose ``fit`` takes ``sample_weight`` accept it.  The weights are not
    part of a checkpoint: resume a weighted fit with the same weights.
    ``host_room`` (a :class:`~streamclust.engine.transfer.HostRoom`: what a memory limit
    leaves after the fit's own needs) caps a GPU's larger batches (:func:`fit_batch_rows`).
    Returns the fitted estimator.
    """
    source = as_row_source(estimator, X, reset=True, rows=rows)
    if sample_weight is None:
        plan = estimator._make_plan(source)
    elif "sample_weight" not in inspect.signature(estimator._make_plan).parameters:
        raise TypeError(f"{type(estimator).__name__} does not take sample_weight")
    else:
        plan = estimator._make_plan(source, sample_weight=check_sample_weight(sample_weight, source.n_samples))
    backend = estimator._resolved_backend(client)
    rows = int(estimator.batch_size)
    if estimator._batches_may_grow():
        rows = fit_batch_rows(backend, rows, source, estimator._batch_dtype, host_room)
    drive(plan, source, rows, dtype=estimator._batch_dtype, checkpoint=checkpoint, progress=progress, client=client,
          backend=backend)
    estimator._finish_plan(plan, source)
    return estimator
