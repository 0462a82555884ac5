"""Without PyTorch, streamclust imports and the deep functions say how to install it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamclust.deep import _torch
from streamclust.errors import UsageError


def test_importing_streamclust_does_not_import_torch():
    code = ("import sys, streamclust, streamclust.deep, streamclust.deep.train, streamclust.deep.encode, "
            "streamclust.deep.data; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("call", ["train_run", "encode_run", "reconstruct", "vae_samples", "resolve_device"])
def test_missing_torch_is_a_usage_error_naming_the_extra(monkeypatch, tmp_path, call):
    def no_torch():
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(_torch, "_import", no_torch)
    import streamclust.deep as deep

    fn = getattr(deep, call)
    args = {"train_run": (tmp_path,), "encode_run": (tmp_path,), "reconstruct": (tmp_path, [0]),
            "vae_samples": (tmp_path, 4), "resolve_device": ("auto",)}[call]
    with pytest.raises(UsageError) as err:
        fn(*args)
    msg = str(err.value)
    assert 'pip install "streamclust[deep]"' in msg and "\n" not in msg
