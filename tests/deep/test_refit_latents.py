"""New latents discard a fit on the old ones: `fit` fits again, and nothing reads a stale fit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamclust.cli import main  # noqa: E402
from streamclust.config import FitConfig  # noqa: E402
from streamclust.deep.encode import encode_run  # noqa: E402
from streamclust.deep.train import train_run  # noqa: E402
from streamclust.errors import StageNotDoneError  # noqa: E402
from streamclust.pipeline.assign import assign_run  # noqa: E402
from streamclust.pipeline.compare import compare_run  # noqa: E402
from streamclust.pipeline.fit import fit_run  # noqa: E402

from . import digits_run  # noqa: E402

KW = dict(latent=5, batch_size=64, width=8, threads=1, device="cpu", progress=False, epochs=1)
CFG = FitConfig(pca_components=4, clusters=6, gmm_components=3, features="latents")
MODELS = ("pca", "kmeans", "gmm")


def _arrays(run) -> dict:
    """Every array of the run's model files (their metadata included)."""
    out = {}
    for name in MODELS:
        with np.load(run / "model" / f"{name}.npz", allow_pickle=False) as data:
            out.update({f"{name}/{k}": data[k] for k in data.files})
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_new_latents_make_fit_refit_and_stale_readers_ask_for_fit(tmp_path, capsys):
    run = digits_run(tmp_path, size=8, chunk_size=64)
    # a pixels fit is not touched by encoding
    fit_run(run, FitConfig(pca_components=4, clusters=6, gmm_components=3), progress=False)
    train_run(run, model="ae", **KW)
    train_run(run, model="vae", **KW)
    encode_run(run, model="ae", device="cpu", progress=False)
    assert (run / ".streamclust" / "fit.done").exists()

    fit_run(run, CFG, overwrite=True, progress=False)
    assign_run(run, progress=False)
    compare_run(run, sample=100, device="cpu")
    old = _arrays(run)

    # new latents (the other network): the fit on the old ones and what was made from it go
    encode_run(run, model="vae", device="cpu", progress=False, overwrite=True)
    for gone in ("model", "features.zarr", "assignments.csv", "compare.csv", ".streamclust/fit.done",
                 ".streamclust/fit-pca.done", ".streamclust/assign.done"):
        assert not (run / gone).exists(), gone
    with pytest.raises(StageNotDoneError, match="streamclust fit"):
        assign_run(run, progress=False)
    for cmd in (["assign", str(run)], ["report", str(run)], ["compare", str(run)]):
        capsys.readouterr()
        assert main([*cmd, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "streamclust fit" in err, (cmd, err)

    # the same fit settings fit again, on the new latents
    summary = fit_run(run, CFG, progress=False)
    assert summary.seconds  # it did not return early
    new = _arrays(run)
    assert not _same(old, new)
    # ... and equal a fresh fit of a copy with no fit at all
    fresh = shutil.copytree(run, tmp_path / "fresh")
    for p in ("model", "features.zarr"):
        shutil.rmtree(fresh / p)
    for marker in (fresh / ".streamclust").glob("fit*"):
        marker.unlink()
    fit_run(fresh, CFG, progress=False)
    assert _same(_arrays(fresh), new)
    np.testing.assert_array_equal(np.load(fresh / "model" / "fit_rows.npy"), np.load(run / "model" / "fit_rows.npy"))
    assign_run(run, progress=False)

    # retraining the encoded network also discards the encoding and the fit on it
    train_run(run, model="vae", **{**KW, "seed": 1}, overwrite=True)
    assert not (run / ".streamclust" / "encode.done").exists()
    assert not (run / ".streamclust" / "fit.done").exists() and not (run / "model").exists()
    encode_run(run, model="vae", device="cpu", progress=False)
    assert fit_run(run, CFG, progress=False).seconds
    assert not _same(_arrays(run), new)
