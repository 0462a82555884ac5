"""Kill a real ingestion with SIGKILL, re-run the same command, and compare with an unbroken run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from .hostile import hostile_members, synthetic_jpegs, write_tar, write_zip

N = 1500
CHUNK = 32


def _cmd(src: Path, run: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "streamclust", "ingest", str(src), str(run), "--size", "16",
            "--chunk-size", str(CHUNK), "--workers", str(workers), "--quiet"]


def _state(run: Path) -> dict:
    try:
        return json.loads((run / ".streamclust" / "ingest_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _kill_when(run: Path, cmd: list[str], rows_at_least: int, timeout: float = 60) -> bool:
    """Start ``cmd``, SIGKILL it once ``rows_at_least`` rows are committed; False if it ended first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _state(run).get("rows_done", 0) >= rows_at_least:
            try:
                family = psutil.Process(proc.pid).children(recursive=True)  # forkserver, decode workers
            except psutil.NoSuchProcess:
                family = []
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # nothing the killed run started may outlive it (the workers watch their parent)
            gone, alive = psutil.wait_procs(family, timeout=10)
            assert not alive, f"processes left behind by the killed run: {alive}"
            return True
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("ingestion did not progress")


def _archive(tmp_path: Path, kind: str) -> Path:
    members = list(synthetic_jpegs(N, side=40))
    # sprinkle broken members and duplicates through the archive
    bad = hostile_members()
    for k, m in enumerate(bad):
        members.insert((k * 97) % len(members), m[:2])
    members.insert(700, ("copies/dup.jpg", members[10][1]))
    if kind == "zip":
        return write_zip(tmp_path / "big.zip", members)
    return write_tar(tmp_path / "big.tgz", members, "w:gz")


@pytest.mark.parametrize("kind,workers", [("zip", 2), ("tgz", 1)])
def test_sigkill_and_resume_equals_an_unbroken_run(tmp_path, kind, workers):
    src = _archive(tmp_path, kind)
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(src, ref, workers), check=True)

    kills = 0
    for target in (CHUNK * 3, N // 3, 2 * N // 3):
        if _kill_when(run, _cmd(src, run, workers), target):
            kills += 1
            assert not (run / ".streamclust" / "ingest.done").exists()
    assert kills >= 2, "the run finished before it could be killed; make the archive larger"
    done = subprocess.run(_cmd(src, run, workers), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    assert (run / "manifest.csv").read_bytes() == (ref / "manifest.csv").read_bytes()
    a, b = zarr.open_array(ref / "images.zarr", mode="r"), zarr.open_array(run / "images.zarr", mode="r")
    assert a.shape == b.shape and a.chunks == b.chunks
    np.testing.assert_array_equal(a[:], b[:])
    # byte-identical chunk files, and no leftovers of the killed runs
    files = lambda root: sorted(p.relative_to(root / "images.zarr") for p in (root / "images.zarr").rglob("*") if p.is_file())
    assert files(ref) == files(run)
    for rel in files(ref):
        assert (ref / "images.zarr" / rel).read_bytes() == (run / "images.zarr" / rel).read_bytes()
    assert not list(run.rglob("*.partial"))

    again = subprocess.run(_cmd(src, run, workers), capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stdout
