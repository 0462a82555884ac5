"""Several plans driven by one stream: every read of a batch feeds all of them.

:class:`CombinedPlan` wraps candidate plans (one model per k, say) into a single
:class:`~streamclust.engine.plan.Plan`.  Each combined pass asks every unfinished
candidate for its next accumulator and returns one :class:`CombinedAccumulator` that
forwards each batch to all of them; at the end of the pass every candidate gets its own
``end_pass``.  Candidates that finish early (converged, or out of iterations) drop out
of the following passes; the stream stops when none is left.

Each candidate sees exactly the batches (same rows, same offsets, same dtype) that
:func:`~streamclust.engine.execute.run_passes` would feed it alone, so with the same
seed and batch size it ends where a separate fit ends: bit for bit, unless its
accumulators do a batch's work together with other candidates' (a ``_joint_step``, see
:func:`~streamclust.engine.arrays.joint_steps`), which adds the same terms in another
order (to rounding).

The state of the combined plan (and of the combined accumulator) is the union of the
candidates' states, each key prefixed by the candidate's label (``"k=10/means"``), plus
which candidates are finished or failed; so a :class:`~streamclust.engine.checkpoint.Checkpointer`
saves and resumes a combined fit mid-pass like any other.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..errors import ConvergenceError
from .arrays import SharedPassParts
from .plan import Accumulator, Plan

__all__ = ["CombinedPlan", "CombinedAccumulator"]

logger = logging.getLogger(__name__)

State = dict[str, Any]


def _sub(state: State, prefix: str) -> State:
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}


class CombinedAccumulator(SharedPassParts):
    """Forwards every batch to the accumulators of the candidates active in this pass.

    The batch is made read-only before it is forwarded, so a candidate that would modify
    it in place (and corrupt what the next candidate sees) fails loudly instead.
    """

    def __init__(self, members: list[int], labels: list[str], parts: list[Accumulator], name: str):
        self.members = members
        self.labels = labels
        self.parts = parts
        self.name = name
        #: a dask cluster may split this pass over blocks only if every part can merge
        self.mergeable = all(hasattr(p, "merge") and getattr(p, "mergeable", True) for p in parts)

    def merge(self, other: "CombinedAccumulator") -> None:
        for a, b in zip(self.parts, other.parts):
            a.merge(b)

    def update(self, X: np.ndarray, offset: int) -> None:
        if isinstance(X, np.ndarray) and X.flags.writeable:
            X = X.view()
            X.flags.writeable = False
        self._feed(X, offset)  # on a device the candidates' models and sums cross together

    def state_dict(self) -> State:
        state: State = {"members": np.asarray(self.members, dtype=np.int64)}
        for label, part in zip(self.labels, self.parts):
            state.update({f"{label}/{k}": v for k, v in part.state_dict().items()})
        return state

    def load_state_dict(self, state: State) -> None:
        saved = np.asarray(state["members"], dtype=np.int64)
        if not np.array_equal(saved, np.asarray(self.members, dtype=np.int64)):
            raise ValueError("the checkpointed pass was fed to other candidates than this plan rebuilt")
        for label, part in zip(self.labels, self.parts):
            part.load_state_dict(_sub(state, f"{label}/"))


class CombinedPlan:
    """One plan running several candidate plans in lockstep over the same stream.

    Parameters
    ----------
    plans : sequence of Plan
        The candidates, each built as its estimator's ``_make_plan`` builds it.
    labels : sequence of str, default=None
        Distinct names of the candidates, used as state-key prefixes and in messages
        (default ``"0"``, ``"1"``, ...).  Must not contain ``"/"``.
    catch : tuple of exception types, default=(ConvergenceError,)
        A candidate whose ``end_pass`` or ``next_pass`` raises one of these is marked
        failed (``failed``, ``errors``) and leaves the stream; the others go on.  Other
        exceptions propagate.

    Attributes
    ----------
    done : ndarray of bool
        Candidates that have finished (their ``next_pass`` returned ``None``).
    failed : ndarray of bool
        Candidates dropped after a caught exception.
    passes : ndarray of int
        Passes each candidate has finished.
    errors : dict of int to str
        Message of each failed candidate.
    pass_index : int
        Combined passes finished.
    """

    def __init__(self, plans: Sequence[Plan], labels: Sequence[str] | None = None, *,
                 catch: tuple[type[BaseException], ...] = (ConvergenceError,)):
        self.plans = list(plans)
        n = len(self.plans)
        self.labels = [str(i) for i in range(n)] if labels is None else [str(s) for s in labels]
        if len(self.labels) != n or len(set(self.labels)) != n or any("/" in s for s in self.labels):
            raise ValueError("labels must be one distinct name without '/' per plan")
        self.catch = tuple(catch)
        self.done = np.zeros(n, dtype=bool)
        self.failed = np.zeros(n, dtype=bool)
        self.passes = np.zeros(n, dtype=np.int64)
        self.errors: dict[int, str] = {}
        self.pass_index = 0

    # -- protocol -------------------------------------------------------------------
    def _fail(self, i: int, exc: BaseException) -> None:
        self.failed[i] = True
        self.errors[i] = f"{type(exc).__name__}: {exc}"
        logger.warning("candidate %s failed and was dropped: %s", self.labels[i], exc)

    @property
    def active(self) -> np.ndarray:
        """Candidates still fitting."""
        return ~(self.done | self.failed)

    def next_pass(self) -> CombinedAccumulator | None:
        members, parts = [], []
        for i in np.flatnonzero(self.active):
            try:
                acc = self.plans[i].next_pass()
            except self.catch as exc:
                self._fail(int(i), exc)
                continue
            if acc is None:
                self.done[i] = True
            else:
                members.append(int(i))
                parts.append(acc)
        if not parts:
            return None
        first = f"{self.labels[members[0]]}: {parts[0].name}"
        name = f"pass {self.pass_index + 1}, {len(parts)} of {len(self.plans)} candidates ({first}, ...)" \
            if len(parts) > 1 else f"pass {self.pass_index + 1}, {first}"
        return CombinedAccumulator(members, [self.labels[i] for i in members], parts, name)

    def end_pass(self, acc: CombinedAccumulator) -> None:
        for i, part in zip(acc.members, acc.parts):
            try:
                self.plans[i].end_pass(part)
            except self.catch as exc:
                self._fail(i, exc)
                continue
            self.passes[i] += 1
        self.pass_index += 1

    def state_dict(self) -> State:
        state: State = {
            "pass_index": np.int64(self.pass_index),
            "done": self.done.copy(),
            "failed": self.failed.copy(),
            "passes": self.passes.copy(),
        }
        for i, msg in self.errors.items():
            state[f"error/{self.labels[i]}"] = np.frombuffer(msg.encode(), dtype=np.uint8)
        for i, (label, plan) in enumerate(zip(self.labels, self.plans)):
            if not self.failed[i]:
                state.update({f"{label}/{k}": v for k, v in plan.state_dict().items()})
        return state

    def load_state_dict(self, state: State) -> None:
        self.pass_index = int(state["pass_index"])
        self.done = np.array(state["done"], dtype=bool)
        self.failed = np.array(state["failed"], dtype=bool)
        self.passes = np.array(state["passes"], dtype=np.int64)
        if self.done.size != len(self.plans):
            raise ValueError("the checkpoint holds another number of candidates")
        self.errors = {}
        for i, (label, plan) in enumerate(zip(self.labels, self.plans)):
            if self.failed[i]:
                msg = state.get(f"error/{label}")
                self.errors[i] = bytes(np.asarray(msg, dtype=np.uint8)).decode() if msg is not None else "failed"
            else:
                plan.load_state_dict(_sub(state, f"{label}/"))
