"""Progress bars for multi-pass fits: one tqdm bar per pass, on a terminal only.

A bar also says how long the stage may still take, at most.  With ``phases`` (see
:mod:`streamclust.pipeline.estimate`: the passes of each kind, their most passes and the
time of one, timed on a sample batch before the first pass) the estimate is logged
before the first pass, and kept current from the passes timed since: a pass of a kind
already run is taken to cost what its last one did.  With only ``max_passes`` the time
of a pass is measured on the first batch, then on the passes done, and logged once,
before the first pass is far along.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Sequence

from tqdm.auto import tqdm

from .estimate import Phase, pass_kind

__all__ = ["PassBars", "format_seconds"]

logger = logging.getLogger(__name__)


def format_seconds(s: float) -> str:
    """``"0.42 s"``, ``"42 s"``, ``"3.5 min"`` or ``"1.2 h"``."""
    if s < 0.995:
        return f"{s:.2f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class PassBars:
    """A ``progress(pass_name, rows_done, n_rows)`` callback drawing a bar per pass.

    Parameters
    ----------
    stage : str
        Prefix of every bar, e.g. ``"pca"``.
    enabled : bool or None
        ``None`` shows bars only when stderr is a terminal (tqdm's rule).
    max_passes : int, default=None
        The most passes the stage makes (when no ``phases`` are given).
    phases : sequence of Phase, default=None
        The stage's passes by kind, in order, each with its most passes and the time of
        one timed before the first pass: the stage's upper bound is logged at once.
    """

    def __init__(self, stage: str, enabled: bool | None = None, max_passes: int | None = None,
                 phases: Sequence[Phase] | None = None):
        self.stage = stage
        self.enabled = enabled
        self.max_passes = max_passes
        self.phases = list(phases or [])
        self.bar = None
        self.name = None
        self.passes = 0
        self._t0 = time.perf_counter()
        self._pass_t0 = self._t0
        self._said = False
        self._last: dict[str, float] = {}  # kind -> seconds its last whole pass took
        self._count: dict[str, int] = {}  # kind -> passes of it begun
        self._phase = -1  # index in phases of the latest kind begun
        self._rows = (0, 0)  # rows done and in all of the current pass
        if self.phases:
            self._said = True
            total = sum(p.seconds * p.passes for p in self.phases)
            if total >= 10:
                logger.info("%s: up to %s (at most %s; timed on a sample batch)", self.stage,
                            format_seconds(total), ", ".join(
                                f"{p.passes} x {p.kind} at about {format_seconds(p.seconds)}"
                                for p in self.phases if p.passes))

    def estimate(self, done: int, total: int) -> float | None:
        """Seconds the stage may still take at most (``None`` without ``max_passes`` or ``phases``)."""
        if self.phases and done > 0:
            return self._phase_estimate(done, total)
        if not self.max_passes or done <= 0:
            return None
        now = time.perf_counter()
        if self.passes > 1:  # the passes done so far, in time per pass
            per_pass = (self._pass_t0 - self._t0) / (self.passes - 1)
        else:
            per_pass = (now - self._pass_t0) * total / done
        left_in_pass = (now - self._pass_t0) * (total - done) / done
        return left_in_pass + per_pass * max(0, self.max_passes - self.passes)

    def _phase_estimate(self, done: int, total: int) -> float:
        elapsed = time.perf_counter() - self._pass_t0
        kind = pass_kind(self.name or "")
        left = elapsed * (total - done) / done
        this = self._last.get(kind, elapsed * total / done)
        later = self.phases
        index = next((i for i, p in enumerate(self.phases) if p.kind == kind), None)
        if index is not None:
            left += this * max(0, self.phases[index].passes - self._count.get(kind, 0))
            later = self.phases[index + 1:]
        elif self._phase >= 0:  # a kind not foreseen: the phases after the last one seen remain
            later = self.phases[self._phase + 1:]
        return left + sum(self._last.get(p.kind, p.seconds) * p.passes for p in later)

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self.name or self.bar is None or done < self.bar.n:
            now = time.perf_counter()
            if self.name is not None and self._rows[1] and self._rows[0] >= self._rows[1]:
                self._last[pass_kind(self.name)] = now - self._pass_t0  # the pass just ended
            self.close()
            self.passes += 1
            self._pass_t0 = now
            self.name = name
            kind = pass_kind(name)
            self._count[kind] = self._count.get(kind, 0) + 1
            self._phase = max(self._phase, next((i for i, p in enumerate(self.phases) if p.kind == kind), -1))
            self.bar = tqdm(total=total, desc=f"{self.stage} {self.passes}: {name}", unit="row",
                            unit_scale=True, dynamic_ncols=True, leave=False, file=sys.stderr,
                            disable=(not self.enabled) if self.enabled is not None else None)
        self.bar.update(done - self.bar.n)
        self._rows = (done, total)
        left = self.estimate(done, total)
        if left is not None:
            if not self._said and (done >= total or time.perf_counter() - self._pass_t0 > 2.0):
                self._said = True  # once, and only for a stage of more than seconds
                if left >= 10:
                        logger.info("%s: about %s a pass, at most %d passes: up to %s", self.stage,
                                format_seconds((time.perf_counter() - self._pass_t0) * total / done),
                                self.max_passes, format_seconds(left))
            self.bar.set_postfix_str(f"stage <= {format_seconds(left)} left", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
