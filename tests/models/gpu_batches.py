"""The estimators' PyTorch path on the CPU device with batches sized as on a GPU (no GPU needed).

:func:`batches_sized_as_on_a_gpu` makes ``backend="torch", device="cpu"`` size its batches
as ``cuda:0`` would (:meth:`~streamclust.engine.backend.Backend.batch_rows`, the memory
limit's cap included) while the passes still run on the CPU, and lists what every fit
drives: ``(n_features, batch_size, wire dtype)``.
"""

from __future__ import annotations

import numpy as np

from streamclust.engine.backend import Backend
from streamclust.engine.transfer import wire_dtype


class SizedAsOnAGpu(Backend):
    """PyTorch on the CPU device whose batches are sized as on a GPU (cuda:0's ``batch_rows``)."""

    def batch_rows(self, requested, n_features, **kw):
        return Backend(self.name, "cuda:0", self.precision).batch_rows(requested, n_features, **kw)


def batches_sized_as_on_a_gpu(monkeypatch) -> list:
    """Patch the estimators' backend resolution and ``drive``; returns the list the batch sizes go to."""
    import streamclust.engine.estimator as estimator_module

    real_resolve, real_drive = estimator_module.resolve_backend, estimator_module.drive
    sizes = []

    def resolve(backend="auto", device="auto", precision="float64", **kw):
        if backend == "torch" and device == "cpu":
            return SizedAsOnAGpu("torch", "cpu", precision)
        return real_resolve(backend, device, precision, **kw)

    def drive(plan, source, batch_size, **kw):
        sizes.append((source.n_features, batch_size, wire_dtype(source, kw.get("dtype", np.float64))))
        return real_drive(plan, source, batch_size, **kw)

    monkeypatch.setattr(estimator_module, "resolve_backend", resolve)
    monkeypatch.setattr(estimator_module, "drive", drive)
    return sizes
