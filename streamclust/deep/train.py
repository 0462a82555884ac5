"""``streamclust train``: fit a convolutional AE or VAE on ``images.zarr``, streaming; resumes.

Outputs (``<model>`` is ``ae`` or ``vae``)::

    RUN_DIR/deep/<model>.pt             the weights: a state_dict, loads with torch.load(weights_only=True)
    RUN_DIR/deep/<model>_history.json   loss per epoch and per LOG_STEPS steps, images/s
    RUN_DIR/config.json                 ["train"][<model>]: the settings and the data they ran on
    RUN_DIR/.streamclust/train-<model>.ckpt.pt   resume state while training (removed at the end)
    RUN_DIR/.streamclust/train-<model>.done      completion marker, written last

A checkpoint (weights, optimizer, epoch, step, the loss accumulators and every random
generator's state) is written atomically every ``checkpoint_steps`` optimizer steps and
at the end of every epoch.  The order of the batches is a pure function of
``(seed, epoch)`` (see :mod:`streamclust.deep.data`), so a run killed at any moment and
re-run continues from its last checkpoint and, on the CPU with the same number of
threads, ends with weights bit-identical to an unbroken run's.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import stages
from .._atomic import atomic_open, write_json
from ..config import load_run_config
from ..errors import ConfigMismatchError, RunDirError, UsageError
from ..integrity import verify_images
from ..store import RunLayout, image_array, images_location, ok_rows
from ._torch import require_torch

__all__ = ["TrainConfig", "train_run", "train_tensor", "load_net", "resolve_device", "read_history",
           "weights_path", "history_path", "checkpoint_path", "LOG_STEPS"]

#: optimizer steps per entry of the history's step curve
LOG_STEPS = 20
_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``streamclust train``.

    ``device`` and ``checkpoint_steps`` do not change the result (on the same device), so
    a resume may change them; every other field must match the saved run.
    """

    model: str = "ae"
    latent: int = 128
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    width: int = 32
    buffer_chunks: int = 4
    checkpoint_steps: int = 200
    device: str = "auto"

    NON_IDENTITY = ("checkpoint_steps", "device")

    def __post_init__(self):
        if self.model not in ("ae", "vae"):
            raise UsageError(f"--model must be ae or vae, got {self.model!r}")
        for name in ("latent", "epochs", "batch_size", "width", "buffer_chunks", "checkpoint_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and np.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr!r}")
        object.__setattr__(self, "lr", float(self.lr))
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        for key in self.NON_IDENTITY:
            d.pop(key)
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- paths ------------------------------------------------------------------------------
def weights_path(run_dir, model: str) -> Path:
    return RunLayout.of(run_dir).path(f"{model}_weights")


def history_path(run_dir, model: str) -> Path:
    return RunLayout.of(run_dir).path(f"{model}_history")


def checkpoint_path(run_dir, model: str) -> Path:
    return RunLayout.of(run_dir).state_dir / f"train-{model}.ckpt.pt"


def read_history(run_dir, model: str = "ae") -> dict:
    """The saved loss history of a completed training (for the report's loss curve)."""
    path = history_path(run_dir, model)
    if not path.exists():
        raise RunDirError(f"no training history in {str(run_dir)!r}; "
                          f"run `streamclust train {run_dir} --model {model}` first")
    return json.loads(path.read_text())


# -- devices and determinism ---------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """``auto`` is ``cuda`` when PyTorch sees a GPU, else ``cpu``; an unavailable device is refused."""
    torch = require_torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: PyTorch sees no CUDA GPU here (use --device cpu or auto)")
        return device
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("--device mps: the Apple GPU is not available here")
        return device
    if device == "cpu":
        return device
    raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


class _Deterministic:
    """``torch.use_deterministic_algorithms(True)`` on the CPU (and ``threads`` intra-op threads)
    for the block, restored after."""

    def __init__(self, torch, device: str, threads: int | None = None):
        self.torch, self.on, self.threads = torch, device == "cpu", threads

    def __enter__(self):
        if self.threads is not None:
            self.prev_threads = self.torch.get_num_threads()
            self.torch.set_num_threads(self.threads)
        if self.on:
            self.prev = self.torch.are_deterministic_algorithms_enabled()
            self.prev_warn = self.torch.is_deterministic_algorithms_warn_only_enabled()
            self.torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc):
        if self.on:
            self.torch.use_deterministic_algorithms(self.prev, warn_only=self.prev_warn)
        if self.threads is not None:
            self.torch.set_num_threads(self.prev_threads)


