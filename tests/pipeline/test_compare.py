"""streamclust compare on a small digits run with every method fitted."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import zarr

from streamclust.config import FitConfig, IngestConfig
from streamclust.demo import make_digits_archive
from streamclust.errors import StageNotDoneError, UsageError
from streamclust.ingest import ingest
from streamclust.ingest.manifest import read_manifest
from streamclust.models import StreamingKMeans
from streamclust.models.agglomerative import StreamingAgglomerative
from streamclust.models.io import load_model, save_model
from streamclust.models.kpca import StreamingKernelPCA
from streamclust.pipeline.compare import COMPARE_COLUMNS, compare_run, compare_runs, format_compare
from streamclust.pipeline.evaluate import score_labels
from streamclust.pipeline.fit import fit_run
from streamclust.store import ok_rows


def fit_extra_methods(run, *, tsne: bool):
    """What the pipeline is expected to write: kpca.npz, agglomerative.npz, tsne.npz, embedding.zarr,
    tsne_kmeans.npz (all fitted on features.zarr, in the order of model/fit_rows.npy)."""
    feats = zarr.open_array(str(run / "features.zarr"), mode="r")
    model = run / "model"
    agg = StreamingAgglomerative(10, n_subclusters=300, batch_size=512, random_state=0).fit(feats)
    save_model(agg, model / "agglomerative.npz")
    kpca = StreamingKernelPCA(8, gamma="scale", n_landmarks=400, fit_inverse_transform=True, batch_size=512,
                              random_state=0).fit(feats)
    save_model(kpca, model / "kpca.npz")
    if tsne:
        from streamclust.models.embed import StreamingTSNE, embed_to_zarr

        scores = kpca.transform(feats)
        ts = StreamingTSNE(sample_size=600, n_iter=150, early_exaggeration_iter=60, transform_n_iter=40,
                           batch_size=600, random_state=0).fit(scores)
        save_model(ts, model / "tsne.npz")
        emb = embed_to_zarr(ts, scores, run / "embedding.zarr")
        km = StreamingKMeans(10, method="lloyd", batch_size=600, random_state=0).fit(emb)
        save_model(km, model / "tsne_kmeans.npz")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    src = make_digits_archive(tmp / "digits.zip")
    run = tmp / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    fit_run(run, FitConfig(pca_components=20, clusters=10, gmm_components=10, covariance="diag", seed=0),
            progress=False)
    return src, run


def test_compare_without_the_optional_methods_then_with_them(digits_run):
    src, run = digits_run
    rows = compare_run(run, labels=str(src) + ".labels.csv")
    assert [r["method"] for r in rows] == ["kmeans", "gmm"]
    assert [r["features"] for r in rows] == ["pixels", "pixels"] and "run" not in rows[0]
    with pytest.raises(UsageError, match="'agglomerative' was not fitted"):
        compare_run(run, methods=["agglomerative"])
    pytest.importorskip("openTSNE")
    fit_extra_methods(run, tsne=True)
    rows = compare_run(run, labels=str(src) + ".labels.csv", sample=500)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["kmeans", "gmm", "agglomerative", "tsne_kmeans"]

    # the figures are those computed directly
    fit_rows = np.load(run / "model" / "fit_rows.npy")
    km = load_model(run / "model" / "kmeans.npz")
    with open(str(src) + ".labels.csv", newline="") as fh:
        members = {r["member"]: r["label"] for r in csv.DictReader(fh)}
    names = {int(r["index"]): r["member"] for r in read_manifest(run / "manifest.csv") if r["status"] == "ok"}
    y = np.array([members[names[int(i)]] for i in fit_rows])
    expect = score_labels(y, km.labels_)
    for key in ("ari", "nmi", "accuracy"):
        assert by["kmeans"][key] == pytest.approx(expect[key])
    assert by["kmeans"]["inertia"] == pytest.approx(km.inertia_)
    pca = load_model(run / "model" / "pca.npz")
    rows_all = ok_rows(run, drop_duplicates=False)
    X = zarr.open_array(str(run / "images.zarr"))[:][rows_all].reshape(len(rows_all), -1).astype(np.float64)
    F = pca.transform(X).astype(np.float32).astype(np.float64)
    assert by["kmeans"]["recon_mae"] == pytest.approx(np.abs(pca.inverse_transform(F) - X).mean(), rel=1e-9)
    assert by["gmm"]["recon_mae"] == by["kmeans"]["recon_mae"]
    assert by["gmm"]["log_likelihood"] is not None and by["gmm"]["inertia"] is None
    assert by["tsne_kmeans"]["reduction"] == "kpca"
    assert 0 < by["tsne_kmeans"]["recon_mae"] < 255
    assert by["agglomerative"]["ari"] > 0.5 and by["tsne_kmeans"]["accuracy"] > 0.5
    for r in rows:
        assert -1 <= r["silhouette"] <= 1 and r["n_clusters"] == 10

    # CSV and terminal table
    with open(run / "compare.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert tuple(table[0]) == COMPARE_COLUMNS and len(table) == 5
    assert {line[COMPARE_COLUMNS.index("features")] for line in table[1:]} == {"pixels"}
    text = format_compare(rows)
    assert "agglomerative" in text and "tsne_kmeans" in text and "ARI" in text

    # from folders: the same labels; without labels: no label columns
    folder_rows = compare_run(run, from_folders=True, methods=["agglomerative"], sample=500)
    assert folder_rows[0]["ari"] == pytest.approx(by["agglomerative"]["ari"])
    plain = compare_run(run, methods=["kmeans"])
    assert plain[0]["ari"] is None and "ARI" not in format_compare(plain)


def test_compare_runs_puts_the_runs_in_one_table(digits_run, tmp_path, capsys):
    from streamclust.cli import main

    src, run = digits_run
    other = tmp_path / "other"
    shutil.copytree(run, other)
    rows = compare_runs([run, other], methods=["kmeans"], sample=300)
    assert [(r["run"], r["method"], r["features"]) for r in rows] == [(run.name, "kmeans", "pixels"),
                                                                      ("other", "kmeans", "pixels")]
    assert {k: v for k, v in rows[0].items() if k != "run"} == compare_run(run, methods=["kmeans"], sample=300)[0]
    lines = format_compare(rows).splitlines()
    assert lines[0].split()[:3] == ["run", "method", "features"] and lines[2].startswith(run.name)
    assert format_compare(compare_run(run, methods=["kmeans"], sample=300)).startswith("method")  # one run
    # two runs of the same name: each is shown by the path given
    twin = tmp_path / "b" / run.name
    shutil.copytree(run, twin)
    assert [r["run"] for r in compare_runs([run, twin], methods=["kmeans"], sample=300)] == [str(run), str(twin)]
    # the command line takes several run directories
    assert main(["compare", str(run), str(other), "--sample", "300", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run") and "\nother " in out and f"\n{run.name} " in out
    with pytest.raises(UsageError, match="at least one"):
        compare_runs([])


def test_compare_errors(digits_run, tmp_path):
    src, run = digits_run
    with pytest.raises(UsageError, match="unknown method 'spectral'"):
        compare_run(run, methods=["spectral"])
    with pytest.raises(UsageError, match="not both"):
        compare_run(run, labels=str(src) + ".labels.csv", from_folders=True)
    with pytest.raises(StageNotDoneError):
        compare_run(tmp_path / "missing")
    with pytest.raises(UsageError, match="sample"):
        compare_run(run, sample=1)


def test_fit_flags_fit_the_other_methods_and_compare_shows_them(tmp_path, capsys):
    pytest.importorskip("openTSNE")
    from streamclust.cli import main

    src = make_digits_archive(tmp_path / "digits.zip")
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    args = ["fit", str(run), "--pca-components", "20", "--clusters", "10", "--gmm-components", "5",
            "--reduce", "kpca", "--kpca-components", "10", "--embed", "tsne",
            "--cluster", "kmeans,gmm,agglomerative", "--quiet"]
    assert main(args) == 0
    for name in ("kpca", "agglomerative", "tsne", "tsne_kmeans"):
        assert (run / "model" / f"{name}.npz").exists(), name
    assert zarr.open_array(str(run / "embedding.zarr")).shape == (1797, 2)
    capsys.readouterr()
    assert main(["compare", str(run), "--labels", str(src) + ".labels.csv", "--sample", "300", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "agglomerative" in out and "tsne_kmeans" in out
    assert main(["fit", str(run), "--cluster", "kmeans,nope", "--quiet"]) == 2
