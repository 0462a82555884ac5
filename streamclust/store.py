"""The on-disk layout of a run directory, and reading what ingestion wrote.

::

    RUN_DIR/
      config.json          settings of every stage that ran (one key per stage)
      images.zarr/         uint8 (N, size, size, 3), chunked along N
      manifest.csv         one row per file member of the source
      ingest_summary.json  counts per status, timings
      model/               fitted models (pca.npz, kmeans.npz, gmm.npz)
      .streamclust/        resume state: checkpoints and completion markers
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import StageNotDoneError

__all__ = ["RunLayout", "open_images", "image_array", "images_location", "open_zarr", "is_url",
           "storage_options", "store_exists", "remove_store", "ok_rows"]

if TYPE_CHECKING:  # zarr is imported on use: ``ingest`` starts its decoders meanwhile
    import zarr


@dataclass(frozen=True)
class RunLayout:
    """Paths inside a run directory.

    Every artefact declared in :data:`streamclust.stages.ARTEFACTS` is an attribute
    (``layout.features``, ``layout.assignments``, ...) and :meth:`path` by name.
    """

    root: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike) -> "RunLayout":
        return cls(Path(run_dir))

    def path(self, artefact: str) -> Path:
        """The path of ``artefact``, a name of :data:`streamclust.stages.ARTEFACTS`."""
        from .stages import ARTEFACTS

        try:
            return self.root / ARTEFACTS[artefact]
        except KeyError:
            raise AttributeError(f"no artefact {artefact!r} in a run directory") from None

    def model(self, name: str) -> Path:
        """The file of the fitted model ``name``, a name of :data:`streamclust.stages.MODEL_FILES`."""
        from .stages import MODEL_FILES

        try:
            return self.root / MODEL_FILES[name]
        except KeyError:
            raise KeyError(f"no model {name!r}; the models are {', '.join(MODEL_FILES)}") from None

    def __getattr__(self, name: str) -> Path:
        if name.startswith("_") or name == "root":
            raise AttributeError(name)
        return self.path(name)

    def marker(self, stage: str) -> Path:
        """Completion marker of ``stage``: written last, after the stage's outputs."""
        return self.state_dir / f"{stage}.done"

    def is_done(self, stage: str) -> bool:
        """Whether ``stage``'s marker exists (current or not: see :func:`streamclust.stages.status`)."""
        return self.marker(stage).exists()

    def invalidate_downstream(self, stage: str) -> list[str]:
        """Remove every stage made from ``stage``, markers first (:func:`streamclust.stages.invalidate`):
        what redoing ``stage`` with other settings calls first."""
        from .stages import invalidate

        return invalidate(self, stage)

    def require(self, stage: str, command: str | None = None) -> None:
        """Raise :class:`StageNotDoneError` naming the command to run first (also when ``stage`` is stale)."""
        from .stages import STAGES, require

        if stage in STAGES:
            require(self, stage, command)
            return
        if not self.root.is_dir():
            raise StageNotDoneError(f"run directory {str(self.root)!r} does not exist; run `{command}` first")
        if not self.is_done(stage):
            raise StageNotDoneError(
                f"{stage} has not completed in {str(self.root)!r}; run `{command}` first"
            )


def is_url(location: str | os.PathLike) -> bool:
    """True for an fsspec URL (``s3://bucket/x.zarr``, ``file:///data/x.zarr``), not a plain path."""
    return "://" in str(location)


def storage_options(location: str) -> dict | None:
    """fsspec options streamclust passes for ``location`` (local ``file://`` URLs create folders)."""
    if str(location).startswith("file://"):
        return {"auto_mkdir": True}
    return None


def _store_fs(location: str):
    """``(filesystem, path)`` of an fsspec URL."""
    import fsspec  # zarr's own dependency for URLs

    return fsspec.core.url_to_fs(location, **(storage_options(location) or {}))


def store_exists(location: str) -> bool:
    """True when an image array (or anything) is at ``location``, a path or an fsspec URL."""
    if not is_url(location):
        return Path(location).exists()
    fs, path = _store_fs(location)
    return bool(fs.exists(path))


def remove_store(location: str) -> None:
    """Delete the image array at ``location`` (a path or an fsspec URL), if there is one."""
    if not is_url(location):
        if Path(location).is_dir():
            shutil.rmtree(location)
        elif Path(location).exists():
            Path(location).unlink()
        return
    fs, path = _store_fs(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def images_location(run_dir: str | os.PathLike) -> str:
    """Where a run's image array is: ``RUN_DIR/images.zarr``, or what ``ingest --store`` named."""
    from .config import load_run_config

    store = (load_run_config(run_dir).get("ingest") or {}).get("store")
    return str(store) if store else str(RunLayout.of(run_dir).images)


def open_zarr(location: str, mode: str = "r") -> "zarr.Array":
    """``zarr.open_array`` of a path or an fsspec URL (with :func:`storage_options`)."""
    import zarr

    if is_url(location):
        return zarr.open_array(location, mode=mode, storage_options=storage_options(location))
    return zarr.open_array(location, mode=mode)


def image_array(run_dir: str | os.PathLike, mode: str = "r") -> "zarr.Array":
    """The run's image array, wherever it is stored (no check that ingestion completed).

    Read-only, it is checked against what the completed ingestion recorded (shape, chunks,
    the manifest's size: :func:`streamclust.integrity.verify_images`); a damaged store
    raises :class:`~streamclust.errors.IntegrityError` naming the command that rebuilds it.
    """
    if mode == "r":
        from .integrity import verify_images

        return verify_images(RunLayout.of(run_dir), images_location(run_dir))
    return open_zarr(images_location(run_dir), mode)


def open_images(run_dir: str | os.PathLike) -> "zarr.Array":
    """The ingested image array (read-only) of a completed ingestion."""
    RunLayout.of(run_dir).require("ingest")
    return image_array(run_dir)


def ok_rows(run_dir: str | os.PathLike, *, drop_duplicates: bool = True) -> np.ndarray:
    """Sorted ``images.zarr`` rows to model: every ok image, less byte-identical repeats."""
    from .ingest.manifest import read_manifest

    from array import array

    from .integrity import check_manifest_rows, ingest_records, rebuild_command, verify_manifest

    layout = RunLayout.of(run_dir)
    layout.require("ingest")
    record = ingest_records(layout)[1]  # the manifest's rows and bytes, when the ingestion recorded them
    rebuild = rebuild_command(layout, "manifest")
    verify_manifest(layout.manifest, record, rebuild=rebuild)
    rows = array("q")  # 8 bytes a row: a list of Python ints would take 36 and stay in the heap
    n = 0
    for r in read_manifest(layout.manifest):
        n += 1
        if r["status"] == "ok" and not (drop_duplicates and r["duplicate_of"]):
            rows.append(int(r["index"]))
    check_manifest_rows(layout.manifest, n, record, rebuild=rebuild)
    out = np.frombuffer(rows, dtype=np.int64).copy() if rows else np.zeros(0, dtype=np.int64)
    out.sort()
    return out
