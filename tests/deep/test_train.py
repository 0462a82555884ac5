"""Training from the store: the loss falls, outputs load without pickle, settings are part of the run."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from streamclust.deep import train as train_mod  # noqa: E402
from streamclust.deep.train import checkpoint_path, load_net, train_run  # noqa: E402
from streamclust.errors import ConfigMismatchError, StageNotDoneError, UsageError  # noqa: E402

from . import clone_run, digits_run  # noqa: E402

SMALL = dict(latent=8, batch_size=64, width=8, threads=1, device="cpu", progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return digits_run(tmp_path_factory.mktemp("train"), size=8, chunk_size=64)


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_training_reduces_the_loss_and_saves_plain_tensors(store, tmp_path, model):
    run = clone_run(store, tmp_path / "run")
    out = train_run(run, model=model, epochs=4, checkpoint_steps=10, **SMALL)
    hist = json.loads((run / "deep" / f"{model}_history.json").read_text())
    losses = [e["loss"] for e in hist["epochs"]]
    assert len(losses) == 4 and out["final_loss"] == losses[-1]
    assert 0.0 <= out["data_wait_share"] < 1.0
    assert all(0.0 <= e["data_wait_share"] < 1.0 for e in hist["epochs"])
    # the VAE's loss has a floor (BCE of grey pixels, plus the KL term): a smaller fall
    assert losses[-1] < (0.75 if model == "ae" else 0.9) * losses[0], losses
    assert losses == sorted(losses, reverse=True), losses
    assert hist["total_steps"] == 4 * 29 and hist["steps"]
    state = torch.load(run / "deep" / f"{model}.pt", weights_only=True)  # no pickle
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = load_net(run, model)
    assert set(net.state_dict()) == set(state)
    assert (run / ".streamclust" / f"train-{model}.done").exists()
    assert not checkpoint_path(run, model).exists()
    cfg = json.loads((run / "config.json").read_text())["train"][model]
    assert cfg["latent"] == 8 and cfg["data"] == {"n_images": 1797, "size": 8, "channels": 3}


def test_rerun_mismatch_and_overwrite(store, tmp_path):
    run = clone_run(store, tmp_path / "run")
    kw = {**SMALL, "epochs": 1}
    first = train_run(run, **kw)
    assert not first["already_done"]
    again = train_run(run, **{**kw, "checkpoint_steps": 7, "threads": 2})  # not part of the identity
    assert again["already_done"] and again["final_loss"] == first["final_loss"]
    with pytest.raises(ConfigMismatchError, match="latent"):
        train_run(run, **{**kw, "latent": 4})
    redo = train_run(run, **{**kw, "latent": 4}, overwrite=True)
    assert not redo["already_done"]
    assert json.loads((run / "config.json").read_text())["train"]["ae"]["latent"] == 4


def test_bad_settings_are_usage_errors(store, tmp_path):
    with pytest.raises(UsageError, match="--model"):
        train_run(store, model="gan")
    with pytest.raises(UsageError, match="--epochs"):
        train_run(store, epochs=0)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            train_run(clone_run(store, tmp_path / "r"), device="cuda", epochs=1)
    with pytest.raises(StageNotDoneError):
        train_run(tmp_path / "missing")


def test_a_crash_after_a_checkpoint_resumes_to_the_same_vae(store, tmp_path, monkeypatch):
    """In-process crash (the VAE draws noise: its generator state must come back too)."""
    kw = {**SMALL, "model": "vae", "epochs": 2, "checkpoint_steps": 9}
    ref = clone_run(store, tmp_path / "ref")
    train_run(ref, **kw)

    run = clone_run(store, tmp_path / "run")
    real_save, saves = train_mod._save_checkpoint, []

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 4:  # mid-epoch 1 (epoch 0 has 29 steps: saves at 9, 18, 27, end)
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_run(run, **kw)
    ck = torch.load(checkpoint_path(run, "vae"), weights_only=True)  # a checkpoint loads without pickle
    assert (ck["epoch"], ck["step"], ck["global_step"]) == (1, 0, 29)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    out = train_run(run, **kw)
    assert out["resumed_from_step"] == 29
    a = torch.load(ref / "deep" / "vae.pt", weights_only=True)
    b = torch.load(run / "deep" / "vae.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((ref / "deep" / "vae_history.json").read_text())
    hb = json.loads((run / "deep" / "vae_history.json").read_text())
    assert [e["loss"] for e in ha["epochs"]] == [e["loss"] for e in hb["epochs"]]
    assert ha["steps"] == hb["steps"]


def test_a_slow_store_shows_as_time_waiting_for_batches(store, tmp_path, monkeypatch):
    """data_wait_share is the time blocked on the loader: a loader that sleeps 20 ms a batch
    (29 batches an epoch) must show at least that much of the epoch waiting."""
    import time

    from streamclust.deep.data import StoreLoader

    real = StoreLoader.iter_epoch

    def slow(self, *a, **kw):
        for batch in real(self, *a, **kw):
            time.sleep(0.02)
            yield batch

    monkeypatch.setattr(StoreLoader, "iter_epoch", slow)
    run = clone_run(store, tmp_path / "run")
    out = train_run(run, model="ae", epochs=1, **SMALL)
    assert out["data_wait_share"] * out["seconds"] >= 29 * 0.02 * 0.95
