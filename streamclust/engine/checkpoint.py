"""Checkpoints of a plan in flight: one ``.npz`` file, saved atomically, refused when its key differs.

The file holds the plan's state (keys ``plan/<name>``), the state of the accumulator of
the pass in progress when saved mid-pass (``pass/<name>``), and ``__meta__``: JSON with
the ``key``, ``pass_index``, ``next_row`` and ``in_pass``.  This format is what existing
run directories hold; keep it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic

import numpy as np

from .._atomic import load_npz, save_npz
from .plan import Accumulator, Plan, State

__all__ = ["Checkpointer"]

logger = logging.getLogger(__name__)


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
        Save at most this often, within a pass or between passes (``0``: after every
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
        """``(meta, plan_state, pass_state)`` or ``None`` when there is no checkpoint.

        A checkpoint that cannot be read (truncated, damaged on disk, not a checkpoint) is
        discarded with a warning, and ``None`` returned: the fit starts again from scratch,
        rather than every re-run failing until the file is deleted by hand.
        """
        if not Path(self.path).exists():
            return None
        try:
            arrays = load_npz(self.path)
            meta = json.loads(arrays.pop("__meta__").tobytes().decode())
            int(meta["pass_index"]), int(meta["next_row"]), bool(meta["in_pass"])
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes numpy, zipfile or json raise
            logger.warning("checkpoint %s is damaged (%s: %s); discarding it and starting this stage again",
                           self.path, type(exc).__name__, str(exc).replace("\n", " "))
            self.clear()
            return None
        if meta.get("key") != self.key:
            raise ValueError(
                f"checkpoint {self.path} belongs to a fit with other parameters or data; "
                "delete it (or pass --overwrite) to start again"
            )
        return meta, _unflatten("plan", arrays), _unflatten("pass", arrays)

    def clear(self) -> None:
        Path(self.path).unlink(missing_ok=True)
