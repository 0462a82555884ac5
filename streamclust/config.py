"""One frozen configuration per stage, shared by the command line and the Python API.

Each stage's config is saved in ``RUN_DIR/config.json`` under its own key, so later
commands need no repeated flags, and a re-run with different settings is refused
unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["IngestConfig", "default_chunk_size", "load_run_config", "STAGE_KEYS"]

STAGE_KEYS = ("ingest", "fit")


def default_chunk_size(size: int) -> int:
    """Images per chunk: the largest power of two keeping a chunk under 16 MiB (16..4096)."""
    per_image = size * size * 3
    n = 16
    while n * 2 * per_image <= 16 * 2**20 and n < 4096:
        n *= 2
    return n


@dataclass(frozen=True)
class IngestConfig:
    """Settings of ``streamclust ingest``.

    Parameters
    ----------
    source : str
        A ``.zip``, ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` or a directory.
    size : int, default=64
        Images are centre-cropped to a square and resized to ``size x size``.
    chunk_size : int or None, default=None
        Images per zarr chunk; ``None`` picks :func:`default_chunk_size`.
    workers : int or None, default=None
        Decoding processes; ``None`` uses every core.  Does not change the result.
    max_member_bytes : int, default=64 MiB
        Members larger than this (declared or read) are skipped as ``too_large``
        (protects against zip bombs; at most this many bytes are read per member).
    max_pixels : int, default=64_000_000
        Images whose declared canvas is larger are skipped as ``bomb`` before decoding.
    min_side : int, default=8
        Images with a side shorter than this are skipped as ``too_small``.
    max_aspect : float, default=4.0
        Images whose long side exceeds ``max_aspect`` times the short side are skipped
        as ``bad_aspect`` (a centre crop would keep too little of them).
    background : tuple of int, default=(255, 255, 255)
        Colour that transparent pixels are composited on.
    """

    source: str
    size: int = 64
    chunk_size: int | None = None
    workers: int | None = None
    max_member_bytes: int = 64 * 2**20
    max_pixels: int = 64_000_000
    min_side: int = 8
    max_aspect: float = 4.0
    background: tuple[int, int, int] = (255, 255, 255)

    #: fields that do not change the output (a resume may change them freely)
    NON_IDENTITY = ("workers",)

    def __post_init__(self):
        if not isinstance(self.size, int) or not 1 <= self.size <= 4096:
            raise UsageError(f"--size must be an integer from 1 to 4096, got {self.size!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise UsageError(f"--chunk-size must be a positive integer, got {self.chunk_size!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise UsageError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.max_member_bytes < 1 or self.max_pixels < 1 or self.min_side < 1:
            raise UsageError("max-member-bytes, max-pixels and min-side must be positive")
        if not self.max_aspect >= 1:
            raise UsageError(f"--max-aspect must be >= 1, got {self.max_aspect!r}")
        bg = tuple(int(c) for c in self.background)
        if len(bg) != 3 or not all(0 <= c <= 255 for c in bg):
            raise UsageError(f"background must be three integers 0..255, got {self.background!r}")
        object.__setattr__(self, "background", bg)

    @property
    def resolved_chunk_size(self) -> int:
        return self.chunk_size or default_chunk_size(self.size)

    @property
    def resolved_workers(self) -> int:
        return self.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def identity(self) -> dict[str, Any]:
        """The settings that determine the output (what a resume must match)."""
        d = self.to_dict()
        for key in self.NON_IDENTITY:
            d.pop(key, None)
        d["chunk_size"] = self.resolved_chunk_size
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IngestConfig":
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "background" in kwargs:
            kwargs["background"] = tuple(kwargs["background"])
        return cls(**kwargs)


def load_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The saved ``config.json`` of a run directory (empty when there is none)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())
