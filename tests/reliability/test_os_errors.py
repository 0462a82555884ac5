"""Errors of the machine (a full disk, a read-only file system, a permission, an I/O error) are one line
saying what failed and where, exit 74, and re-running after fixing it resumes to the unbroken result."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

from streamclust.cli import EXIT_OS_ERROR, main

from ..ingest.hostile import encode, noise, write_zip
from .snapshots import FIT, copy_run, make_run, snapshot


def _noise_zip(path: Path, n: int) -> Path:
    """Incompressible images: the store needs about 3 KiB an image at --size 32."""
    return write_zip(path, [(f"img/{i:05d}.png", encode(noise(40, 40, seed=i), "PNG")) for i in range(n)])


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)``: a tmpfs of that many bytes (remount it with ``mount(size, "remount")``); skipped
    where this process may not mount one."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = []

    def mount(size: int, *options: str) -> Path:
        opts = ",".join([*options, f"size={size}"])
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True,
                             text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or 'mount failed'}); "
                        "the injected-error tests cover the same line")
        mounted.append(where)
        return where

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; the injected-error tests cover the same line")
    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _one_line(capsys, *needles) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "error:" in lines[0] and "run the same command again" in lines[0], lines[0]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_disk_full_during_ingest_then_resume_is_identical(tmp_path, tmpfs, capsys):
    src = _noise_zip(tmp_path / "src.zip", 400)
    args = ["--size", "32", "--chunk-size", "16", "--workers", "1", "--quiet"]
    assert main(["ingest", str(src), str(tmp_path / "unbroken"), *args]) == 0
    capsys.readouterr()
    disk = tmpfs(512 * 1024)
    run = disk / "run"
    assert main(["ingest", str(src), str(run), *args]) == EXIT_OS_ERROR
    _one_line(capsys, "no space left on the device", str(disk))
    assert not (run / ".streamclust" / "ingest.done").exists()
    tmpfs(64 << 20, "remount")  # space freed
    assert main(["ingest", str(src), str(run), *args]) == 0
    assert (run / "manifest.csv").read_bytes() == (tmp_path / "unbroken" / "manifest.csv").read_bytes()
    a = zarr.open_array(str(run / "images.zarr"), mode="r")
    b = zarr.open_array(str(tmp_path / "unbroken" / "images.zarr"), mode="r")
    assert a.shape == b.shape and np.array_equal(a[:], b[:])
    assert not list(run.rglob("*.partial"))


def _usage(path: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in path.rglob("*") if p.is_file())


def test_disk_full_during_fit_then_resume_is_identical(tmp_path, tmpfs, capsys):
    _, base = make_run(tmp_path / "base", fit=False)
    unbroken = copy_run(base, tmp_path / "unbroken")
    assert main(["fit", str(unbroken), *FIT]) == 0
    disk = tmpfs(_usage(base) + 96 * 4096)  # room for the images, not for the fit
    run = copy_run(base, disk / "run")
    capsys.readouterr()
    assert main(["fit", str(run), *FIT]) == EXIT_OS_ERROR
    _one_line(capsys, "no space left on the device", str(disk))
    tmpfs(64 << 20, "remount")
    assert main(["fit", str(run), *FIT]) == 0
    for name in ("pca.npz", "kmeans.npz", "gmm.npz"):
        with np.load(run / "model" / name) as x, np.load(unbroken / "model" / name) as y:
            assert sorted(x.files) == sorted(y.files)
            for k in x.files:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}:{k}")


def test_a_read_only_run_directory_is_one_line(tmp_path, tmpfs, capsys):
    src, base = make_run(tmp_path / "base")
    disk = tmpfs(64 << 20)
    run = copy_run(base, disk / "run")
    tmpfs(64 << 20, "remount", "ro")
    before = snapshot(run)
    for args in (["fit", run, *FIT[:-1], "--clusters", "4", "--overwrite", "--quiet"], ["assign", run, "--quiet"],
                 ["ingest", src, run, "--size", "16", "--overwrite", "--quiet"]):
        capsys.readouterr()
        assert main([str(a) for a in args]) == EXIT_OS_ERROR
        _one_line(capsys, "read-only file system", str(run))
    assert snapshot(run) == before
    capsys.readouterr()
    assert main(["ingest", str(src), str(run), "--size", "8", "--quiet"]) == 0  # done already: nothing to write
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png"), "--quiet"]) == 0  # only reads the run
    assert (tmp_path / "s.png").exists()
    tmpfs(64 << 20, "remount", "rw")
    assert main(["assign", str(run), "--quiet"]) == 0


@pytest.mark.parametrize("code,words", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
    (errno.EIO, "input/output error"),
    (errno.EDQUOT, "disk quota exceeded"),
])
def test_an_injected_os_error_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys, code, words):
    """Root bypasses chmod, so a permission error (and the others) is injected where assign writes."""
    _, run = make_run(tmp_path, assign=False)
    import streamclust.pipeline.assign as assign

    target = str(run / "assignments.csv")

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code), target)

    monkeypatch.setattr(assign, "assign_run", failing)
    capsys.readouterr()
    assert main(["assign", str(run)]) == EXIT_OS_ERROR
    _one_line(capsys, words, target)
    monkeypatch.undo()
    assert main(["assign", str(run), "--quiet"]) == 0  # after the fix, the same command runs


def test_an_os_error_raised_through_another_is_found_and_others_are_not_hidden(tmp_path, monkeypatch, capsys):
    _, run = make_run(tmp_path, assign=False)
    import streamclust.pipeline.assign as assign

    def wrapped(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")  # no path: the run directory is named
        except OSError as exc:
            raise RuntimeError("a chunk write failed") from exc

    monkeypatch.setattr(assign, "assign_run", wrapped)
    capsys.readouterr()
    assert main(["assign", str(run)]) == EXIT_OS_ERROR
    _one_line(capsys, "no space left on the device", f"at {str(run)!r}")

    def bug(*args, **kwargs):
        raise OSError(errno.EBADF, "Bad file descriptor")  # a bug, not the machine: not dressed up

    monkeypatch.setattr(assign, "assign_run", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["assign", str(run)])
