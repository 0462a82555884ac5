"""`streamclust fit` end to end: stages, model files, resume after SIGKILL, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from streamclust.cli import main
from streamclust.config import FitConfig, IngestConfig
from streamclust.errors import ConfigMismatchError, MemoryLimitError, StageNotDoneError, UsageError
from streamclust.ingest import ingest
from streamclust.models import StreamingGaussianMixture, StreamingKMeans, StreamingPCA
from streamclust.models.io import load_model
from streamclust.pipeline.fit import fit_run
from streamclust.store import ok_rows

from ..ingest.hostile import synthetic_jpegs, write_zip


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    members = list(synthetic_jpegs(400, side=24, seed=3))
    members.append(("dup.jpg", members[5][1]))
    members.append(("bad.jpg", b"broken"))
    src = write_zip(tmp / "s.zip", members)
    run = tmp / "base"
    ingest(IngestConfig(str(src), size=12, chunk_size=64, workers=1), run, progress=False)
    return src, run


def _copy_run(base: Path, dest: Path) -> Path:
    import shutil
    shutil.copytree(base, dest)
    return dest


CFG = dict(pca_components=12, clusters=6, gmm_components=4, covariance="diag", seed=1, batch_size=50, max_iter=30)


def test_fit_writes_models_equal_to_the_estimators_on_the_same_rows(ingested, tmp_path):
    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    summary = fit_run(run, FitConfig(**CFG), progress=False)
    assert summary.n_images == 400  # the duplicate and the broken member are left out
    for name in ("pca", "kmeans", "gmm"):
        with np.load(run / "model" / f"{name}.npz", allow_pickle=False) as data:
            assert data.files
    pca, km, gmm = (load_model(run / "model" / f"{n}.npz") for n in ("pca", "kmeans", "gmm"))
    assert isinstance(pca, StreamingPCA) and isinstance(km, StreamingKMeans)
    assert isinstance(gmm, StreamingGaussianMixture)

    rows = ok_rows(run)
    X = zarr.open_array(run / "images.zarr")[:][rows].reshape(len(rows), -1).astype(np.float64)
    ref_pca = StreamingPCA(n_components=12, batch_size=50, random_state=1).fit(X)
    np.testing.assert_allclose(pca.components_, ref_pca.components_, atol=1e-6)  # float32 products
    feats = zarr.open_array(run / "features.zarr")[:]
    ref_feats = ref_pca.transform(X)
    # float32 scores: compare at float32 precision relative to the scores' scale
    np.testing.assert_allclose(feats, ref_feats, rtol=1e-4, atol=1e-5 * np.abs(ref_feats).max())
    F = feats.astype(np.float64)
    # float32 features: float32 models (computed in float64, cast at the end, as the estimators)
    ref_km = StreamingKMeans(n_clusters=6, batch_size=50, max_iter=30, random_state=1, method="lloyd").fit(feats)
    assert km.cluster_centers_.dtype == np.float32
    np.testing.assert_allclose(km.cluster_centers_, ref_km.cluster_centers_, rtol=1e-10)
    ref_gmm = StreamingGaussianMixture(n_components=4, covariance_type="diag", batch_size=50, max_iter=30,
                                       random_state=1).fit(feats)
    np.testing.assert_allclose(gmm.means_, ref_gmm.means_, rtol=1e-10)
    # the loaded estimators work
    assert km.predict(F[:10]).shape == (10,)
    assert np.isfinite(gmm.score(F))
    # re-running is a no-op
    assert fit_run(run, FitConfig(**CFG), progress=False).line().startswith("fit already complete")


def test_fit_refuses_other_settings_unless_overwrite(ingested, tmp_path):
    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    fit_run(run, FitConfig(**{**CFG, "gmm_components": 0}), progress=False)
    with pytest.raises(ConfigMismatchError, match="clusters"):
        fit_run(run, FitConfig(**{**CFG, "gmm_components": 0, "clusters": 3}), progress=False)
    fit_run(run, FitConfig(**{**CFG, "gmm_components": 0, "clusters": 3}), overwrite=True, progress=False)
    assert load_model(run / "model" / "kmeans.npz").cluster_centers_.shape == (3, 12)
    assert not (run / "model" / "gmm.npz").exists()


def test_fit_errors(ingested, tmp_path):
    _, base = ingested
    with pytest.raises(StageNotDoneError, match="streamclust ingest"):
        fit_run(tmp_path / "nothing", FitConfig(), progress=False)
    run = _copy_run(base, tmp_path / "run")
    with pytest.raises(MemoryLimitError, match="--memory-limit"):
        fit_run(run, FitConfig(**{**CFG, "batch_size": None, "memory_limit": 100 * 2**20}), progress=False)
    with pytest.raises(UsageError, match="--clusters"):
        fit_run(run, FitConfig(**{**CFG, "clusters": 5000}), overwrite=True, progress=False)
    # a store with no usable image
    src = tmp_path / "bad.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("a.jpg", b"nope")
    ingest(IngestConfig(str(src), workers=1), tmp_path / "empty", progress=False)
    with pytest.raises(UsageError, match="0 usable"):
        fit_run(tmp_path / "empty", FitConfig(), progress=False)
    assert main(["fit", str(tmp_path / "empty"), "--quiet"]) == 2


def _fit_cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "streamclust", "fit", str(run), "--pca-components", "12", "--clusters", "6",
            "--gmm-components", "4", "--seed", "1", "--batch-size", "20", "--max-iter", "30", "--quiet"]


def _kill_in_turn(cmd: list[str], env: dict, state: Path, targets, *, settle: float = 0.0, timeout: float = 60):
    """Start ``cmd`` once per target and SIGKILL it when ``state / target`` appears; the kills made."""
    kills, seen = [], set()
    for target in targets:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not (state / target).exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            time.sleep(settle)
            seen |= {p.name for p in state.glob("fit-*")}
            os.kill(proc.pid, signal.SIGKILL)
            kills.append(target)
        proc.wait()
    return kills, seen


def _assert_same_models(ref: Path, run: Path, names) -> None:
    for name in names:
        a = np.load(ref / "model" / f"{name}.npz", allow_pickle=False)
        b = np.load(run / "model" / f"{name}.npz", allow_pickle=False)
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


def test_sigkill_and_resume_fit_equals_an_unbroken_fit(ingested, tmp_path):
    _, base = ingested
    ref = _copy_run(base, tmp_path / "ref")
    run = _copy_run(base, tmp_path / "run")
    env = {**os.environ, "STREAMCLUST_CHECKPOINT_SECONDS": "0"}
    subprocess.run(_fit_cmd(ref), check=True, env=env)
    state = run / ".streamclust"
    # kill once inside each stage: when its checkpoint (or the features state) first appears
    kills, seen = _kill_in_turn(_fit_cmd(run), env, state, ("fit-pca.ckpt.npz", "fit-features.json",
                                                            "fit-kmeans.ckpt.npz", "fit-gmm.ckpt.npz"), settle=0.05)
    assert len(kills) >= 2
    assert any(name.endswith(".ckpt.npz") for name in seen), seen
    done = subprocess.run(_fit_cmd(run), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_models(ref, run, ("pca", "kmeans", "gmm"))
    np.testing.assert_array_equal(zarr.open_array(ref / "features.zarr")[:], zarr.open_array(run / "features.zarr")[:])
    assert not list(state.glob("*.ckpt.npz"))
    assert not list(run.rglob("*.partial"))


def _methods_cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "streamclust", "fit", str(run), "--pca-components", "12", "--clusters", "3",
            "--gmm-components", "0", "--cluster", "kmeans,agglomerative", "--reduce", "kpca", "--embed", "tsne",
            "--seed", "1", "--batch-size", "20", "--max-iter", "30", "--quiet"]


def test_sigkill_and_resume_of_a_fit_with_the_other_methods(ingested, tmp_path):
    """kernel PCA, agglomerative, the t-SNE map and its k-means resume like the rest."""
    _, base = ingested
    ref = _copy_run(base, tmp_path / "ref")
    run = _copy_run(base, tmp_path / "run")
    env = {**os.environ, "STREAMCLUST_CHECKPOINT_SECONDS": "0"}
    subprocess.run(_methods_cmd(ref), check=True, env=env)
    state = run / ".streamclust"
    # kill inside the new stages: when the stage before each has just completed, and
    # when the first rows of the map have been written
    kills, _ = _kill_in_turn(_methods_cmd(run), env, state, ("fit-kmeans.done", "fit-agglomerative.done",
                                                             "fit-kpca.done", "fit-tsne.done", "fit-embedding.done"),
                             timeout=90)
    assert len(kills) >= 3, kills
    done = subprocess.run(_methods_cmd(run), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_models(ref, run, ("kmeans", "agglomerative", "kpca", "tsne", "tsne_kmeans"))
    np.testing.assert_array_equal(zarr.open_array(ref / "embedding.zarr")[:], zarr.open_array(run / "embedding.zarr")[:])
    assert not list(state.glob("*.ckpt.npz"))
    assert not list(run.rglob("*.partial"))


# ------------------------------------------------------------- the variance asked for
def test_a_fraction_keeps_as_many_components_as_it_needs(ingested, tmp_path):
    """No hidden cap: 0.99 of the variance is reached, with the count scikit-learn's PCA keeps."""
    from sklearn.decomposition import PCA

    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    summary = fit_run(run, FitConfig(pca_components=0.99, clusters=3, gmm_components=2, seed=1, max_iter=30),
                      progress=False)
    pca = load_model(run / "model" / "pca.npz")
    rows = ok_rows(run)
    X = zarr.open_array(run / "images.zarr")[:][rows].reshape(len(rows), -1).astype(np.float64)
    ref = PCA(0.99, svd_solver="full").fit(X)
    assert pca.n_components_ == ref.n_components_  # fewer images than pixels: the sketch spans them all
    np.testing.assert_allclose(pca.explained_variance_ratio_, ref.explained_variance_ratio_, atol=1e-6)
    assert summary.notes == []
    saved = json.loads((run / "fit_summary.json").read_text())
    assert saved["pca"]["requested"] == 0.99 and saved["pca"]["reached"] > 0.99
    assert saved["pca"]["n_components"] == ref.n_components_ and saved["notes"] == []


