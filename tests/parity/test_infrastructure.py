"""The parity machinery itself: the rewrite applies, every deviation is current, exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import streamclust
import streamclust.models
from streamclust.models import StreamingGaussianMixture, StreamingKMeans

from . import estimators
from ._loader import adapted_source, load_into
from .conftest import _pattern
from .deviations import DEVIATIONS, LAZY_INPUT, MODULES

HERE = Path(__file__).parent


def test_every_module_has_its_parity_file_and_rewrites_apply():
    for name, spec in MODULES.items():
        assert (HERE / name).exists(), name
        adapted_source(spec["module"], rebind=spec["rebind"], keywords=spec.get("keywords"),
                       after=spec.get("after"), remove=spec.get("remove", {}))
        for reason in spec.get("remove", {}).values():
            assert reason.strip()


def test_a_rewrite_that_finds_nothing_is_an_error():
    spec = dict(MODULES["test_k_means.py"])
    with pytest.raises(LookupError, match="keyword no_such_keyword"):
        load_into({}, {**spec, "keywords": {"no_such_keyword": None}})
    with pytest.raises(LookupError, match="rebind NoSuchEstimator"):
        load_into({}, {**spec, "rebind": {"NoSuchEstimator": object}})


def test_loaded_modules_see_our_estimators():
    from . import test_gaussian_mixture, test_k_means

    assert test_k_means.KMeans is estimators.KMeans
    assert test_k_means.MiniBatchKMeans is estimators.MiniBatchKMeans
    assert issubclass(test_k_means.KMeans, StreamingKMeans)
    assert test_k_means.KMeans().get_params()["method"] == "lloyd"
    assert test_k_means.MiniBatchKMeans().get_params()["method"] == "minibatch"
    assert test_k_means.data_containers_ids == ["dense", "zarr", "dask"]
    assert type(test_k_means.X_as_any_csr[0]).__module__.startswith("zarr")
    assert issubclass(test_gaussian_mixture.GaussianMixture, StreamingGaussianMixture)
    assert test_gaussian_mixture.GaussianMixture().batch_size == estimators.BATCH
    assert test_gaussian_mixture.GaussianMixture.__module__ == estimators.__name__
    # the source is scikit-learn's installed file
    assert "sklearn" in test_k_means.__parity_source__


def test_input_kind_reaches_the_estimator(monkeypatch):
    seen = []
    original = StreamingGaussianMixture.fit

    def spy(self, X, y=None, sample_weight=None):
        seen.append(type(X).__module__.split(".")[0])
        return original(self, X, y, sample_weight=sample_weight)

    monkeypatch.setattr(StreamingGaussianMixture, "fit", spy)
    X = np.random.default_rng(0).normal(size=(40, 2))
    for kind in ("numpy", "zarr", "dask"):
        with estimators.input_kind(kind):
            estimators.GaussianMixture(2, random_state=0).fit(X)
    assert seen == ["numpy", "zarr", "dask"]
    Z = estimators.as_zarr(X)
    assert isinstance(Z, zarr.Array) and Z.chunks[0] == estimators.BATCH - 2


def test_every_deviation_matches_a_collected_test():
    """A stale entry (a test renamed or removed upstream) must be noticed, not kept forever."""
    files = [str(HERE / name) for name in MODULES]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True, text=True, cwd=HERE.parent.parent, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids = [line.split("/")[-1] for line in out.stdout.splitlines() if "::" in line]
    assert len(ids) > 300
    unmatched = [glob for glob in DEVIATIONS if not any(_pattern(glob).match(i) for i in ids)]
    assert not unmatched
    names = {i.split("::")[1].split("[")[0] for i in ids}
    for module, tests in LAZY_INPUT.items():
        assert set(tests) <= names, module


def test_deviation_actions_and_reasons():
    for glob, (action, reason) in DEVIATIONS.items():
        assert action in ("drop", "xfail", "pending"), glob
        assert len(reason) > 20, glob


def test_streamclust_exports_every_estimator():
    names = ("StreamingPCA", "StreamingKMeans", "StreamingGaussianMixture", "StreamingKernelPCA",
             "StreamingAgglomerative", "StreamingTSNE")
    for name in names:
        assert name in streamclust.__all__ and name in streamclust.models.__all__
        assert getattr(streamclust, name) is getattr(streamclust.models, name)
    from streamclust import StreamingAgglomerative, StreamingKernelPCA, StreamingTSNE  # noqa: F401
