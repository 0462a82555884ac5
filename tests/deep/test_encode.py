"""Latents as a zarr array, reconstructions and VAE samples for the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

torch = pytest.importorskip("torch")

from streamclust.deep import encode as encode_mod  # noqa: E402
from streamclust.deep.encode import encode_run, reconstruct, vae_samples  # noqa: E402
from streamclust.deep.train import load_net, train_run  # noqa: E402
from streamclust.errors import ConfigMismatchError, StageNotDoneError  # noqa: E402
from streamclust.store import ok_rows  # noqa: E402

from . import digits_run  # noqa: E402

KW = dict(latent=6, batch_size=64, width=8, threads=1, device="cpu", progress=False, epochs=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = digits_run(tmp_path_factory.mktemp("encode"), size=8, chunk_size=64)
    train_run(run, model="ae", **KW)
    train_run(run, model="vae", **KW)
    return run


def test_encode_writes_one_latent_row_per_ok_image(trained, monkeypatch):
    with pytest.raises(StageNotDoneError, match="streamclust train"):
        encode_run(trained.parent / "nothing", device="cpu")
    monkeypatch.setattr(encode_mod, "LATENT_CHUNK_ROWS", 100)  # chunks of 100 rows vs image chunks of 64
    path = encode_run(trained, model="ae", batch_size=30, device="cpu", progress=False)
    z = zarr.open_array(path, mode="r")
    rows = ok_rows(trained)
    assert z.shape == (rows.size, 6) and z.dtype == np.float32 and z.chunks == (100, 6)
    assert z.attrs["model"] == "ae"
    np.testing.assert_array_equal(np.load(trained / "deep" / "latent_rows.npy"), rows)
    # row i is image ok_rows[i]: compare with a direct encoding of every ok image
    net = load_net(trained, "ae")
    images = zarr.open_array(trained / "images.zarr", mode="r")[:]
    x = torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        np.testing.assert_allclose(z[:], net.encode(x).numpy(), rtol=1e-4, atol=1e-5)
    assert (trained / ".streamclust" / "encode.done").exists()
    # the same again is a no-op; the other model needs --overwrite
    assert encode_run(trained, model="ae", device="cpu") == path
    with pytest.raises(ConfigMismatchError, match="overwrite"):
        encode_run(trained, model="vae", device="cpu")
    encode_run(trained, model="vae", device="cpu", overwrite=True, progress=False)
    assert zarr.open_array(path, mode="r").attrs["model"] == "vae"
    assert json.loads((trained / "config.json").read_text())["encode"]["model"] == "vae"


def test_reconstructions_and_samples_are_images(trained):
    rows = ok_rows(trained)[:5]
    orig, rec = reconstruct(trained, rows, model="ae")
    assert orig.shape == rec.shape == (5, 8, 8, 3) and rec.dtype == np.uint8
    images = zarr.open_array(trained / "images.zarr", mode="r")
    np.testing.assert_array_equal(orig, np.stack([images[int(r)] for r in rows]))
    s1, s2 = vae_samples(trained, 7, seed=1), vae_samples(trained, 7, seed=1)
    assert s1.shape == (7, 8, 8, 3) and s1.dtype == np.uint8
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(s1, vae_samples(trained, 7, seed=2))
