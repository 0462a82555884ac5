"""streamclust.engine: a new method is a new plan; drive() runs it, resumable, in-process or on dask."""

import numpy as np
import pytest

from streamclust.engine import Checkpointer, RowSource, drive


class MeanAcc:
    name = "mean"

    def __init__(self, d):
        self.total, self.n = np.zeros(d), 0

    def update(self, X, offset):
        self.total += X.sum(0)
        self.n += X.shape[0]

    def merge(self, other):
        self.total += other.total
        self.n += other.n

    def state_dict(self):
        return {"total": self.total, "n": self.n}

    def load_state_dict(self, s):
        self.total, self.n = np.array(s["total"], dtype=float), int(s["n"])


class MeanPlan:
    """One pass: the mean of every row."""

    def __init__(self, d):
        self.d, self.mean = d, None

    def next_pass(self):
        return MeanAcc(self.d) if self.mean is None else None

    def end_pass(self, acc):
        self.mean = acc.total / acc.n

    def state_dict(self):
        return {} if self.mean is None else {"mean": self.mean}

    def load_state_dict(self, s):
        self.mean = s.get("mean")


class Killed(Exception):
    pass


def test_a_plan_runs_and_resumes_from_its_checkpoint(tmp_path):
    X = np.random.default_rng(0).normal(size=(1000, 7))
    plan = drive(MeanPlan(7), RowSource(X), 64)
    np.testing.assert_allclose(plan.mean, X.mean(0))

    ck = Checkpointer(tmp_path / "mean.ckpt.npz", key="mean", every_seconds=0.0)
    seen = []

    def kill_at_half(name, done, total):
        seen.append(done)
        if done >= total // 2 and len(seen) < 20:
            raise Killed

    with pytest.raises(Killed):
        drive(MeanPlan(7), RowSource(X), 64, checkpoint=ck, progress=kill_at_half)
    resumed = []
    plan = drive(MeanPlan(7), RowSource(X), 64, checkpoint=ck, progress=lambda n, d, t: resumed.append(d))
    assert resumed[0] > 64  # it started where the killed run stopped
    np.testing.assert_allclose(plan.mean, X.mean(0))
    with pytest.raises(ValueError, match="other parameters"):
        drive(MeanPlan(7), RowSource(X), 64, checkpoint=Checkpointer(ck.path, key="other"))
