"""Atomic file writes: write ``name.<uuid>.partial`` beside the target, fsync, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a torn write, whatever moment the process is killed at.  This is the pattern of
zarr's ``LocalStore``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["write_bytes", "write_text", "write_json", "save_npz", "load_npz", "fsync_dir", "atomic_open"]


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Save arrays as an uncompressed ``.npz`` atomically.

    Object arrays are refused so that the file always loads with ``allow_pickle=False``.
    """
    clean = {}
    for key, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"refusing to save object array {key!r}: it would need pickle")
        clean[key] = arr
    # straight into the temp file: a large state (a scatter matrix of 1 GB) is never copied in memory
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **clean)
    return Path(path)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file, never unpickling."""
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:  # closed even when the file is damaged
        return {key: data[key] for key in data.files}


class atomic_open:
    """``with atomic_open(path, "w") as fh:`` writes a temp file, renamed over ``path`` on success.

    On an exception the temp file is removed and ``path`` is untouched.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", **kwargs):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.partial")
        self.mode = mode
        self.kwargs = kwargs

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.tmp, self.mode, **self.kwargs)
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.fh.flush()
                os.fsync(self.fh.fileno())
            self.fh.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
                fsync_dir(self.path.parent)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
        return False
