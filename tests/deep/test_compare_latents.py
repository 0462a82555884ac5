"""`streamclust compare` of a pixels run and a latents run of the same images.

The latents run is made the way docs/cli.md says: a hard-linked copy of the pixels run
(``cp -al``), then train / encode / ``fit --features latents --overwrite`` in the copy;
writing in either directory must never change a file of the other.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
import shutil

import numpy as np
import pytest
import zarr

torch = pytest.importorskip("torch")

from streamclust.cli import main  # noqa: E402
from streamclust.config import FitConfig, IngestConfig  # noqa: E402
from streamclust.deep import _torch  # noqa: E402
from streamclust.deep.encode import encode_run  # noqa: E402
from streamclust.deep.train import load_net, train_run  # noqa: E402
from streamclust.ingest import ingest  # noqa: E402
from streamclust.ingest.manifest import read_manifest  # noqa: E402
from streamclust.models.io import load_model  # noqa: E402
from streamclust.pipeline.compare import COMPARE_COLUMNS, compare_run, compare_runs  # noqa: E402
from streamclust.pipeline.fit import fit_run  # noqa: E402
from streamclust.store import ok_rows  # noqa: E402

from ..ingest.hostile import synthetic_jpegs, write_zip  # noqa: E402
from . import digits_run  # noqa: E402

FIT = ["--pca-components", "5", "--clusters", "10", "--gmm-components", "4", "--seed", "0"]
TRAIN = ["--model", "ae", "--latent", "6", "--epochs", "2", "--batch-size", "64", "--width", "8",
         "--threads", "1", "--device", "cpu"]


def _snapshot(root) -> dict:
    """Every regular file under ``root``: inode, size, modification time and content hash."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return out


@contextlib.contextmanager
def _in_place_zarr_writes():
    """Make zarr's LocalStore write chunks in place, as zarr-python < 3.1.3 did (open "wb" on
    the existing file, not a temp file renamed over it): a write to a hard-linked chunk would
    then change the original's file too, and the snapshots would show it."""
    from zarr.storage import _local

    if not hasattr(_local, "_atomic_write"):  # another zarr layout: test the writes as they are
        yield
        return

    @contextlib.contextmanager
    def in_place(path, mode, exclusive=False):
        with path.open("xb" if exclusive else mode) as fh:
            yield fh

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_local, "_atomic_write", in_place)
        yield


def _cli(*args) -> None:
    assert main([*map(str, args), "--quiet"]) == 0, args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pixels_vs_latents")
    run = digits_run(tmp, size=8, chunk_size=64)
    labels = tmp / "digits.zip.labels.csv"
    _cli("fit", run, *FIT)
    _cli("assign", run)
    original = _snapshot(run)
    lat = tmp / "digits-latents"
    shutil.copytree(run, lat, copy_function=os.link)  # cp -al RUN RUN-latents
    with _in_place_zarr_writes():
        _cli("train", lat, *TRAIN)
        _cli("encode", lat, "--device", "cpu")
        _cli("fit", lat, *FIT, "--features", "latents", "--overwrite")
        _cli("assign", lat)
        _cli("report", lat, "--tsne-samples", "50")
        _cli("compare", lat, "--device", "cpu")
    assert _snapshot(run) == original  # nothing of the original changed, not even a timestamp
    # the other way round: refit, assign, report and compare in the original
    copy = _snapshot(lat)
    with _in_place_zarr_writes():
        _cli("fit", run, *FIT[:2], "--clusters", "5", "--overwrite")
        _cli("fit", run, *FIT, "--overwrite")
        _cli("assign", run)
        _cli("report", run, "--tsne-samples", "50")
        _cli("compare", run)
    assert _snapshot(lat) == copy
    return run, lat, labels, original


def test_a_hard_linked_copy_shares_the_store_and_nothing_it_rewrites(runs):
    run, lat, _, original = runs
    shared = [p for p in original if p.startswith("images.zarr")]
    assert shared
    for p in shared:  # the store is still shared: it took no space
        assert os.stat(lat / p).st_ino == os.stat(run / p).st_ino
    for p in ("config.json", "model/pca.npz", "assignments.csv"):  # replaced, not written through
        assert os.stat(lat / p).st_ino != os.stat(run / p).st_ino
    assert load_model(run / "model" / "pca.npz").n_features_in_ == 192
    assert load_model(lat / "model" / "pca.npz").n_features_in_ == 6