def test_a_cap_short_of_the_fraction_is_said_everywhere(ingested, tmp_path, capsys):
    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    rc = main(["fit", str(run), "--pca-components", "0.99", "--pca-max-components", "5", "--clusters", "3",
               "--gmm-components", "2", "--max-iter", "30", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "asked 0.99 of the variance, reached 0." in out and "with 5 components" in out
    assert "--pca-max-components 5 stops it; raise --pca-max-components (or leave it out)" in out
    saved = json.loads((run / "fit_summary.json").read_text())
    assert saved["pca"]["limited_by"] == "--pca-max-components 5" and saved["pca"]["reached"] < 0.99
    assert len(saved["notes"]) == 1 and "asked 0.99" in saved["notes"][0]
    # said again when the complete fit is re-run, and in the report
    assert main(["fit", str(run), "--pca-components", "0.99", "--pca-max-components", "5", "--clusters", "3",
                 "--gmm-components", "2", "--max-iter", "30", "--quiet"]) == 0
    assert "asked 0.99 of the variance" in capsys.readouterr().out
    from streamclust.pipeline.assign import assign_run
    from streamclust.report import build_report

    assign_run(run, progress=False)
    html = Path(build_report(run, progress=False)).read_text()
    assert "asked 0.99 of the variance, reached 0." in html


@pytest.mark.parametrize(("args", "needle"), [
    (["--pca-components", "100000"], "--pca-components 100000 is more than min(images, pixels) = 400"),
    (["--pca-components", "300", "--memory-limit", "370MB"], "components fit: pass --pca-components"),
    (["--pca-components", "0.99", "--pca-method", "covariance", "--memory-limit", "360MB"],
     "the exact covariance PCA of 432 pixels needs about"),
])
def test_pca_requests_that_cannot_be_met_are_refused_before_any_write(ingested, tmp_path, capsys, args, needle):
    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    before = (run / "config.json").read_text()
    rc = main(["fit", str(run), *args, "--clusters", "3", "--gmm-components", "2", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert (run / "config.json").read_text() == before and not (run / "model").exists()


def test_a_full_covariance_mixture_that_cannot_fit_is_refused_with_the_fix(ingested, tmp_path, capsys):
    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    before = (run / "config.json").read_text()
    rc = main(["fit", str(run), "--pca-components", "300", "--covariance", "full", "--gmm-components", "50",
               "--clusters", "3", "--memory-limit", "450MB", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "full covariances of 300 dimensions need about" in err and "--gmm-pca-components" in err
    assert (run / "config.json").read_text() == before and not (run / "model").exists()


def test_the_progress_says_how_long_a_stage_may_take(monkeypatch, caplog):
    import logging

    from streamclust.pipeline import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bars = progress.PassBars("k-means", False, max_passes=10)
    with caplog.at_level(logging.INFO, logger="streamclust"):
        bars("Lloyd iteration 1", 10, 100)
        now[0] = 1.0
        assert bars.estimate(50, 100) == pytest.approx(1.0 + 2.0 * 9)  # half a pass in 1 s: 2 s a pass
        now[0] = 3.0
        bars("Lloyd iteration 1", 100, 100)  # the first pass took 3 s: said once
        bars("Lloyd iteration 2", 10, 100)
        now[0] = 4.0
        assert bars.estimate(50, 100) == pytest.approx(1.0 + 3.0 * 8)  # from the passes done: 3 s a pass
    assert "k-means: about 3 s a pass, at most 10 passes: up to 27 s" in caplog.text
    bars.close()


def test_a_refused_fit_saves_no_settings_so_the_corrected_one_runs(ingested, tmp_path, capsys):
    """`fit --clusters 1000` refused, then `fit --clusters 5`: not refused as 'other settings'."""
    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    before = (run / "config.json").read_text()
    assert main(["fit", str(run), "--clusters", "1000", "--gmm-components", "2", "--quiet"]) == 2
    assert "--clusters 1000 is more than the 400 usable images" in capsys.readouterr().err
    assert (run / "config.json").read_text() == before
    assert main(["fit", str(run), "--pca-components", "5", "--clusters", "5", "--gmm-components", "2",
                 "--max-iter", "30", "--quiet"]) == 0


def test_a_fit_with_other_settings_is_refused_naming_each_then_and_now(ingested, tmp_path, capsys):
    """`fit RUN` without the flags the run was fitted with: the refusal says which settings
    differ, what they were and what they are now, and how to go on."""
    _, base = ingested
    run = _copy_run(base, tmp_path / "run")
    assert main(["fit", str(run), "--pca-components", "5", "--clusters", "5", "--gmm-components", "2",
                 "--max-iter", "30", "--quiet"]) == 0
    before = (run / "config.json").read_text()
    assert main(["fit", str(run), "--pca-components", "5", "--clusters", "7", "--gmm-components", "2",
                 "--max-iter", "30", "--covariance", "spherical", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "clusters 5 then, 7 now; covariance diag then, spherical now" in err
    assert "leave those flags out to resume or reuse it" in err and "--overwrite" in err
    assert (run / "config.json").read_text() == before
