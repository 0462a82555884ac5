"""assign, sample and evaluate on a small digits run."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from streamclust.cli import main
from streamclust.config import FitConfig, IngestConfig
from streamclust.demo import make_digits_archive
from streamclust.errors import StageNotDoneError, UsageError
from streamclust.ingest import ingest
from streamclust.models.io import load_model
from streamclust.pipeline.assign import assign_run, read_assignments
from streamclust.pipeline.evaluate import best_match_accuracy, evaluate_run, score_labels
from streamclust.pipeline.fit import fit_run
from streamclust.pipeline.sample import sample_images, sample_run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    src = make_digits_archive(tmp / "digits.zip")
    run = tmp / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    fit_run(run, FitConfig(pca_components=20, clusters=10, gmm_components=10, covariance="diag", seed=0),
            progress=False)
    assign_run(run, progress=False)
    return src, run


def test_assign_has_one_sorted_row_per_ok_image_consistent_with_the_fit(digits_run):
    _, run = digits_run
    a = read_assignments(run)
    assert len(a["index"]) == 1797 and np.all(np.diff(a["index"]) > 0)
    km = load_model(run / "model" / "kmeans.npz")
    fit_rows = np.load(run / "model" / "fit_rows.npy")
    pos = np.searchsorted(a["index"], fit_rows)
    np.testing.assert_array_equal(a["cluster"][pos], km.labels_)
    assert np.all(a["distance"] >= 0) and np.all(np.isfinite(a["log_likelihood"]))
    assert set(a["component"]) <= set(range(10))
    with open(run / "assignments.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[:2] == ["index", "member"] and {"cluster", "distance", "component", "log_likelihood"} <= set(header)


def test_best_match_accuracy_hand_computed():
    # clusters 0,1,2 vs labels a,b: the best one-to-one matching is 1->a (3), 0->b (2): 5/8 correct
    y = ["a", "a", "a", "a", "b", "b", "b", "b"]
    p = [1, 1, 1, 0, 0, 0, 2, 2]
    assert best_match_accuracy(y, p) == pytest.approx(5 / 8)
    # two classes, two clusters: max(acc, 1 - acc), whatever the cluster names
    y2 = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert best_match_accuracy(y2, [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]) == pytest.approx(0.8)
    assert best_match_accuracy(y2, [0, 0, 1, 1, 1, 1, 1, 1, 1, 0]) == pytest.approx(0.8)
    s = score_labels(y2, y2)
    assert s == {"ari": 1.0, "nmi": 1.0, "homogeneity": 1.0, "completeness": 1.0, "accuracy": 1.0}


def test_evaluate_digits_with_labels_file_and_folders(digits_run, capsys):
    src, run = digits_run
    res = evaluate_run(run, labels=str(src) + ".labels.csv")
    assert res["n_labelled"] == 1797 and res["n_classes"] == 10
    assert res["methods"]["kmeans"]["ari"] > 0.5 and res["methods"]["kmeans"]["accuracy"] > 0.7
    assert res["methods"]["gmm"]["nmi"] > 0.5
    res2 = evaluate_run(run, from_folders=True)  # members are digits/<label>/<n>.png
    assert res2["methods"]["kmeans"] == res["methods"]["kmeans"]
    assert main(["evaluate", str(run), "--labels-from-folders"]) == 0
    out = capsys.readouterr().out
    assert "kmeans" in out and "accuracy" in out
    with pytest.raises(UsageError, match="member,label"):
        bad = run.parent / "bad.csv"
        bad.write_text("name,class\na,1\n")
        evaluate_run(run, labels=bad)


def test_sample_decodes_mixture_samples_to_images(digits_run, tmp_path):
    _, run = digits_run
    imgs, comp = sample_images(run, 12, seed=3)
    assert imgs.shape == (12, 8, 8, 3) and imgs.dtype == np.uint8 and comp.shape == (12,)
    again, _ = sample_images(run, 12, seed=3)
    np.testing.assert_array_equal(imgs, again)
    assert imgs.std() > 5  # not blank
    out = sample_run(run, 16, out=tmp_path / "s.png", npy=tmp_path / "s.npy")
    with Image.open(out) as im:
        assert im.size[0] > 8 * 4
    assert np.load(tmp_path / "s.npy", allow_pickle=False).shape == (16, 8, 8, 3)


def test_commands_before_their_stage_say_what_to_run(digits_run, tmp_path, capsys):
    _, run = digits_run
    fresh = tmp_path / "fresh"
    shutil.copytree(run, fresh, ignore=shutil.ignore_patterns("model", "features.zarr", "assignments.csv"))
    for name in ("fit.done", "fit-pca.done", "fit-features.done", "fit-kmeans.done", "fit-gmm.done", "assign.done"):
        (fresh / ".streamclust" / name).unlink(missing_ok=True)
    assert main(["assign", str(fresh)]) == 2
    assert "streamclust fit" in capsys.readouterr().err
    assert main(["sample", str(fresh)]) == 2
    assert "streamclust fit" in capsys.readouterr().err
    assert main(["evaluate", str(fresh), "--labels-from-folders"]) == 2
    assert "streamclust assign" in capsys.readouterr().err
    with pytest.raises(StageNotDoneError):
        read_assignments(fresh)
