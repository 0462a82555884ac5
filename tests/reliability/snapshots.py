"""Helpers of the fault-injection tests: a small finished run, a snapshot of a directory, the CLI in a subprocess."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from streamclust.cli import main

from ..ingest.hostile import synthetic_jpegs, write_zip

#: the settings of the small run every test starts from
INGEST = ["--size", "8", "--workers", "1", "--quiet"]
FIT = ["--pca-components", "4", "--clusters", "3", "--gmm-components", "2", "--quiet"]


def make_source(folder: Path, n: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_zip(folder / "src.zip", list(synthetic_jpegs(n, side=16)))


def make_run(folder: Path, *, fit: bool = True, assign: bool = True) -> tuple[Path, Path]:
    """``(source, run_dir)``: a run ingested, fitted and assigned in-process."""
    src = make_source(folder)
    run = folder / "run"
    assert main(["ingest", str(src), str(run), *INGEST]) == 0
    if fit:
        assert main(["fit", str(run), *FIT]) == 0
    if fit and assign:
        assert main(["assign", str(run), "--quiet"]) == 0
    return src, run


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, symlinks=True)
    return to


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> SHA-256 of the file (``"dir"`` for a folder)."""
    root = Path(root)
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m streamclust ARGS`` in a subprocess, output captured."""
    return subprocess.run([sys.executable, "-m", "streamclust", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def one_error_line(proc, *needles: str) -> str:
    """The one line on stderr of a refused command; checks it contains ``needles``."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error:" in lines[0] and all(n in lines[0] for n in needles), lines[0]
    return lines[0]
