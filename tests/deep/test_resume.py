"""Kill a real training process with SIGKILL, re-run it, and compare with an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from . import clone_run, digits_run  # noqa: E402

CKPT_STEPS = 5


def _cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "streamclust.deep", "train", str(run), "--model", "ae", "--latent", "8",
            "--width", "8", "--epochs", "3", "--batch-size", "32", "--checkpoint-steps", str(CKPT_STEPS),
            "--device", "cpu", "--threads", "1", "--quiet"]


def _ckpt(run: Path) -> Path:
    return run / ".streamclust" / "train-ae.ckpt.pt"


def _mtime(p: Path) -> tuple[int, int] | None:
    """Identity of the checkpoint file: each atomic replace makes a new inode."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _kill_after_checkpoints(run: Path, n: int, timeout: float = 120) -> bool:
    """Start training, SIGKILL it once ``n`` new checkpoints were written; False if it ended first."""
    seen, last = 0, _mtime(_ckpt(run))
    proc = subprocess.Popen(_cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        m = _mtime(_ckpt(run))
        if m is not None and m != last:
            seen, last = seen + 1, m
            if seen >= n:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("training did not progress")


def test_sigkill_and_resume_equals_an_unbroken_run(tmp_path):
    store = digits_run(tmp_path, size=8, chunk_size=64)
    ref = clone_run(store, tmp_path / "ref")
    run = clone_run(store, tmp_path / "run")
    # the unbroken run, in this process (same settings, one thread as well)
    from streamclust.deep.train import train_run

    train_run(ref, model="ae", latent=8, width=8, epochs=3, batch_size=32, checkpoint_steps=CKPT_STEPS,
              device="cpu", threads=1, progress=False)

    # killed mid-epoch 0 after its second checkpoint (3 epochs of 57 steps: there is time)
    assert _kill_after_checkpoints(run, 2), "training finished before it could be killed; make it longer"
    assert not (run / ".streamclust" / "train-ae.done").exists()
    ck = torch.load(_ckpt(run), weights_only=True)
    assert ck["global_step"] % CKPT_STEPS == 0 or ck["step"] == 0
    done = subprocess.run(_cmd(run), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed_from_step"] == ck["global_step"] > 0

    a = torch.load(ref / "deep" / "ae.pt", weights_only=True)
    b = torch.load(run / "deep" / "ae.pt", weights_only=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((ref / "deep" / "ae_history.json").read_text())
    hb = json.loads((run / "deep" / "ae_history.json").read_text())
    assert [e["loss"] for e in ha["epochs"]] == [e["loss"] for e in hb["epochs"]]
    assert not list(run.rglob("*.partial")), "a killed write left a temp file behind"
