"""``ingest --store``: the image array at another path or an fsspec URL, the run directory local."""

import json

import numpy as np
import pytest
import zarr

from streamclust.cli import main
from streamclust.config import FitConfig, IngestConfig
from streamclust.errors import ConfigMismatchError
from streamclust.ingest import ingest
from streamclust.pipeline.assign import assign_run
from streamclust.pipeline.fit import fit_run
from streamclust.store import image_array, images_location

from .hostile import hostile_members, synthetic_jpegs, write_zip


@pytest.fixture()
def source(tmp_path):
    members = [*synthetic_jpegs(150, side=16), *[m[:2] for m in hostile_members()[:4]]]
    return write_zip(tmp_path / "s.zip", members)


def _same_run(ref, run, store_path):
    assert (ref / "manifest.csv").read_bytes() == (run / "manifest.csv").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(ref / "images.zarr")[:], zarr.open_array(store_path)[:])
    assert not (run / "images.zarr").exists()


@pytest.mark.parametrize("as_url", [True, False])
def test_a_store_elsewhere_gives_the_same_images_and_models(source, tmp_path, as_url):
    ref, run = tmp_path / "ref", tmp_path / "run"
    store_path = tmp_path / "bucket" / "faces" / "images.zarr"
    store = store_path.as_uri() if as_url else str(store_path)
    ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1), ref, progress=False)
    ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1, store=store), run, progress=False)
    _same_run(ref, run, store_path)
    assert images_location(run) == store and image_array(run).shape == image_array(ref).shape
    cfg = FitConfig(pca_components=5, clusters=3, gmm_components=2, batch_size=40)
    for r in (ref, run):
        fit_run(r, cfg, progress=False)
        assign_run(r, progress=False)
    for name in ("pca", "kmeans", "gmm"):
        a, b = np.load(ref / "model" / f"{name}.npz"), np.load(run / "model" / f"{name}.npz")
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
    assert (ref / "assignments.csv").read_bytes() == (run / "assignments.csv").read_bytes()
    # a completed run is a no-op; the same command from the CLI says so
    assert ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1, store=store), run,
                  progress=False).already_complete


def test_an_existing_store_is_not_written_over(source, tmp_path):
    store = (tmp_path / "shared" / "images.zarr").as_uri()
    ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1, store=store), tmp_path / "a", progress=False)
    before = zarr.open_array(tmp_path / "shared" / "images.zarr")[:]
    with pytest.raises(ConfigMismatchError, match="already exists"):
        ingest(IngestConfig(str(source), size=12, chunk_size=32, workers=1, store=store), tmp_path / "b",
               progress=False)
    assert not (tmp_path / "b").exists()  # nothing half-written
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "shared" / "images.zarr")[:], before)
    assert main(["ingest", str(source), str(tmp_path / "c"), "--store", store, "--quiet"]) == 2
    # --overwrite replaces it, and the first run's store is then the second's
    ingest(IngestConfig(str(source), size=12, chunk_size=32, workers=1, store=store), tmp_path / "b",
           overwrite=True, progress=False)
    assert zarr.open_array(tmp_path / "shared" / "images.zarr").shape[1:] == (12, 12, 3)


def test_overwrite_with_other_settings_removes_the_old_store(source, tmp_path):
    run = tmp_path / "run"
    old = tmp_path / "old.zarr"
    ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1, store=old.as_uri()), run, progress=False)
    ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1), run, overwrite=True, progress=False)
    assert not old.exists() and (run / "images.zarr").exists()
    assert json.loads((run / "config.json").read_text())["ingest"]["store"] is None


def test_a_failed_commit_resumes_into_a_url_store(source, tmp_path, monkeypatch):
    import streamclust.ingest.writer as run_mod

    ref, run = tmp_path / "ref", tmp_path / "run"
    store_path = tmp_path / "remote" / "images.zarr"
    cfg = IngestConfig(str(source), size=8, chunk_size=32, workers=1, store=store_path.as_uri())
    ingest(IngestConfig(str(source), size=8, chunk_size=32, workers=1), ref, progress=False)
    real, calls = run_mod.format_rows, []

    def failing(rows):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real(rows)

    monkeypatch.setattr(run_mod, "format_rows", failing)
    with pytest.raises(OSError):
        ingest(cfg, run, progress=False)
    monkeypatch.setattr(run_mod, "format_rows", real)
    out = ingest(cfg, run, progress=False)
    assert out.resumed_from > 0
    _same_run(ref, run, store_path)


def test_runs_ingested_before_the_store_option_still_resume(source, tmp_path):
    run = tmp_path / "run"
    cfg = IngestConfig(str(source), size=8, chunk_size=32, workers=1)
    ingest(cfg, run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    del saved["ingest"]["store"]  # as written by an earlier version
    (run / "config.json").write_text(json.dumps(saved))
    assert ingest(cfg, run, progress=False).already_complete
