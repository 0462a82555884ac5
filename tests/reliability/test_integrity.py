"""Damaged run files (issue 16, item 5 and the model/checkpoint parts of items 7 and 10).

Every case ends in one of two outcomes, never a silent wrong result: a one-line
:class:`~streamclust.errors.IntegrityError` (exit 2 on the command line) naming the file
and the command that rebuilds it, with nothing already good discarded; or a resumed run
identical to an unbroken one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from streamclust import stages
from streamclust.config import FitConfig, IngestConfig
from streamclust.errors import IntegrityError, StreamclustError
from streamclust.ingest import ingest
from streamclust.ingest import writer as ingest_writer
from streamclust.integrity import has_checksums, verify_checksums
from streamclust.models.io import load_model, save_model
from streamclust.pipeline.assign import assign_run
from streamclust.pipeline.fit import fit_run
from streamclust.pipeline.select_k import select_k_run
from streamclust.store import RunLayout, image_array, ok_rows
from tests.ingest.hostile import synthetic_jpegs, write_zip

FIT = FitConfig(pca_components=5, clusters=3, gmm_components=2)
N = 40
REFIT = ("--pca-components", "5", "--clusters", "4", "--gmm-components", "2")


def _ingest_config(source: Path) -> IngestConfig:
    return IngestConfig(source=str(source), size=16, chunk_size=8, workers=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A source archive and a run directory ingested and fitted from it (copied by each test)."""
    root = tmp_path_factory.mktemp("integrity")
    source = write_zip(root / "src.zip", list(synthetic_jpegs(N)))
    run = root / "run"
    ingest(_ingest_config(source), run, progress=False)
    fit_run(run, FIT, progress=False)
    return source, run


@pytest.fixture
def run(made, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(made[1], out)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamclust", *args], capture_output=True, text=True, timeout=300)


def _models(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "model").glob("*.npz"))}


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def _flip(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[min(at, len(data) - 5)] ^= 0x01
    path.write_bytes(bytes(data))


def _ingest_rebuild(made, run: Path) -> str:
    return f"rebuild with `streamclust ingest {Path(made[0]).resolve()} {run} --overwrite`"


# ------------------------------------------------------------------------------ checksums
def test_every_array_streamclust_writes_carries_crc32c(run):
    for name in ("images.zarr", "features.zarr"):
        assert has_checksums(zarr.open_array(str(run / name), mode="r")), name
        chunks = [p for p in (run / name / "c").rglob("*") if p.is_file()]
        assert verify_checksums(run / name, rebuild="x") == len(chunks) > 0


def test_the_embedding_and_the_latents_are_checked_too(made, tmp_path):
    """``fit --embed tsne`` (embedding.zarr) and ``encode`` (latents.zarr): checksummed, recorded, checked."""
    torch = pytest.importorskip("torch")  # noqa: F841
    from streamclust.deep.encode import encode_run
    from streamclust.deep.train import train_run
    from streamclust.integrity import verify_output

    run = tmp_path / "run"
    shutil.copytree(made[1], run)
    fit_run(run, FitConfig(pca_components=5, clusters=3, gmm_components=0, embed="tsne"), overwrite=True,
            progress=False)
    train_run(run, model="ae", latent=4, epochs=1, batch_size=16, device="cpu", width=8, progress=False)
    encode_run(run, model="ae", device="cpu", progress=False)
    layout = RunLayout.of(run)
    for artefact, rebuild in (("embedding", "fit"), ("latents", "encode")):
        path = layout.path(artefact)
        assert has_checksums(verify_output(layout, artefact))
        chunk = sorted(p for p in (path / "c").rglob("*") if p.is_file())[0]
        chunk.write_bytes(chunk.read_bytes()[:-1])
        with pytest.raises(IntegrityError) as err:
            verify_output(layout, artefact)
        assert str(err.value).startswith(f"{path}: chunk ")
        assert str(err.value).endswith(f"(truncated or written over); rebuild with `streamclust {rebuild} {run} "
                                       "--overwrite`")


def test_the_codec_keeps_ingestion_byte_identical(made, tmp_path):
    again = tmp_path / "again"
    ingest(_ingest_config(made[0]), again, progress=False)
    for p in sorted((made[1] / "images.zarr").rglob("*")):
        if p.is_file():
            assert (again / p.relative_to(made[1])).read_bytes() == p.read_bytes(), p


# ------------------------------------------------------------------------------ images.zarr
def test_a_deleted_image_chunk_is_refused_before_the_fit_is_discarded(made, run):
    before = _models(run)
    (run / "images.zarr" / "c" / "1" / "0" / "0" / "0").unlink()
    with pytest.raises(IntegrityError) as err:
        fit_run(run, FitConfig(pca_components=5, clusters=4, gmm_components=2), overwrite=True, progress=False)
    assert str(err.value) == f"{run}/images.zarr: chunk 1.0.0.0 is missing; {_ingest_rebuild(made, run)}"
    assert _models(run) == before and stages.is_current(RunLayout.of(run), "fit")


def test_a_truncated_image_chunk_is_one_line_and_exit_2_not_a_segfault(made, run):
    before = _models(run)
    chunk = run / "images.zarr" / "c" / "2" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:50])
    proc = _cli("fit", str(run), "--overwrite", *REFIT)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert re.fullmatch(r"streamclust fit: error: .*images\.zarr: chunk 2\.0\.0\.0 is 50 bytes, but [\d,]+ were "
                        r"written \(truncated or written over\); rebuild with `streamclust ingest .* --overwrite`",
                        line), line
    assert _models(run) == before