# -- the training step, shared by the store and the in-memory paths --------------------------
class _Trainer:
    def __init__(self, torch, config: TrainConfig, size: int, channels: int, device: str):
        from .nets import build_net

        self.torch, self.device = torch, device
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's RNG alone
            torch.manual_seed(config.seed)
            net = build_net(config.model, size, config.latent, channels, config.width)
        self.net = net.to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.gen = torch.Generator(device=device)  # the VAE's noise
        self.gen.manual_seed(config.seed)

    def step(self, x):
        loss = self.net.loss(x, generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


class _Log:
    """Loss accumulators of the epoch and of the current step window (all plain numbers)."""

    def __init__(self, state: dict | None = None):
        s = state or {}
        self.epochs: list = list(s.get("epochs", []))
        self.steps: list = list(s.get("steps", []))
        self.epoch_sum = float(s.get("epoch_sum", 0.0))
        self.epoch_images = int(s.get("epoch_images", 0))
        self.epoch_seconds = float(s.get("epoch_seconds", 0.0))
        #: of which waiting for the next batch from the store (the loader's reads and shuffle)
        self.epoch_wait = float(s.get("epoch_wait", 0.0))
        self.win_sum = float(s.get("win_sum", 0.0))
        self.win_steps = int(s.get("win_steps", 0))
        self.pending: list = []

    def state(self) -> dict:
        self.settle()
        return {"epochs": self.epochs, "steps": self.steps, "epoch_sum": self.epoch_sum,
                "epoch_images": self.epoch_images, "epoch_seconds": self.epoch_seconds,
                "epoch_wait": self.epoch_wait, "win_sum": self.win_sum, "win_steps": self.win_steps}

    def defer(self, loss, n: int, global_step: int, epoch: int) -> float | None:
        """Queue a step's loss tensor; read them back together every LOG_STEPS steps.

        One device-to-host copy per window instead of one per step (no GPU sync per step);
        the numbers and the order they are summed in are those of :meth:`add`.
        """
        self.pending.append((loss, n, global_step, epoch))
        if len(self.pending) >= LOG_STEPS:
            return self.settle()
        return None

    def settle(self) -> float | None:
        """Add the queued losses (before a checkpoint, at the end of an epoch)."""
        if not self.pending:
            return None
        import torch

        values = torch.stack([p[0].reshape(()) for p in self.pending]).tolist()
        mean = None
        for v, (_, n, g, e) in zip(values, self.pending):
            m = self.add(float(v), n, g, e)
            mean = m if m is not None else mean
        self.pending = []
        return mean

    def add(self, loss: float, n: int, global_step: int, epoch: int) -> float | None:
        self.epoch_sum += loss * n
        self.epoch_images += n
        self.win_sum += loss
        self.win_steps += 1
        if self.win_steps >= LOG_STEPS:
            return self.flush_window(global_step, epoch)
        return None

    def flush_window(self, global_step: int, epoch: int) -> float | None:
        if not self.win_steps:
            return None
        mean = self.win_sum / self.win_steps
        self.steps.append({"step": global_step, "epoch": epoch, "loss": mean})
        self.win_sum, self.win_steps = 0.0, 0
        return mean

    def end_epoch(self, epoch: int, global_step: int) -> dict:
        self.settle()
        self.flush_window(global_step, epoch)
        rec = {"epoch": epoch, "loss": self.epoch_sum / max(self.epoch_images, 1), "images": self.epoch_images,
               "seconds": round(self.epoch_seconds, 3),
               "images_per_s": round(self.epoch_images / self.epoch_seconds, 1) if self.epoch_seconds > 0 else None,
               "data_wait_share": round(self.epoch_wait / self.epoch_seconds, 4) if self.epoch_seconds > 0 else None}
        self.epochs.append(rec)
        self.epoch_sum, self.epoch_images, self.epoch_seconds, self.epoch_wait = 0.0, 0, 0.0, 0.0
        return rec


# -- RNG states as tensors / plain types (loadable with weights_only=True) -----------------
def _rng_state(torch, trainer: _Trainer) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "generator": trainer.gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "key": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [int(py_state[0]), [int(v) for v in py_state[1]], py_state[2]],
    }
    if trainer.device.startswith("cuda"):
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(torch, trainer: _Trainer, s: dict) -> None:
    trainer.gen.set_state(s["generator"])
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in s and trainer.device.startswith("cuda"):
        torch.cuda.set_rng_state_all(s["cuda"])


