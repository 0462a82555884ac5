"""Progress bars for multi-pass fits: one tqdm bar per pass, on a terminal only.

With ``max_passes`` a bar also says how long the stage may still take: the time of a pass
(measured on the first batch, then on the passes done) times the passes left at most.
The first estimate is logged once, before the first pass is far along.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

__all__ = ["PassBars", "format_seconds"]

logger = logging.getLogger(__name__)


def format_seconds(s: float) -> str:
    """``"42 s"``, ``"3.5 min"`` or ``"1.2 h"``."""
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
    """

    def __init__(self, stage: str, enabled: bool | None = None, max_passes: int | None = None):
        self.stage = stage
        self.enabled = enabled
        self.max_passes = max_passes
        self.bar = None
        self.name = None
        self.passes = 0
        self._t0 = time.perf_counter()
        self._pass_t0 = self._t0
        self._said = False

    def estimate(self, done: int, total: int) -> float | None:
        """Seconds the stage may still take at most (``None`` without ``max_passes``)."""
        if not self.max_passes or done <= 0:
            return None
        now = time.perf_counter()
        if self.passes > 1:  # the passes done so far, in time per pass
            per_pass = (self._pass_t0 - self._t0) / (self.passes - 1)
        else:
            per_pass = (now - self._pass_t0) * total / done
        left_in_pass = (now - self._pass_t0) * (total - done) / done
        return left_in_pass + per_pass * max(0, self.max_passes - self.passes)

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self.name or self.bar is None or done < self.bar.n:
            self.close()
            self.passes += 1
            self._pass_t0 = time.perf_counter()
            self.name = name
            self.bar = tqdm(total=total, desc=f"{self.stage} {self.passes}: {name}", unit="row",
                            unit_scale=True, dynamic_ncols=True, leave=False, file=sys.stderr,
                            disable=(not self.enabled) if self.enabled is not None else None)
        self.bar.update(done - self.bar.n)
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