def test_a_flipped_byte_fails_the_checksum_before_fit_overwrite_discards_anything(made, run):
    before = _models(run)
    _flip(run / "images.zarr" / "c" / "3" / "0" / "0" / "0")
    proc = _cli("fit", str(run), "--overwrite", *REFIT)
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc.stderr) == (f"streamclust fit: error: {run}/images.zarr: chunk 3.0.0.0 fails its checksum "
                                      f"(damaged on disk); {_ingest_rebuild(made, run)}")
    assert _models(run) == before


def test_a_flipped_byte_read_by_a_later_command_names_the_chunk(made, run):
    _flip(run / "images.zarr" / "c" / "0" / "0" / "0" / "0")
    with pytest.raises(IntegrityError, match=r"images\.zarr: chunk 0\.0\.0\.0 fails its checksum"):
        assert_rows = image_array(run)[:]  # noqa: F841
    with pytest.raises(IntegrityError, match=r"chunk 0\.0\.0\.0 fails its checksum"):
        assign_run(run, progress=False)
    assert not (run / "assignments.csv").exists()


def test_an_edited_shape_is_refused(made, run):
    meta_path = run / "images.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"][0] = 24
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError) as err:
        image_array(run)
    assert str(err.value) == (f"{run}/images.zarr: its shape is (24, 16, 16, 3), but (40, 16, 16, 3) was written; "
                              f"{_ingest_rebuild(made, run)}")


def _write_the_old_way(run: Path) -> None:
    """``images.zarr`` as ingested before this change: no crc32c codec, an ingest marker without records."""
    old = zarr.open_array(str(run / "images.zarr"), mode="r")
    pixels = old[:]
    shutil.rmtree(run / "images.zarr")
    arr = zarr.create_array(store=str(run / "images.zarr"), shape=pixels.shape, chunks=old.chunks, dtype="uint8",
                            compressors=zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle",
                                                               typesize=1), fill_value=0,
                            dimension_names=("image", "y", "x", "channel"))
    arr[:] = pixels
    layout = RunLayout.of(run)
    marker = json.loads(layout.marker("ingest").read_text())
    del marker["images"], marker["manifest"]  # (its token kept: the fit made from it stays current)
    layout.marker("ingest").write_text(json.dumps(marker))


def test_a_store_without_checksums_or_records_still_opens_and_fits(made, run):
    _write_the_old_way(run)
    layout = RunLayout.of(run)
    stages.invalidate(layout, "fit", include_self=True)
    assert not has_checksums(image_array(run))
    fit_run(run, FIT, progress=False)
    fresh = {k: np.asarray(v) for k, v in vars(load_model(made[1] / "model" / "gmm.npz")).items() if k.endswith("_")}
    again = {k: np.asarray(v) for k, v in vars(load_model(run / "model" / "gmm.npz")).items() if k.endswith("_")}
    for key, value in fresh.items():
        np.testing.assert_array_equal(again[key], value)


def test_a_truncated_chunk_of_a_store_without_checksums_is_an_error_not_a_segfault(made, run):
    _write_the_old_way(run)
    chunk = run / "images.zarr" / "c" / "1" / "0" / "0" / "0"
    size = chunk.stat().st_size
    chunk.write_bytes(chunk.read_bytes()[:100])
    proc = _cli("assign", str(run))
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc.stderr) == (f"streamclust assign: error: {run}/images.zarr: chunk 1.0.0.0 is 100 bytes, "
                                      f"but its Blosc header states {size:,} (truncated); {_ingest_rebuild(made, run)}")


