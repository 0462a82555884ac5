"""The checkpointer saves a large state less often, so that saving stays a small part of a fit."""

import numpy as np

from streamclust.engine import Checkpointer
from streamclust.engine import checkpoint as checkpoint_module


class _Plan:
    def __init__(self, size):
        self.state = {"x": np.zeros(size)}

    def state_dict(self):
        return self.state


def test_a_slow_save_spaces_the_next_ones(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(checkpoint_module, "monotonic", lambda: now[0])
    real_save = checkpoint_module.save_npz

    def slow_save(path, arrays):  # a save that takes 3 s of the fake clock
        real_save(path, arrays)
        now[0] += 3.0

    monkeypatch.setattr(checkpoint_module, "save_npz", slow_save)
    ck = Checkpointer(tmp_path / "ck.npz", "k", every_seconds=20, _last=0.0)  # started at the fake clock's 0
    now[0] = 20.0
    assert ck.due()
    ck.save(_Plan(10), None, 0, 0)  # took 3 s: the next one waits 30 s, not 20
    now[0] += 25.0
    assert not ck.due()
    now[0] += 5.0
    assert ck.due()
    assert Checkpointer(tmp_path / "b.npz", "k", every_seconds=0).due()  # 0: after every batch
