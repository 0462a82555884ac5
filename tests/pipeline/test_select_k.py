"""`select-k`: shared passes give exactly the separate fits; criteria, picks, files, resume, errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.metrics import calinski_harabasz_score

from streamclust.cli import main
from streamclust.engine import Checkpointer, CombinedPlan, RowSource, run_passes
from streamclust.errors import ConfigMismatchError, ConvergenceError, StageNotDoneError, UsageError
from streamclust.models import StreamingGaussianMixture, StreamingKMeans, fit_streaming
from streamclust.pipeline import select_k as sk
from streamclust.pipeline.select_k import (
    CSV_COLUMNS,
    calinski_harabasz_streaming,
    candidate_estimator,
    fit_candidates,
    heldout_split,
    parse_k_range,
    read_csv,
    select_k_run,
)

GMM_ATTRS = ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_", "n_iter_", "converged_")
KM_ATTRS = ("cluster_centers_", "labels_", "inertia_", "cluster_sizes_", "n_iter_")


def _blobs(n=600, d=4, centres=4, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    C = rng.normal(scale=6.0, size=(centres, d))
    return (C[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


def _zarr(X, chunk=64):
    z = zarr.create_array(store={}, shape=X.shape, chunks=(chunk, X.shape[1]), dtype=X.dtype)
    z[:] = X
    return z


def _fake_run(root: Path, X: np.ndarray, chunk=64, **fit_cfg) -> Path:
    """A run directory as `fit` leaves it, as far as select-k reads it."""
    root.mkdir(parents=True)
    z = zarr.create_array(store=str(root / "features.zarr"), shape=X.shape, chunks=(chunk, X.shape[1]),
                          dtype="float32")
    z[:] = X
    cfg = {"fit": {"seed": 0, "max_iter": 100, "covariance": "diag", **fit_cfg}}
    (root / "config.json").write_text(json.dumps(cfg))
    (root / ".streamclust").mkdir()
    (root / ".streamclust" / "fit.done").write_text("done\n")
    return root


# --------------------------------------------------------------------------------------
# k specs


def test_parse_k_range_forms():
    assert parse_k_range("10:200:10") == list(range(10, 201, 10))
    assert parse_k_range("2:9:3") == [2, 5, 8]  # 9 is off the grid
    assert parse_k_range("3:5") == [3, 4, 5]
    assert parse_k_range("5") == [5]
    assert parse_k_range(" 8,2,4,2 ") == [2, 4, 8]
    assert parse_k_range("1") == [1]
    assert parse_k_range([3, 1]) == [1, 3]


@pytest.mark.parametrize("spec", ["0:5", "5:2", "1:10:0", "1:10:-2", "1.5", "2:4.0", "a", "", "2,,3", "-1", "0",
                                  "1:2:3:4", "1:100000"])
def test_parse_k_range_errors_are_one_line(spec):
    with pytest.raises(UsageError) as info:
        parse_k_range(spec)
    assert "\n" not in str(info.value) and str(info.value)


def test_heldout_split_is_every_tenth_row():
    train, held = heldout_split(25)
    assert_array_equal(held, [9, 19])
    assert np.union1d(train, held).tolist() == list(range(25)) and train.size == 23


# --------------------------------------------------------------------------------------
# shared passes == separate fits (exactly, or to rounding where the E-steps are taken together)


@pytest.mark.parametrize("method,cov", [("gmm", "diag"), ("gmm", "full"), ("kmeans", None)])
def test_shared_passes_equal_separate_fits(method, cov):
    X = _blobs(seed=1, spread=1.5)
    Z = _zarr(X)
    rows = heldout_split(len(X))[0] if method == "gmm" else None
    ks = [1, 2, 3, 5, 8]
    kw = dict(covariance=cov or "diag", seed=3, max_iter=40, batch_size=50)
    shared = [candidate_estimator(method, k, **kw) for k in ks]
    seen = []
    fits = fit_candidates(shared, Z, rows=rows, progress=lambda name, done, n: seen.append(name))
    assert not fits.failed
    n_batches = math.ceil((len(X) if rows is None else rows.size) / 50)
    assert fits.passes * n_batches == len(seen)  # one read per batch per combined pass
    attrs = GMM_ATTRS if method == "gmm" else KM_ATTRS
    n_iters = []
    for k, est in zip(ks, shared):
        ref = candidate_estimator(method, k, **kw)
        with _no_raise():
            fit_streaming(ref, Z, rows=rows)
        for attr in attrs:
            if cov == "diag" and np.asarray(getattr(est, attr)).dtype.kind == "f":
                # the candidates' E-steps are taken together: the same sums in another order
                assert_allclose(getattr(est, attr), getattr(ref, attr), rtol=1e-9, atol=1e-12, err_msg=f"k={k} {attr}")
            else:
                assert_array_equal(getattr(est, attr), getattr(ref, attr), err_msg=f"k={k} {attr}")
        assert est.n_iter_ == ref.n_iter_
        n_iters.append(est.n_iter_)
    assert len(set(n_iters)) > 1  # candidates dropped out at different passes


class _no_raise:
    """Separate fits may not converge within max_iter; select-k records that instead of warning."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


