"""The contract of a streaming fit: a :class:`Plan` of passes, each an :class:`Accumulator`.

Every streaming fit in streamclust is a *plan*: a sequence of passes over the data.
Each pass feeds every batch to an *accumulator* (sums, counts, sufficient statistics,
or, for the sequential mini-batch methods, the model itself); when the pass ends the
plan turns the accumulator into its next state (an M-step, a centroid update, ...).

Both the plan and the accumulator can report their whole state as a flat dict of
NumPy arrays, so a :class:`~streamclust.engine.checkpoint.Checkpointer` can save it in
the middle of a pass and a killed fit resumes at the batch where it stopped, ending with
the same result as an unbroken fit.  Random numbers are drawn from :func:`pass_rng`
(a seed stored in the plan's state and the pass number), never from a global generator.

Exact-pass accumulators also implement ``merge`` so that per-chunk partial sums can be
reduced in a tree (dask.distributed).  An accumulator may hold its sums elsewhere while it
is fed (on a device, stacked with others'): :func:`settle` brings them home.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Protocol

import numpy as np

__all__ = ["Accumulator", "Plan", "State", "ProgressFn", "settle", "pass_rng", "fingerprint"]

State = dict[str, Any]

#: ``progress(pass_name, rows_done, n_rows)``, called as batches are done
ProgressFn = Callable[[str, int, int], None]


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


def settle(acc) -> None:
    """Bring an accumulator's whole state into its own attributes (its ``to_host()``, if it
    has one): sums a pass kept on a device come back as NumPy, those a joint step kept
    stacked are split back into its parts (on a device, as the parts' own tensors there:
    their ``state_dict`` copies them to NumPy, and their M-step runs there).

    The engine settles an accumulator before it checkpoints it, before the plan's
    ``end_pass`` and before merging it with another (dask); ``state_dict`` and ``merge``
    may assume it.
    """
    to_host = getattr(acc, "to_host", None)
    if to_host is not None:
        to_host()


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
