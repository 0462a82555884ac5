"""The thread pool's blocks give the serial result (the mixture's E-step rows and moment columns)."""

from __future__ import annotations

import numpy as np
import pytest

from streamclust.models import _parallel
from streamclust.models._gmm_stats import GMMStatsAccumulator, precisions_cholesky_from_covariances


def _em_pass(X, covariance_type, seed=0):
    rng = np.random.default_rng(seed)
    k, d = 7, X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)]
    cov = rng.uniform(0.5, 2.0, (k, d)) if covariance_type == "diag" else rng.uniform(0.5, 2.0, k)
    acc = GMMStatsAccumulator(np.full(k, 1 / k), means, precisions_cholesky_from_covariances(cov, covariance_type),
                              covariance_type)
    for lo in range(0, len(X), 300):
        acc.update(X[lo:lo + 300], lo)
    return acc


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_blocked_em_statistics_equal_the_serial_ones(monkeypatch, covariance_type):
    X = np.random.default_rng(1).standard_normal((1000, 80)) * 3 + 10
    serial = _em_pass(X, covariance_type)
    calls = []
    real_map = _parallel.map_blocks
    monkeypatch.setattr(_parallel, "PARALLEL_MIN_WORK", 0.0)
    monkeypatch.setattr(_parallel, "cpu_count", lambda: 2)
    monkeypatch.setattr("streamclust.models._gmm_stats.map_blocks",
                        lambda fn, ranges: calls.append(len(ranges)) or real_map(fn, ranges))
    blocked = _em_pass(X, covariance_type)
    assert calls and min(calls) > 1  # the rows and the columns were split
    for name in ("nk", "sx", "sxx"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(serial, name), rtol=1e-12, atol=1e-9)
    assert blocked.log_likelihood == pytest.approx(serial.log_likelihood, rel=1e-13)
