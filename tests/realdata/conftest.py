"""Real image sets (MNIST, CIFAR-10, ORL faces) from ``$STREAMCLUST_DATA`` (default ``../shared/data``).

The sets are never copied into the repository; without them these tests are skipped,
with the reason printed.  Each fixture ingests a strided subset (every class present)
through ``streamclust ingest``'s own code, once per session.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("STREAMCLUST_DATA", ROOT.parent / "shared" / "data"))


def data_file(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"real data set {name} not found in {DATA} (set STREAMCLUST_DATA to the folder holding it)")
    return path


def _subset_zip(src: Path, dest: Path, every: int) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for i, info in enumerate(zin.infolist()):
            if i % every == 0:
                zout.writestr(info.filename, zin.read(info))
    return dest


class RealSet:
    """An ingested real set: ``images`` (N, side, side, 3) uint8, ``X`` float64 pixels, ``y`` labels."""

    def __init__(self, run: Path, labels_csv: Path):
        from streamclust.store import ok_rows

        self.run = run
        self.labels_csv = labels_csv
        rows = ok_rows(run)
        with open(run / "manifest.csv", newline="") as fh:
            member_of = {int(r["index"]): r["member"] for r in csv.DictReader(fh) if r["index"]}
        with open(labels_csv, newline="") as fh:
            label = {r["member"]: r["label"] for r in csv.DictReader(fh)}
        self.rows = rows
        self.images = zarr.open_array(str(run / "images.zarr"), mode="r")
        self.X = self.images[:][rows].reshape(len(rows), -1).astype(np.float64)
        self.y = np.array([label[member_of[int(i)]] for i in rows])


def _ingested(tmp_path_factory, name: str, labels: str, size: int, every: int) -> RealSet:
    from streamclust.config import IngestConfig
    from streamclust.ingest import ingest

    src = data_file(name)
    lab = data_file(labels)
    tmp = tmp_path_factory.mktemp(name.split(".")[0])
    if every > 1:
        src = _subset_zip(src, tmp / name, every)
    run = tmp / "run"
    ingest(IngestConfig(str(src), size=size, workers=1), run, progress=False)
    return RealSet(run, lab)


@pytest.fixture(scope="session")
def orl(tmp_path_factory) -> RealSet:
    """All 400 ORL faces (40 people), 64x64."""
    return _ingested(tmp_path_factory, "orl_faces.zip", "orl_faces_labels.csv", 64, 1)


@pytest.fixture(scope="session")
def cifar(tmp_path_factory) -> RealSet:
    """Every 12th CIFAR-10 photo (5,000, all 10 classes), 32x32."""
    return _ingested(tmp_path_factory, "cifar10.zip", "cifar10_labels.csv", 32, 12)


@pytest.fixture(scope="session")
def mnist(tmp_path_factory) -> RealSet:
    """Every 10th MNIST digit (2,000, all 10 digits), 28x28."""
    return _ingested(tmp_path_factory, "mnist.zip", "mnist_labels.csv", 28, 10)
