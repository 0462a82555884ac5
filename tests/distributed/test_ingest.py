"""Ingestion with decoding on a dask LocalCluster gives the same store and manifest."""

import numpy as np
import pytest
import zarr

from streamclust.config import IngestConfig
from streamclust.distributed import scheduler_client
from streamclust.ingest import ingest
from streamclust.models.io import load_model

from ..ingest.hostile import hostile_members, synthetic_jpegs, write_dir, write_tar, write_zip

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::DeprecationWarning",
                                        "ignore::UserWarning:distributed")


@pytest.mark.parametrize("kind", ["zip", "tgz", "dir"])
def test_distributed_ingest_equals_in_process(tmp_path, kind):
    members = [*synthetic_jpegs(600, side=24), *[m[:2] for m in hostile_members()]]
    if kind == "zip":
        src = write_zip(tmp_path / "s.zip", members)
    elif kind == "tgz":
        src = write_tar(tmp_path / "s.tgz", members, "w:gz")
    else:
        src = write_dir(tmp_path / "src", members)
    cfg = IngestConfig(str(src), size=12, chunk_size=64, workers=1)
    ingest(cfg, tmp_path / "ref", progress=False)
    with scheduler_client("local", n_workers=2) as client:
        ingest(cfg, tmp_path / "dist", progress=False, client=client)
    assert (tmp_path / "ref" / "manifest.csv").read_bytes() == (tmp_path / "dist" / "manifest.csv").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ref" / "images.zarr")[:],
                                  zarr.open_array(tmp_path / "dist" / "images.zarr")[:])


def _assert_close_models(a_run, b_run) -> None:

    for name, attr in (("pca", "components_"), ("kmeans", "cluster_centers_"), ("gmm", "means_")):
        a = getattr(load_model(a_run / "model" / f"{name}.npz"), attr)
        b = getattr(load_model(b_run / "model" / f"{name}.npz"), attr)
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())


def test_assign_on_a_cluster_writes_the_same_file(tmp_path):
    from streamclust.config import FitConfig
    from streamclust.pipeline.assign import assign_run
    from streamclust.pipeline.fit import fit_run

    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(300, side=16)))
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=8, chunk_size=32, workers=1), run, progress=False)
    fit_run(run, FitConfig(pca_components=6, clusters=4, gmm_components=3), progress=False)
    ref = assign_run(run, progress=False).read_bytes()
    with scheduler_client("local", n_workers=2) as client:
        assert assign_run(run, progress=False, client=client).read_bytes() == ref


def test_fit_on_a_cluster_equals_in_process(tmp_path):
    import shutil

    from streamclust.config import FitConfig
    from streamclust.pipeline.fit import fit_run

    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(300, side=16)))
    ingest(IngestConfig(str(src), size=8, chunk_size=32, workers=1), tmp_path / "a", progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    cfg = FitConfig(pca_components=6, clusters=4, gmm_components=3, batch_size=32)
    fit_run(tmp_path / "a", cfg, progress=False)
    with scheduler_client("local", n_workers=2) as client:
        fit_run(tmp_path / "b", cfg, progress=False, client=client)
    _assert_close_models(tmp_path / "a", tmp_path / "b")


def test_fit_on_a_cluster_reads_a_store_given_by_url(tmp_path):
    """The workers open the image array by its URL (as they would an object store's)."""
    from streamclust.config import FitConfig
    from streamclust.pipeline.fit import fit_run

    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(300, side=16)))
    for name, store in (("a", None), ("b", (tmp_path / "bucket" / "images.zarr").as_uri())):
        ingest(IngestConfig(str(src), size=8, chunk_size=32, workers=1, store=store), tmp_path / name, progress=False)
    assert not (tmp_path / "b" / "images.zarr").exists()
    cfg = FitConfig(pca_components=6, clusters=4, gmm_components=3, batch_size=32)
    fit_run(tmp_path / "a", cfg, progress=False)
    with scheduler_client("local", n_workers=2) as client:
        fit_run(tmp_path / "b", cfg, progress=False, client=client)
    _assert_close_models(tmp_path / "a", tmp_path / "b")


def test_workers_write_the_pixels_and_the_driver_only_metadata(tmp_path, monkeypatch):
    """zip/folder sources on a cluster: decoded pixels go from the workers to a staging array
    and from there, chunk by chunk, into images.zarr; none reach the driver."""
    import streamclust.ingest.writer as run_mod

    members = [*synthetic_jpegs(500, side=24), *[m[:2] for m in hostile_members()]]
    src = write_zip(tmp_path / "s.zip", members)
    cfg = IngestConfig(str(src), size=12, chunk_size=64, workers=1)
    ingest(cfg, tmp_path / "ref", progress=False)
    seen = []
    real_add = run_mod._Writer.add

    def add(self, member, dec):
        if dec is not None and dec.status == "ok":
            seen.append(dec.pixels is None)
        return real_add(self, member, dec)

    monkeypatch.setattr(run_mod._Writer, "add", add)
    with scheduler_client("local", n_workers=2) as client:
        ingest(cfg, tmp_path / "dist", progress=False, client=client)
    assert seen and all(seen)  # every ok image arrived without its pixels
    assert (tmp_path / "ref" / "manifest.csv").read_bytes() == (tmp_path / "dist" / "manifest.csv").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ref" / "images.zarr")[:],
                                  zarr.open_array(tmp_path / "dist" / "images.zarr")[:])
    assert not (tmp_path / "dist" / ".streamclust" / "staging.zarr").exists()  # removed at the end


def test_a_distributed_ingest_stopped_by_an_error_resumes_to_the_same_store(tmp_path, monkeypatch):
    import streamclust.ingest.writer as run_mod

    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(700, side=16)))
    store = (tmp_path / "bucket" / "images.zarr").as_uri()
    ref_cfg = IngestConfig(str(src), size=8, chunk_size=64, workers=1)
    ingest(ref_cfg, tmp_path / "ref", progress=False)
    cfg = IngestConfig(str(src), size=8, chunk_size=64, workers=1, store=store)
    real, calls = run_mod.format_rows, []

    def failing(rows):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(5, "Input/output error")
        return real(rows)

    with scheduler_client("local", n_workers=2) as client:
        monkeypatch.setattr(run_mod, "format_rows", failing)
        with pytest.raises(OSError):
            ingest(cfg, tmp_path / "run", progress=False, client=client)
        assert (tmp_path / "bucket" / "images.zarr-staging").exists()  # kept for the resume
        monkeypatch.setattr(run_mod, "format_rows", real)
        out = ingest(cfg, tmp_path / "run", progress=False, client=client)
    assert out.resumed_from > 0
    assert (tmp_path / "ref" / "manifest.csv").read_bytes() == (tmp_path / "run" / "manifest.csv").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ref" / "images.zarr")[:],
                                  zarr.open_array(tmp_path / "bucket" / "images.zarr")[:])
    assert not (tmp_path / "bucket" / "images.zarr-staging").exists()


def test_a_worker_keeps_its_reader_until_the_source_changes(tmp_path):
    """Opening a zip parses its whole central directory: a worker opens it once for all its tasks."""
    import os

    from streamclust.ingest.pool import _worker_reader

    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(5, side=8)))
    first = _worker_reader(str(src), 2**20)
    assert _worker_reader(str(src), 2**20) is first
    assert [m.position for m in first.members(3)] == [3, 4]  # reusable: members() starts anywhere
    write_zip(src, list(synthetic_jpegs(7, side=8)))
    os.utime(src, ns=(1, 1))  # another size and mtime: reopened
    second = _worker_reader(str(src), 2**20)
    assert second is not first and second.count() == 7
