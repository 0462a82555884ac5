"""Multi-pass fitting, resumable at batch granularity.

Every streaming fit in streamclust is a *plan*: a sequence of passes over the data.
Each pass feeds every batch to an *accumulator* (sums, counts, sufficient statistics,
or, for the sequential mini-batch methods, the model itself); when the pass ends the
plan turns the accumulator into its next state (an M-step, a centroid update, ...).

Both the plan and the accumulator can report their whole state as a flat dict of
NumPy arrays, so :func:`run_passes` can checkpoint in the middle of a pass and a
killed fit resumes at the batch where it stopped, ending with the same result as an
unbroken fit.  Random numbers are drawn from generators derived from a seed stored in
the plan's state and the pass number, never from a global generator.

Exact-pass accumulators also implement ``merge`` so that per-chunk partial sums can be
reduced in a tree (dask.distributed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Protocol

import numpy as np

from .._atomic import load_npz, save_npz
from ._batches import RowSource

__all__ = [
    "Accumulator",
    "Plan",
    "Checkpointer",
    "run_passes",
    "pass_rng",
    "fingerprint",
]

logger = logging.getLogger(__name__)

State = dict[str, Any]


class Accumulator(Protocol):
    """One pass's running state."""

    #: short label for progress bars, e.g. ``"EM iteration 3"``
    name: str

    def update(self, X: np.ndarray, offset: int) -> None:
        """Consume the batch ``X`` (rows ``offset:offset + len(X)`` of the source)."""

    def state_dict(self) -> State:
        """The accumulator's whole state as a flat dict of arrays / scalars."""

    def load_state_dict(self, state: State) -> None:
        """Restore a state produced by :meth:`state_dict`."""


class Plan(Protocol):
    """A resumable multi-pass fit."""

    def next_pass(self) -> Accumulator | None:
        """The accumulator of the next pass, or ``None`` when the fit is finished.

        Must be deterministic given the plan's state: after ``load_state_dict`` it
        rebuilds the same accumulator as before the interruption.
        """

    def end_pass(self, acc: Accumulator) -> None:
        """Update the plan from a finished pass."""

    def state_dict(self) -> State: ...

    def load_state_dict(self, state: State) -> None: ...


def pass_rng(seed: int, pass_index: int, *extra: int) -> np.random.Generator:
    """A generator for one pass, a pure function of the plan seed and the pass number."""
    return np.random.default_rng([int(seed), int(pass_index), *map(int, extra)])


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able parameters (to refuse mismatched checkpoints)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(prefix: str, state: State) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": np.asarray(v) for k, v in state.items()}


def _unflatten(prefix: str, arrays: dict[str, np.ndarray]) -> State:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


@dataclass
class Checkpointer:
    """Saves the state of a plan in flight to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : Path
        The checkpoint file.
    key : str
        Fingerprint of the fit's parameters and data; a checkpoint with another key is
        refused (``ValueError``) rather than silently resumed.
    every_seconds : float
        Save at most this often (and always at the end of a pass; ``0``: after every
        batch).  A large state (the
        exact PCA's scatter matrix: 600 MB at 64x64 RGB) is saved less often: at least
        ten times as long as its last save took passes between two saves, so saving
        costs at most about a tenth of the fit.
    """

    path: Path
    key: str
    every_seconds: float = 30.0
    _last: float = field(default_factory=monotonic, repr=False)
    _save_seconds: float = field(default=0.0, repr=False)

    #: a save waits at least this many times the duration of the previous one
    SAVE_COST_FACTOR = 10.0

    def due(self) -> bool:
        if self.every_seconds <= 0:  # every batch, whatever it costs (what the resume tests use)
            return True
        return monotonic() - self._last >= max(self.every_seconds, self.SAVE_COST_FACTOR * self._save_seconds)

    def save(self, plan: Plan, acc: Accumulator | None, pass_index: int, next_row: int) -> None:
        meta = {"key": self.key, "pass_index": pass_index, "next_row": next_row, "in_pass": acc is not None}
        arrays = _flatten("plan", plan.state_dict())
        if acc is not None:
            arrays.update(_flatten("pass", acc.state_dict()))
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        t0 = monotonic()
        save_npz(self.path, arrays)
        self._last = monotonic()
        self._save_seconds = self._last - t0
        logger.debug("checkpoint saved: pass %d, row %d", pass_index, next_row)

    def load(self) -> tuple[dict, State, State] | None:
        """``(meta, plan_state, pass_state)`` or ``None`` when there is no checkpoint."""
        if not Path(self.path).exists():
            return None
        arrays = load_npz(self.path)
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        if meta.get("key") != self.key:
            raise ValueError(
                f"checkpoint {self.path} belongs to a fit with other parameters or data; "
                "delete it (or pass --overwrite) to start again"
            )
        return meta, _unflatten("plan", arrays), _unflatten("pass", arrays)

    def clear(self) -> None:
        Path(self.path).unlink(missing_ok=True)


ProgressFn = Callable[[str, int, int], None]


def run_passes(
    plan: Plan,
    source: RowSource,
    batch_size: int,
    *,
    dtype=np.float64,
    checkpoint: Checkpointer | None = None,
    progress: ProgressFn | None = None,
) -> Plan:
    """Drive ``plan`` over ``source`` until it reports no further pass.

    With a ``checkpoint``, a saved state is resumed first and the state is saved every
    ``checkpoint.every_seconds`` and at the end of each pass.  ``progress`` is called as
    ``progress(pass_name, rows_done, n_rows)`` after each batch.
    """
    pass_index, start_row = 0, 0
    acc: Accumulator | None = None
    if checkpoint is not None:
        loaded = checkpoint.load()
        if loaded is not None:
            meta, plan_state, pass_state = loaded
            plan.load_state_dict(plan_state)
            pass_index, start_row = int(meta["pass_index"]), int(meta["next_row"])
            if meta["in_pass"]:
                acc = plan.next_pass()
                if acc is not None:
                    acc.load_state_dict(pass_state)
            logger.info("resuming from checkpoint: pass %d, row %d", pass_index, start_row)
    n = source.n_samples
    while True:
        if acc is None:
            acc = plan.next_pass()
            start_row = 0
            if acc is None:
                break
        for offset, X in source.iter_batches(batch_size, start=start_row, dtype=dtype):
            acc.update(X, offset)
            done = offset + X.shape[0]
            if progress is not None:
                progress(acc.name, done, n)
            if checkpoint is not None and done < n and checkpoint.due():
                checkpoint.save(plan, acc, pass_index, done)
        plan.end_pass(acc)
        acc = None
        pass_index += 1
        if checkpoint is not None:
            checkpoint.save(plan, None, pass_index, 0)
    return plan
