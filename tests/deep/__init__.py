"""Helpers of the deep-feature tests: small ingested stores built from scikit-learn's digits."""

from __future__ import annotations

import shutil
from pathlib import Path

from streamclust.config import IngestConfig
from streamclust.demo import make_digits_archive
from streamclust.ingest import ingest


def digits_run(tmp: Path, *, size: int = 8, chunk_size: int = 64) -> Path:
    """An ingested run of the digits demo archive (1797 ok images, some broken members)."""
    zip_path = tmp / "digits.zip"
    if not zip_path.exists():
        make_digits_archive(zip_path)
    run = tmp / f"digits{size}_{chunk_size}"
    ingest(IngestConfig(str(zip_path), size=size, chunk_size=chunk_size, workers=1), run, progress=False)
    return run


def clone_run(src: Path, dst: Path) -> Path:
    """A copy of an ingested run (its images and manifest), without anything trained."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("deep", "latents.zarr", "train-*", "encode*"))
    cfg = dst / "config.json"
    if cfg.exists():
        import json

        d = json.loads(cfg.read_text())
        d.pop("train", None)
        d.pop("encode", None)
        cfg.write_text(json.dumps(d))
    return dst