class _FlakyPlan:
    """Two passes; raises ConvergenceError at the end of the first when told to."""

    def __init__(self, fail):
        self.fail, self.n, self.total = fail, 0, 0.0

    def next_pass(self):
        return None if self.n >= 2 else _SumAcc()

    def end_pass(self, acc):
        if self.fail:
            raise ConvergenceError("collapsed")
        self.total += acc.s
        self.n += 1

    def state_dict(self):
        return {"n": np.int64(self.n), "total": np.float64(self.total)}

    def load_state_dict(self, s):
        self.n, self.total = int(s["n"]), float(s["total"])


class _SumAcc:
    name = "sum"

    def __init__(self):
        self.s = 0.0

    def update(self, X, offset):
        self.s += float(X.sum())

    def state_dict(self):
        return {"s": np.float64(self.s)}

    def load_state_dict(self, s):
        self.s = float(s["s"])


def test_combined_plan_drops_a_failing_candidate_and_resumes(tmp_path):
    X = np.arange(20.0).reshape(10, 2)
    plan = CombinedPlan([_FlakyPlan(False), _FlakyPlan(True)], ["a", "b"])
    run_passes(plan, RowSource(X), 3)
    assert plan.plans[0].total == 2 * X.sum() and plan.failed.tolist() == [False, True]
    assert "collapsed" in plan.errors[1] and plan.pass_index == 2
    # the state (failure included) survives a checkpoint
    ck = Checkpointer(tmp_path / "c.npz", key="x", every_seconds=0)
    ck.save(plan, None, 2, 0)
    again = CombinedPlan([_FlakyPlan(False), _FlakyPlan(True)], ["a", "b"])
    _, state, _ = ck.load()
    again.load_state_dict(state)
    assert again.failed.tolist() == [False, True] and "collapsed" in again.errors[1]
    assert again.plans[0].total == 2 * X.sum() and again.next_pass() is None
    with pytest.raises(ValueError, match="distinct"):
        CombinedPlan([_FlakyPlan(False)] * 2, ["a", "a"])


def test_combined_accumulator_forwards_a_read_only_batch():
    class Mutator(_SumAcc):
        def update(self, X, offset):
            X += 1.0

    class P(_FlakyPlan):
        def next_pass(self):
            return None if self.n else Mutator()

    with pytest.raises(ValueError, match="read-only"):
        run_passes(CombinedPlan([P(False)]), RowSource(np.ones((4, 2))), 2)


# --------------------------------------------------------------------------------------
# Calinski-Harabasz in streaming form


@pytest.mark.parametrize("max_iter", [1, 100])
def test_calinski_harabasz_streaming_matches_sklearn(max_iter):
    X = _blobs(n=500, d=3, centres=5, seed=4, spread=2.0).astype(np.float64)
    km = StreamingKMeans(6, method="lloyd", max_iter=max_iter, batch_size=64, random_state=0).fit(X)
    sums = np.zeros_like(km.cluster_centers_)
    np.add.at(sums, km.labels_, X)
    ch = calinski_harabasz_streaming(sums, km.cluster_sizes_, km.cluster_centers_, km.inertia_)
    assert_allclose(ch, calinski_harabasz_score(X, km.labels_), rtol=1e-10)
    # an empty cluster is left out, as sklearn counts only the labels present
    labels = np.where(km.labels_ == 5, 0, km.labels_)
    sums = np.zeros_like(sums)
    np.add.at(sums, labels, X)
    sizes = np.bincount(labels, minlength=6)
    centres = sums / np.maximum(sizes, 1)[:, None]
    inertia = float(np.sum((X - centres[labels]) ** 2))
    assert_allclose(calinski_harabasz_streaming(sums, sizes, centres, inertia),
                    calinski_harabasz_score(X, labels), rtol=1e-10)
    assert math.isnan(calinski_harabasz_streaming(sums[:1], sizes[:1], centres[:1], 1.0))


# --------------------------------------------------------------------------------------
# select_k_run


@pytest.fixture(scope="module")
def blobs():
    return _blobs(n=700, d=5, centres=4, seed=7, spread=0.8)