# ------------------------------------------------------------------------------ manifest.csv
def test_a_manifest_cut_in_half_is_refused(made, run):
    manifest = run / "manifest.csv"
    text = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(text[: len(text) // 2]))
    proc = _cli("fit", str(run), "--overwrite", *REFIT)
    assert proc.returncode == 2
    assert re.fullmatch(rf"streamclust fit: error: {re.escape(str(run))}/manifest\.csv: the file is [\d,]+ bytes, but "
                        rf"[\d,]+ were written \(cut short or edited\); {re.escape(_ingest_rebuild(made, run))}",
                        _one_line(proc.stderr))


def test_a_manifest_of_the_same_size_with_fewer_rows_is_refused(made, run):
    manifest = run / "manifest.csv"
    text = manifest.read_text()
    lines = text.splitlines(keepends=True)
    joined = lines[0] + lines[1].rstrip("\n") + "_" + lines[2] + "".join(lines[3:])  # two rows made one, same bytes
    manifest.write_text(joined)
    assert manifest.stat().st_size == len(text.encode())
    with pytest.raises(IntegrityError, match=rf"manifest\.csv: the file has {N - 1} rows, but {N} were written"):
        ok_rows(run)


def test_a_partial_manifest_deleted_mid_ingest_starts_again_and_ends_whole(made, tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    monkeypatch.setattr(ingest_writer._Writer, "COMMIT_MEMBERS", 8)
    real = ingest_writer._Writer._commit
    calls = []

    def commit_then_die(self, *args):
        real(self, *args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after two commits

    monkeypatch.setattr(ingest_writer._Writer, "_commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        ingest(_ingest_config(made[0]), run, progress=False)
    monkeypatch.setattr(ingest_writer._Writer, "_commit", real)
    state = json.loads((run / ".streamclust" / "ingest_state.json").read_text())
    assert state["members_done"] == 16
    (run / ".streamclust" / "manifest.part.csv").unlink()
    with caplog.at_level(logging.WARNING, logger="streamclust.ingest.writer"):
        summary = ingest(_ingest_config(made[0]), run, progress=False)
    assert "ingesting again from the first member" in caplog.text
    assert summary.members == N and summary.ok == N
    assert (run / "manifest.csv").read_bytes() == (made[1] / "manifest.csv").read_bytes()
    assert np.array_equal(image_array(run)[:], image_array(made[1])[:])


# ------------------------------------------------------------------------------ features.zarr
def test_a_deleted_features_chunk_is_refused_and_fit_overwrite_rebuilds_it(made, run):
    (run / "features.zarr" / "c" / "0" / "0").unlink()
    with pytest.raises(IntegrityError) as err:
        select_k_run(run, "2:3", progress=False)
    assert str(err.value) == (f"{run}/features.zarr: chunk 0.0 is missing; "
                              f"rebuild with `streamclust fit {run} --overwrite`")
    fit_run(run, FIT, overwrite=True, progress=False)  # the same settings: the damaged fit is done again
    assert (run / "features.zarr" / "c" / "0" / "0").read_bytes() == \
        (made[1] / "features.zarr" / "c" / "0" / "0").read_bytes()
    select_k_run(run, "2:3", progress=False)


def test_an_edited_features_shape_is_refused(run):
    meta_path = run / "features.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"][1] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match=r"features\.zarr: its shape is \(40, 3\), but \(40, 5\) was written"):
        select_k_run(run, "2:3", progress=False)


def test_a_flipped_features_byte_is_refused_in_one_line(run):
    _flip(run / "features.zarr" / "c" / "0" / "0", at=400)
    proc = _cli("select-k", str(run), "--k", "2:3")
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == (f"streamclust select-k: error: {run}/features.zarr: chunk 0.0 fails its checksum "
                                      f"(damaged on disk); rebuild with `streamclust fit {run} --overwrite`")


# ------------------------------------------------------------------------------ model files
def test_a_truncated_model_file_is_one_line_and_exit_2(run):
    gmm = run / "model" / "gmm.npz"
    gmm.write_bytes(gmm.read_bytes()[:300])
    proc = _cli("assign", str(run))
    assert proc.returncode == 2
    assert re.fullmatch(rf"streamclust assign: error: {re.escape(str(gmm))}: the model file cannot be read \(.*\); "
                        rf"rebuild with `streamclust fit {re.escape(str(run))} --overwrite`", _one_line(proc.stderr))
    assert not (run / "assignments.csv").exists()


@pytest.mark.parametrize("damage,message", [
    (lambda g: setattr(g, "weights_", np.array([1.5, -0.5], g.weights_.dtype)), "weights_ are not >= 0 summing to 1"),
    (lambda g: setattr(g, "weights_", g.weights_ * 0.5), "weights_ are not >= 0 summing to 1"),
    (lambda g: g.covariances_.__setitem__((0, 0), np.nan), "covariances_ holds NaN or infinite values"),
    (lambda g: g.covariances_.__setitem__((1, 2), -1.0), "covariances_ are not positive"),
    (lambda g: setattr(g, "means_", g.means_[:, :3]), "means_ has shape (2, 3), expected (2, 5)"),
], ids=["negative-weights", "weights-sum", "nan-covariance", "negative-variance", "means-shape"])
def test_a_mixture_no_fit_gives_is_refused(run, damage, message):
    path = run / "model" / "gmm.npz"
    gmm = load_model(path)
    damage(gmm)
    save_model(gmm, path, extra=gmm._streamclust_extra)
    with pytest.raises(IntegrityError) as err:
        assign_run(run, progress=False)
    text = str(err.value)
    assert text.startswith(f"{path}: {message}") and "\n" not in text, text
    assert text.endswith(f"; rebuild with `streamclust fit {run} --overwrite`"), text
    assert not (run / "assignments.csv").exists()


def test_a_damaged_model_is_rebuilt_by_fit_overwrite(made, run):
    path = run / "model" / "kmeans.npz"
    km = load_model(path)
    km.cluster_centers_[0, 0] = np.inf
    save_model(km, path)
    fit_run(run, FIT, overwrite=True, progress=False)
    assert _models(run) == _models(made[1])
    assign_run(run, progress=False)


def test_errors_are_streamclust_and_os_errors():
    assert issubclass(IntegrityError, StreamclustError) and issubclass(IntegrityError, OSError)


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("damage", ["garbage", "truncated", "no-meta"])
def test_a_damaged_checkpoint_is_discarded_with_a_warning(tmp_path, damage, caplog):
    from streamclust.engine import Checkpointer

    path = tmp_path / "fit-gmm.ckpt.npz"
    if damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    else:
        from streamclust._atomic import save_npz

        save_npz(path, {"plan/x": np.arange(1000.0), **({} if damage == "no-meta" else {
            "__meta__": np.frombuffer(json.dumps({"key": "k", "pass_index": 1, "next_row": 0,
                                                  "in_pass": False}).encode(), np.uint8)})})
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:600])
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(path, key="k").load() is None
    assert not path.exists()
    assert f"checkpoint {path} is damaged" in caplog.text and "starting this stage again" in caplog.text


def test_a_fit_resumed_over_a_damaged_checkpoint_starts_the_stage_again_and_ends_identical(made, run):
    layout = RunLayout.of(run)
    for marker in ("fit", "fit-gmm"):
        layout.marker(marker).unlink()
    (run / "model" / "gmm.npz").unlink()
    (layout.state_dir / "fit-gmm.ckpt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    proc = _cli("fit", str(run), "--pca-components", "5", "--clusters", "3", "--gmm-components", "2")
    assert proc.returncode == 0, proc.stderr
    assert "is damaged" in proc.stderr and "starting this stage again" in proc.stderr
    assert _models(run) == _models(made[1])


def test_fit_overwrite_goes_past_a_damaged_checkpoint(made, run):
    layout = RunLayout.of(run)
    stages.invalidate(layout, "fit", include_self=True)
    (layout.state_dir / "fit-pca.ckpt.npz").write_bytes(b"\x00" * 64)
    proc = _cli("fit", str(run), "--overwrite", *REFIT)
    assert proc.returncode == 0, proc.stderr
    assert stages.is_current(layout, "fit") and not (layout.state_dir / "fit-pca.ckpt.npz").exists()


def test_select_k_goes_past_a_damaged_checkpoint(made, run):
    layout = RunLayout.of(run)
    (layout.state_dir / "select-k.ckpt.npz").write_bytes(b"\x00" * 64)
    result = select_k_run(run, "2:3", progress=False)
    assert [r["k"] for r in result["rows"]] == [2, 3]


def test_select_k_overwrite_checks_the_features_before_discarding_the_sweep(run):
    select_k_run(run, "2:3", progress=False)
    before = (run / "select_k.csv").read_bytes()
    _flip(run / "features.zarr" / "c" / "0" / "0", at=400)
    with pytest.raises(IntegrityError, match=r"features\.zarr: chunk 0\.0 fails its checksum"):
        select_k_run(run, "2:4", overwrite=True, progress=False)
    assert (run / "select_k.csv").read_bytes() == before
    assert stages.is_current(RunLayout.of(run), "select-k")
