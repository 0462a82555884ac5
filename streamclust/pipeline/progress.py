"""Progress bars for multi-pass fits: one tqdm bar per pass, on a terminal only."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["PassBars"]


class PassBars:
    """A ``progress(pass_name, rows_done, n_rows)`` callback drawing a bar per pass.

    Parameters
    ----------
    stage : str
        Prefix of every bar, e.g. ``"pca"``.
    enabled : bool or None
        ``None`` shows bars only when stderr is a terminal (tqdm's rule).
    """

    def __init__(self, stage: str, enabled: bool | None = None):
        self.stage = stage
        self.enabled = enabled
        self.bar = None
        self.name = None
        self.passes = 0

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self.name or self.bar is None or done < self.bar.n:
            self.close()
            self.passes += 1
            self.name = name
            self.bar = tqdm(total=total, desc=f"{self.stage} {self.passes}: {name}", unit="row",
                            unit_scale=True, dynamic_ncols=True, leave=False, file=sys.stderr,
                            disable=(not self.enabled) if self.enabled is not None else None)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
