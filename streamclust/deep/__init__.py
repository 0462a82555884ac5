"""Deep features: a convolutional AE / VAE trained from ``images.zarr``, streaming.

PyTorch is optional (``pip install "streamclust[deep]"``): importing this package never
imports it; calling a function that needs it without it raises :class:`UsageError`.

- :func:`train_run` — train ``ae`` or ``vae`` on a run, resumable (``deep/<model>.pt``)
- :func:`encode_run` — the latents as ``latents.zarr`` (rows = ``ok_rows(run_dir)``)
- :func:`reconstruct`, :func:`vae_samples`, :func:`read_history` — for the report
- :class:`StoreLoader` — the shuffled streaming loader
"""

from __future__ import annotations

import importlib

__all__ = ["train_run", "train_tensor", "encode_run", "encode_array", "reconstruct", "vae_samples",
           "read_history", "load_net", "resolve_device", "latents_path", "weights_path", "TrainConfig",
           "StoreLoader", "require_torch"]

_WHERE = {
    "train_run": "train", "train_tensor": "train", "read_history": "train", "load_net": "train",
    "resolve_device": "train", "weights_path": "train", "TrainConfig": "train",
    "encode_run": "encode", "encode_array": "encode", "reconstruct": "encode", "vae_samples": "encode",
    "latents_path": "encode", "StoreLoader": "data", "require_torch": "_torch",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
