"""The time a stage may take, said before its first pass (issue 12: honest estimates)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from streamclust import StreamingGaussianMixture, StreamingKMeans
from streamclust.engine import fit_streaming
from streamclust.pipeline import progress
from streamclust.pipeline.estimate import Phase, gmm_phases, kmeans_phases, pass_kind, select_k_phases


@pytest.mark.parametrize("name, kind", [
    ("EM iteration 12 (log-lik -28.4881)", "EM iteration"),
    ("EM iteration 1", "EM iteration"),
    ("k-means init pass 3", "k-means init pass"),
    ("sampling rows", "sampling rows"),
    ("pass 3, 20 of 20 candidates (k=10, ...)", "pass"),
    ("pass 1, k=10", "pass"),
])
def test_pass_kind_drops_the_number_and_detail(name, kind):
    assert pass_kind(name) == kind


def _kinds_of_a_fit(est, X) -> list[str]:
    seen = []

    def prog(name, done, total):
        if done >= total:
            seen.append(pass_kind(name))

    fit_streaming(est, X, progress=prog)
    return seen


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3000, 6)) + rng.integers(0, 4, 3000)[:, None] * 3.0).astype(np.float32)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tol=0: every iteration runs
def test_the_gmm_phases_are_the_passes_the_mixture_makes(blobs):
    phases = gmm_phases(blobs, len(blobs), 4, "diag", max_iter=7)
    kinds = [p.kind for p in phases]
    seen = _kinds_of_a_fit(StreamingGaussianMixture(4, covariance_type="diag", max_iter=7, tol=0, batch_size=500,
                                                    random_state=0), blobs)
    assert set(seen) <= set(kinds)
    assert seen.count("EM iteration") == 7 == phases[kinds.index("EM iteration")].passes
    assert seen.count("k-means init pass") <= phases[kinds.index("k-means init pass")].passes
    assert all(p.seconds > 0 for p in phases)


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_the_kmeans_phases_are_the_passes_kmeans_makes(blobs, method):
    phases = kmeans_phases(blobs, len(blobs), 4, max_iter=6, method=method)
    seen = _kinds_of_a_fit(StreamingKMeans(4, method=method, max_iter=6, tol=0, batch_size=500, random_state=0),
                           blobs)
    kinds = [p.kind for p in phases]
    assert set(seen) <= set(kinds)
    # passes of each kind stay within the phase's bound, in the phases' order
    for kind in set(seen):
        assert seen.count(kind) <= phases[kinds.index(kind)].passes
    assert [kinds.index(k) for k in seen] == sorted(kinds.index(k) for k in seen)


def test_a_sweep_pass_is_timed_with_every_candidate(monkeypatch):
    """A shared pass feeds every candidate: its time is that of all their E-steps, not one's, taken
    as the sweep's passes take them (diagonal mixtures together; others each its own)."""
    from streamclust.models import _gmm_estep, _gmm_stats

    joint, own = [], []
    real_joint, real_own = _gmm_estep.DiagEStep.update, _gmm_stats.GMMStatsAccumulator.update
    monkeypatch.setattr(_gmm_estep.DiagEStep, "update", lambda self, X, offset=0: joint.append(
        tuple(p.n_components for p in self.parts)) or real_joint(self, X, offset))
    monkeypatch.setattr(_gmm_stats.GMMStatsAccumulator, "update",
                        lambda self, X, offset=0: own.append(self.n_components) or real_own(self, X, offset))
    wide = np.random.default_rng(1).standard_normal((600, 16))
    phase, = select_k_phases(wide, 100_000, [3, 5, 8], "gmm", "diag", max_iter=10)
    assert phase.passes == 10 + 7 and phase.seconds > 0
    assert set(joint) == {(3, 5, 8)} and own == []
    joint.clear()
    phase, = select_k_phases(wide, 100_000, [3, 5], "gmm", "full", max_iter=10)
    assert joint == [] and sorted(set(own)) == [3, 5] and own.count(3) == own.count(5)


def test_the_bound_is_said_before_the_first_pass_and_kept_current(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    phases = [Phase("k-means init pass", 0.5, 5), Phase("EM iteration", 2.0, 100)]
    with caplog.at_level(logging.INFO, logger="streamclust"):
        bars = progress.PassBars("gmm", False, phases=phases)
    assert "gmm: up to 3.4 min (at most 5 x k-means init pass at about 0.50 s, 100 x EM iteration at about 2 s" \
        in caplog.text
    bars("k-means init pass 1", 50, 100)
    now[0] = 1.0  # half an init pass in 1 s: this pass 1 s more, 4 more at 2 s, then the EM bound
    assert bars.estimate(50, 100) == pytest.approx(1.0 + 2.0 * 4 + 2.0 * 100)
    now[0] = 2.0
    bars("k-means init pass 1", 100, 100)
    bars("EM iteration 1", 10, 100)
    now[0] = 3.0  # the EM's a-priori 2 s a pass is replaced by what this pass shows: 10 s
    assert bars.estimate(10, 100) == pytest.approx(9.0 + 10.0 * 99)
    now[0] = 12.0
    bars("EM iteration 1", 100, 100)
    bars("EM iteration 2 (log-lik -3.1)", 50, 100)
    now[0] = 17.0  # the last whole EM pass took 10 s: 98 more of them at most
    assert bars.estimate(50, 100) == pytest.approx(5.0 + 10.0 * 98)
    bars.close()