def test_compare_two_runs_side_by_side(runs, capsys):
    run, lat, labels, _ = runs
    capsys.readouterr()
    assert main(["compare", str(run), str(lat), "--labels", str(labels), "--sample", "300", "--device", "cpu",
                 "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["run", "method", "features", "reduction"]
    body = [line.split() for line in out[2:]]
    assert [(r[0], r[1], r[2], r[3]) for r in body] == [
        (run.name, "kmeans", "pixels", "pca"), (run.name, "gmm", "pixels", "pca"),
        (lat.name, "kmeans", "latents", "pca"), (lat.name, "gmm", "latents", "pca")]

    rows = compare_runs([run, lat], labels=str(labels), sample=300, device="cpu")
    assert len(rows) == 4 and [r["run"] for r in rows] == [run.name] * 2 + [lat.name] * 2
    by = {(r["run"], r["method"]): r for r in rows}
    # each run's figures are those of compare_run alone, which wrote its compare.csv
    for d in (run, lat):
        single = compare_run(d, labels=str(labels), sample=300, device="cpu")
        for r in single:
            assert "run" not in r
            assert {k: v for k, v in by[(d.name, r["method"])].items() if k != "run"} == r
        with open(d / "compare.csv", newline="") as fh:
            table = list(csv.DictReader(fh))
        assert tuple(table[0]) == COMPARE_COLUMNS and len(table) == 2
        assert {t["features"] for t in table} == {"pixels" if d == run else "latents"}
    for method in ("kmeans", "gmm"):
        pix, latr = by[(run.name, method)], by[(lat.name, method)]
        assert pix["features"] == "pixels" and latr["features"] == "latents"
        assert 0 < pix["recon_mae"] < 255 and np.isfinite(latr["recon_mae"]) and 0 < latr["recon_mae"] < 255
        assert latr["ari"] is not None and -1 <= latr["silhouette"] <= 1

    # the latents run's error, computed independently: pixels -> stored latents -> PCA round trip
    # (scores rounded to float32, as features.zarr holds them) -> decoder, against the pixels
    pca = load_model(lat / "model" / "pca.npz")
    net = load_net(lat, "ae", "cpu")
    rows_ok = ok_rows(lat)
    X = zarr.open_array(str(lat / "images.zarr"), mode="r")[:][rows_ok].reshape(rows_ok.size, -1)
    Z = zarr.open_array(str(lat / "latents.zarr"), mode="r")[:]
    F = pca.transform(Z.astype(np.float64)).astype(np.float32).astype(np.float64)
    with torch.no_grad():
        dec = net.decode(torch.from_numpy(pca.inverse_transform(F).astype(np.float32)))
    P = dec.permute(0, 2, 3, 1).reshape(rows_ok.size, -1).double().numpy() * 255
    expect = np.abs(P - X).mean()
    assert by[(lat.name, "kmeans")]["recon_mae"] == pytest.approx(expect, rel=1e-9)
    assert by[(lat.name, "gmm")]["recon_mae"] == by[(lat.name, "kmeans")]["recon_mae"]
    # ... where the latents of a few images are the network's encoding of their pixels
    few = [0, 17, 900]
    with torch.no_grad():
        z = net.encode(torch.from_numpy(X[few].reshape(3, 8, 8, 3)).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(z.numpy(), Z[few], rtol=1e-4, atol=1e-5)

    # one run: no run column
    capsys.readouterr()
    assert main(["compare", str(lat), "--sample", "300", "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["method", "features", "reduction"]


def test_compare_checks_every_run_before_comparing_any(runs, tmp_path, capsys):
    run, lat, _, _ = runs
    before = (run / "compare.csv").stat().st_mtime_ns
    assert main(["compare", str(run), str(tmp_path / "missing"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "streamclust fit" in err
    assert (run / "compare.csv").stat().st_mtime_ns == before


def test_latents_recon_is_empty_with_a_warning_without_torch(runs, monkeypatch, caplog):
    _, lat, _, _ = runs

    def no_torch():
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(_torch, "_import", no_torch)
    monkeypatch.setattr(logging.getLogger("streamclust"), "propagate", True)  # main() turned it off
    with caplog.at_level(logging.WARNING, logger="streamclust"):
        rows = compare_run(lat, sample=300)
    assert [r["recon_mae"] for r in rows] == [None, None]
    assert [r["features"] for r in rows] == ["latents", "latents"] and rows[0]["inertia"] is not None
    assert any("PyTorch" in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)


def test_latents_recon_counts_a_duplicate_as_the_image_it_repeats(tmp_path):
    members = list(synthetic_jpegs(60, side=16, seed=5))
    members += [(f"dup{j}.jpg", members[i][1]) for j, i in enumerate((3, 3, 40))]
    run = tmp_path / "run"
    ingest(IngestConfig(str(write_zip(tmp_path / "s.zip", members)), size=8, workers=1), run, progress=False)
    train_run(run, model="ae", latent=4, epochs=1, batch_size=32, width=4, threads=1, device="cpu", progress=False)
    encode_run(run, model="ae", device="cpu", progress=False)
    fit_run(run, FitConfig(pca_components=3, clusters=4, gmm_components=0, features="latents"), progress=False)
    (row,) = compare_run(run, sample=50, device="cpu")

    fitted, every = ok_rows(run), ok_rows(run, drop_duplicates=False)
    assert every.size == fitted.size + 3
    original = {int(r["index"]): int(r["duplicate_of"] or r["index"])
                for r in read_manifest(run / "manifest.csv") if r["status"] == "ok"}
    pos = np.searchsorted(fitted, [original[int(i)] for i in every])
    pca, net = load_model(run / "model" / "pca.npz"), load_net(run, "ae", "cpu")
    Z = zarr.open_array(str(run / "latents.zarr"), mode="r")[:][pos]  # every ok image's latents
    X = zarr.open_array(str(run / "images.zarr"), mode="r")[:][every].reshape(every.size, -1)
    F = pca.transform(Z.astype(np.float64)).astype(np.float32).astype(np.float64)
    with torch.no_grad():
        dec = net.decode(torch.from_numpy(pca.inverse_transform(F).astype(np.float32)))
    expect = np.abs(dec.permute(0, 2, 3, 1).reshape(every.size, -1).double().numpy() * 255 - X).mean()
    assert row["recon_mae"] == pytest.approx(expect, rel=1e-9)