def _cpu_state(obj):
    """Move every tensor of a nested state to the CPU (a checkpoint loads on any device)."""
    if hasattr(obj, "detach"):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_state(v) for v in obj)
    return obj


def _save_checkpoint(path: Path, torch, trainer: _Trainer, identity: dict, epoch: int, step: int,
                     global_step: int, log: _Log) -> None:
    state = {
        "format": _FORMAT, "identity": identity, "epoch": int(epoch), "step": int(step),
        "global_step": int(global_step),
        "model": _cpu_state(trainer.net.state_dict()),
        "optimizer": _cpu_state(trainer.opt.state_dict()),
        "rng": _rng_state(torch, trainer),
        "log": log.state(),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def _remove_partials(layout: RunLayout, model: str) -> None:
    for folder in (layout.state_dir, layout.deep_dir):
        if folder.is_dir():
            for p in folder.glob(f"*{model}*.partial"):
                p.unlink(missing_ok=True)


def _reset(layout: RunLayout, model: str) -> None:
    """Forget a training of ``model`` and everything computed from it (:func:`streamclust.stages.invalidate`)."""
    stages.invalidate(layout, f"train-{model}", include_self=True)
    _remove_partials(layout, model)


def _check_config(layout: RunLayout, config: TrainConfig, data: dict, overwrite: bool) -> bool:
    """Record the settings; True when a finished training with these settings exists."""
    run_cfg = load_run_config(layout.root)
    saved = (run_cfg.get("train") or {}).get(config.model)
    identity = {**config.identity(), "data": data}
    if saved is not None:
        saved_identity = {k: v for k, v in saved.items() if k not in TrainConfig.NON_IDENTITY}
        if saved_identity != identity:
            if not overwrite:
                diff = sorted(k for k in set(saved_identity) | set(identity)
                              if saved_identity.get(k) != identity.get(k))
                raise ConfigMismatchError(
                    f"{layout.root} has a {config.model} trained with other settings ({', '.join(diff)} differ); "
                    "pass --overwrite to train again"
                )
            _reset(layout, config.model)
        elif overwrite:
            _reset(layout, config.model)
    elif overwrite:
        _reset(layout, config.model)
    run_cfg = load_run_config(layout.root)  # _reset may have changed it
    run_cfg.setdefault("train", {})[config.model] = {**config.to_dict(), "data": data}
    write_json(layout.config, run_cfg)
    return layout.is_done(f"train-{config.model}")


def _bar(enabled: bool | None, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True, leave=False,
                file=sys.stderr, disable=(not enabled) if enabled is not None else None)


def train_run(
    run_dir: str | os.PathLike,
    *,
    model: str = "ae",
    latent: int = 128,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    checkpoint_steps: int = 200,
    width: int = 32,
    buffer_chunks: int = 4,
    threads: int | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Train an autoencoder (``model="ae"``) or a VAE (``"vae"``) on an ingested run; resumes.

    Returns a summary dict: ``model``, ``device``, ``epochs``, ``steps``, ``images``
    (seen in this call), ``seconds``, ``images_per_s``, ``data_wait_share`` (the share of
    ``seconds`` spent waiting for the next batch from the store), ``first_loss`` and ``final_loss``
    (mean loss of the first and last epoch), ``resumed_from_step`` (``None`` for a fresh
    start), ``already_done``, ``threads``, ``weights`` and ``history`` (paths).

    ``threads`` sets PyTorch's intra-op threads for the call (``None``: leave them).  The
    CPU result is bit-identical between runs and across a resume only with the same
    number of threads; on a busy machine one thread is often the fastest for small images.
    ``device``, ``checkpoint_steps`` and ``threads`` may change between a kill and a resume.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads must be a positive integer, got {threads!r}")
    torch = require_torch()
    config = TrainConfig(model=model, latent=latent, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         width=width, buffer_chunks=buffer_chunks, checkpoint_steps=checkpoint_steps,
                         device=device)
    layout = RunLayout.of(run_dir)
    layout.require("ingest", f"streamclust ingest SOURCE {run_dir}")

    from .data import StoreLoader, to_float_tensor

    images = image_array(layout.root)
    rows = ok_rows(layout.root)
    if overwrite:  # nothing is discarded before the images are verified, every chunk's checksum too
        verify_images(layout, images_location(layout.root), checksums=True)
    if rows.size == 0:
        raise UsageError(f"{layout.root} has no usable images to train on")
    size, channels = int(images.shape[1]), int(images.shape[3])
    data = {"n_images": int(rows.size), "size": size, "channels": channels}
    identity = {**config.identity(), "data": data}
    dev = resolve_device(config.device)
    done = _check_config(layout, config, data, overwrite)
    wpath, hpath, cpath = (weights_path(layout.root, model), history_path(layout.root, model),
                           checkpoint_path(layout.root, model))
    summary = {"model": model, "device": dev, "weights": str(wpath), "history": str(hpath),
               "already_done": done, "resumed_from_step": None}
    if done:
        hist = read_history(layout.root, model)
        ep = hist["epochs"]
        return {**summary, "epochs": len(ep), "steps": hist.get("total_steps"), "images": 0, "seconds": 0.0,
                "images_per_s": None, "data_wait_share": None, "first_loss": ep[0]["loss"],
                "final_loss": ep[-1]["loss"]}
    _remove_partials(layout, model)

    loader = StoreLoader(images, rows, batch_size=config.batch_size, seed=config.seed,
                         buffer_chunks=config.buffer_chunks)
    steps_per_epoch = len(loader)
    with _Deterministic(torch, dev, threads):
        summary["threads"] = torch.get_num_threads()
        trainer = _Trainer(torch, config, size, channels, dev)
        epoch, step, global_step, log = 0, 0, 0, _Log()
        if cpath.exists():
            ck = torch.load(cpath, map_location="cpu", weights_only=True)
            if ck.get("format") != _FORMAT or ck.get("identity") != identity:
                cpath.unlink()  # a stale checkpoint of other settings: start again
            else:
                trainer.net.load_state_dict(ck["model"])
                trainer.opt.load_state_dict(ck["optimizer"])
                _set_rng_state(torch, trainer, ck["rng"])
                epoch, step, global_step = ck["epoch"], ck["step"], ck["global_step"]
                log = _Log(ck["log"])
                summary["resumed_from_step"] = global_step
        trainer.net.train()
        t_start, images_seen, wait_total = time.perf_counter(), 0, 0.0
        non_blocking = dev.startswith("cuda")
        while epoch < config.epochs:
            bar = _bar(progress, loader.n_rows, f"train {model} {epoch + 1}/{config.epochs}")
            bar.update(min(step * config.batch_size, loader.n_rows))
            t0 = time.perf_counter()
            batches = loader.iter_epoch(epoch, step, as_float=False)
            try:
                while True:
                    tw = time.perf_counter()
                    raw = next(batches, None)
                    log.epoch_wait += time.perf_counter() - tw
                    wait_total += time.perf_counter() - tw
                    if raw is None:
                        break
                    x = to_float_tensor(raw, dev, non_blocking)
                    loss = trainer.step(x)
                    n = int(x.shape[0])
                    step += 1
                    global_step += 1
                    images_seen += n
                    mean = log.defer(loss, n, global_step, epoch)
                    bar.update(n)
                    if mean is not None:
                        bar.set_postfix(loss=f"{mean:.4g}", refresh=False)
                    if global_step % config.checkpoint_steps == 0 and step < steps_per_epoch:
                        log.epoch_seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        _save_checkpoint(cpath, torch, trainer, identity, epoch, step, global_step, log)
            finally:
                bar.close()
            log.epoch_seconds += time.perf_counter() - t0
            log.end_epoch(epoch, global_step)
            epoch, step = epoch + 1, 0
            _save_checkpoint(cpath, torch, trainer, identity, epoch, step, global_step, log)
        seconds = time.perf_counter() - t_start

    # outputs first, the marker last, then the checkpoint goes
    weights = {k: v.detach().cpu().contiguous() for k, v in trainer.net.state_dict().items()}
    with atomic_open(wpath, "wb") as fh:
        torch.save(weights, fh)
    history = {"model": model, "config": {**config.to_dict(), "data": data}, "steps_per_epoch": steps_per_epoch,
               "total_steps": global_step, "log_steps": LOG_STEPS, "loss": "mse per pixel" if model == "ae"
               else "negative ELBO per image (BCE summed over pixels + KL)",
               "epochs": log.epochs, "steps": log.steps}
    write_json(hpath, history)
    stages.complete(layout, f"train-{model}")
    cpath.unlink(missing_ok=True)
    return {**summary, "epochs": config.epochs, "steps": global_step, "images": images_seen,
            "seconds": round(seconds, 3), "images_per_s": round(images_seen / seconds, 1) if seconds > 0 else None,
            "data_wait_share": round(wait_total / seconds, 4) if seconds > 0 else None,
            "first_loss": log.epochs[0]["loss"], "final_loss": log.epochs[-1]["loss"]}


def load_net(run_dir: str | os.PathLike, model: str = "ae", device: str = "cpu"):
    """The trained network of a run, in eval mode on ``device`` (weights loaded with weights_only=True)."""
    torch = require_torch()
    from .nets import build_net

    layout = RunLayout.of(run_dir)
    layout.require(f"train-{model}", f"streamclust train {run_dir} --model {model}")
    cfg = (load_run_config(layout.root).get("train") or {}).get(model)
    if cfg is None:
        raise RunDirError(f"{layout.root}/config.json has no train settings for {model}")
    data = cfg["data"]
    net = build_net(model, data["size"], cfg["latent"], data["channels"], cfg["width"])
    state = torch.load(weights_path(layout.root, model), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.to(resolve_device(device)).eval()


def train_tensor(images, *, model: str = "ae", latent: int = 128, epochs: int = 20, batch_size: int = 256,
                 lr: float = 1e-3, seed: int = 0, device: str = "auto", width: int = 32,
                 threads: int | None = None, progress: bool | None = None):
    """Train on an in-memory ``uint8 (N, s, s, 3)`` array held whole as a float tensor.

    The notebooks' way (and the benchmark's baseline): no checkpoints, no resume.
    Returns ``(net, history)`` with ``history = {"epochs": [...]}``.
    """
    torch = require_torch()
    from .data import to_float_tensor

    config = TrainConfig(model=model, latent=latent, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         width=width, device=device)
    dev = resolve_device(device)
    X = to_float_tensor(np.ascontiguousarray(images), dev)  # the whole set, float32 on the device
    n, channels, size = int(X.shape[0]), int(X.shape[1]), int(X.shape[2])
    with _Deterministic(torch, dev, threads):
        trainer = _Trainer(torch, config, size, channels, dev)
        trainer.net.train()
        log = _Log()
        g = torch.Generator().manual_seed(seed)
        global_step = 0
        for epoch in range(epochs):
            t0 = time.perf_counter()
            bar = _bar(progress, n, f"train {model} {epoch + 1}/{epochs} (in memory)")
            perm = torch.randperm(n, generator=g).to(dev)
            for lo in range(0, n, batch_size):
                x = X[perm[lo:lo + batch_size]]
                loss = trainer.step(x)
                global_step += 1
                log.defer(loss, int(x.shape[0]), global_step, epoch)
                bar.update(int(x.shape[0]))
            bar.close()
            log.epoch_seconds = time.perf_counter() - t0
            log.end_epoch(epoch, global_step)
    return trainer.net.eval(), {"epochs": log.epochs, "steps": log.steps}
