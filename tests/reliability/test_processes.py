"""No process of a command outlives it: SIGKILL of the ingesting parent alone, or a normal exit; and the
stray files and C-level messages its helpers could leave."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
import zipfile

import numpy as np
import psutil
import pytest
from PIL import Image

from ..ingest.hostile import encode
from .snapshots import cli, make_run


def _slow_zip(path, n=1500, side=512):
    """Members that take a few milliseconds each to decode, stored (the zip is written fast)."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    arr = (255 * np.stack([xx, yy, (xx + yy) / 2], -1)).astype(np.uint8)
    data = encode(Image.fromarray(arr), "JPEG", quality=90)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"img/{i:05d}.jpg", data)
    return path


def _alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _ingest(src, run, *extra):
    return subprocess.Popen([sys.executable, "-m", "streamclust", "ingest", str(src), str(run), "--size", "16",
                             "--workers", "2", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("reaped", [True, False], ids=["parent-reaped", "parent-left-a-zombie"])
def test_sigkill_of_the_ingest_parent_alone_leaves_no_process(tmp_path, reaped):
    """Issue 16 item 9: the decode workers, the fork server and the resource tracker follow the parent
    within seconds, also while nobody has reaped it (a zombie still answers ``kill(pid, 0)``)."""
    src = _slow_zip(tmp_path / "src.zip")
    proc = _ingest(src, tmp_path / "run")
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    kids = []
    while time.monotonic() < deadline and proc.poll() is None:
        kids = parent.children(recursive=True)
        workers = [k for k in kids if k.ppid() != proc.pid]  # forked by the fork server
        if len(workers) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the ingestion ended before its workers were seen; make the source larger"
    kids = parent.children(recursive=True)
    assert len(kids) >= 4  # the fork server, the resource tracker and the workers
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone: its children are not signalled
    if reaped:
        proc.wait()
    try:
        gone = time.monotonic() + 5
        while _alive(kids) and time.monotonic() < gone:
            time.sleep(0.05)
        left = _alive(kids)
        assert not left, [" ".join(k.cmdline())[:120] for k in left]
    finally:
        for k in _alive(kids):
            k.kill()
        proc.wait()
        proc.stderr.close()


def test_nothing_of_a_finished_ingest_is_left_when_it_exits(tmp_path):
    """Issue 16 item 10: the fork server and the resource tracker end before the command does."""
    src = _slow_zip(tmp_path / "src.zip", n=400)
    proc = _ingest(src, tmp_path / "run", "--quiet")
    seen = {}
    while proc.poll() is None:
        try:
            for k in psutil.Process(proc.pid).children(recursive=True):
                seen.setdefault(k.pid, k)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.01)
    left = _alive(seen.values())  # at the moment the command has ended
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert seen, "no helper process was seen"
    assert not left, [" ".join(k.cmdline())[:120] for k in left]
    assert stderr == ""


def _tiff_without_codec() -> bytes:
    """A TIFF whose compression tag names WEBP (50001), which Pillow's libtiff lacks: libtiff complains."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, "TIFF", compression="tiff_lzw")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 259:
            data[entry + 8:entry + 10] = struct.pack("<H", 50001)
    return bytes(data)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_quiet_means_quiet_even_for_libtiff(tmp_path, workers):
    """Issue 16 item 10: libtiff's own C-level messages do not reach stderr (the manifest says why)."""
    src = tmp_path / "src.zip"
    good = encode(Image.new("RGB", (20, 20), (200, 10, 10)), "PNG")
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("a.png", good)
        for i in range(3):
            zf.writestr(f"webp{i}.tif", _tiff_without_codec())
    out = cli("ingest", src, tmp_path / "run", "--size", "8", "--workers", workers, "--quiet")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    manifest = (tmp_path / "run" / "manifest.csv").read_text()
    assert manifest.count("webp") == 3 and "1 ok" in out.stdout


def test_stray_partials_of_a_killed_write_are_removed_on_resume(tmp_path):
    """Issue 16 item 10: ``assignments.csv.<uuid>.partial`` of a killed assign (and any other stray
    temp file of an atomic write) does not survive the next command that writes the run."""
    _, run = make_run(tmp_path, assign=False)
    strays = [run / f"assignments.csv.{uuid.uuid4().hex}.partial", run / "model" / f"kmeans.npz.{uuid.uuid4().hex}.partial",
              run / ".streamclust" / f"fit-gmm.ckpt.npz.{uuid.uuid4().hex}.partial",
              run / f"config.json.{uuid.uuid4().hex}.partial"]
    for p in strays:
        p.write_bytes(b"half a write")
    out = cli("assign", run, "--quiet")
    assert out.returncode == 0, out.stderr
    assert not [p for p in strays if p.exists()]
    assert not list(run.rglob("*.partial")) and (run / "assignments.csv").exists()