def test_select_k_gmm_same_bic_as_separate_fits(blobs, tmp_path):
    run = _fake_run(tmp_path / "run", blobs, gmm_pca_components=4)
    res = select_k_run(run, "1:6", seed=2, batch_size=64, progress=False)
    rows = read_csv(run / "select_k.csv")
    assert (run / "select_k.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert [r["k"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows == res["rows"]
    train, held = heldout_split(len(blobs))
    assert res["n_fit_rows"] == train.size and res["n_heldout_rows"] == held.size == 70
    F = blobs[:, :4].astype(np.float64)  # the mixture uses fit's leading gmm_pca_components
    src = RowSource(zarr.open_array(str(run / "features.zarr")), rows=train, columns=4)
    for r in rows:
        ref = StreamingGaussianMixture(r["k"], covariance_type="diag", max_iter=100, batch_size=64, random_state=2)
        with _no_raise():
            fit_streaming(ref, src)
        assert_allclose(r["bic"], ref.bic(F[train]), rtol=1e-12)
        assert_allclose(r["aic"], ref.aic(F[train]), rtol=1e-12)
        assert_allclose(r["heldout_loglik"], ref.score(F[held]), rtol=1e-12)
        assert r["inertia"] is None and r["calinski_harabasz"] is None and r["covariance"] == "diag"
    assert res["picked"] == {"bic": 4, "aic": res["picked"]["aic"], "heldout_loglik": res["picked"]["heldout_loglik"]}
    assert res["picked"]["heldout_loglik"] >= 4
    png = (run / "select_k.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / ".streamclust" / "select-k.done").exists()
    assert not list((run / ".streamclust").glob("select-k*.ckpt.npz"))
    # done: a re-run reads the CSV back
    again = select_k_run(run, [1, 2, 3, 4, 5, 6], seed=2, progress=False)
    assert again["picked"] == res["picked"] and again["rows"] == rows


def test_select_k_kmeans_inertia_and_calinski_harabasz(blobs, tmp_path):
    run = _fake_run(tmp_path / "run", blobs)
    res = select_k_run(run, "2,3,4,6", method="kmeans", seed=1, batch_size=80, progress=False)
    X = blobs.astype(np.float64)
    for r in res["rows"]:
        ref = StreamingKMeans(r["k"], method="lloyd", max_iter=100, batch_size=80, random_state=1).fit(X)
        assert r["inertia"] == ref.inertia_
        assert_allclose(r["calinski_harabasz"], calinski_harabasz_score(X, ref.labels_), rtol=1e-10)
        assert r["bic"] is None and r["covariance"] is None and r["method"] == "kmeans"
    assert res["picked"] == {"calinski_harabasz": 4} and "Calinski-Harabasz" in res["note"]


@pytest.mark.parametrize("phase", ["fit", "score"])
def test_select_k_resumes_after_an_interruption_with_identical_results(blobs, tmp_path, monkeypatch, phase):
    monkeypatch.setattr(sk._fit, "CHECKPOINT_SECONDS", 0.0)  # checkpoint after every batch
    ref_run = _fake_run(tmp_path / "ref", blobs)
    ref = select_k_run(ref_run, "2:5", covariance="full", batch_size=100, progress=False)
    n_fit_batches = math.ceil(630 / 100) * ref["passes"]  # 630 training rows
    n_batches = n_fit_batches + 7  # + the scoring pass over all 700 rows
    stop_after = 10 if phase == "fit" else n_fit_batches + 3
    assert ref["passes"] > 3

    class Stop(Exception):
        pass

    seen = []

    def interrupt(name, done, n):
        seen.append(name)
        if len(seen) == stop_after:
            raise Stop

    run = _fake_run(tmp_path / "run", blobs)
    with pytest.raises(Stop):
        select_k_run(run, "2:5", covariance="full", batch_size=100, progress=interrupt)
    ckpts = sorted(p.name for p in (run / ".streamclust").glob("select-k*.ckpt.npz"))
    assert ckpts == (["select-k.ckpt.npz"] if phase == "fit" else ["select-k-score.ckpt.npz", "select-k.ckpt.npz"])
    assert not (run / "select_k.csv").exists()
    resumed = []
    res = select_k_run(run, "2:5", covariance="full", batch_size=100,
                       progress=lambda name, done, n: resumed.append(name))
    assert len(seen) + len(resumed) == n_batches + 1  # only the interrupted batch is read again
    assert res["rows"] == ref["rows"] and res["picked"] == ref["picked"]
    assert (run / "select_k.csv").read_bytes() == (ref_run / "select_k.csv").read_bytes()


def test_select_k_errors_and_overwrite(blobs, tmp_path, capsys):
    with pytest.raises(StageNotDoneError, match="streamclust fit"):
        select_k_run(tmp_path / "nothing", [2])
    run = _fake_run(tmp_path / "run", blobs[:40])
    with pytest.raises(UsageError, match="more than the 36 training images") as info:
        select_k_run(run, [2, 37])  # 4 of the 40 rows are held out
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="more than the 40 usable images"):
        select_k_run(run, "41", method="kmeans")
    with pytest.raises(UsageError, match="method"):
        select_k_run(run, [2], method="dbscan")
    first = select_k_run(run, [1, 2], batch_size=16, progress=False)
    assert set(first["picked"]) == {"bic", "aic", "heldout_loglik"}
    with pytest.raises(ConfigMismatchError, match="ks differ.*--overwrite"):
        select_k_run(run, [1, 3], progress=False)
    with pytest.raises(ConfigMismatchError, match="covariance, method"):
        select_k_run(run, [1, 2], method="kmeans", progress=False)
    res = select_k_run(run, [2, 3], method="kmeans", overwrite=True, batch_size=16, progress=False)
    assert [r["k"] for r in read_csv(run / "select_k.csv")] == [2, 3] and "calinski_harabasz" in res["picked"]
    # the command line turns them into one line and exit status 2
    assert main(["select-k", str(run), "--k", "0:5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 1" in err
    assert main(["select-k", str(run), "--k", "2:99", "--method", "kmeans", "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the 40" in err
