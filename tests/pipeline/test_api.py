"""`streamclust.Run`: the Python face of the commands (same files, results as objects, notebook display)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamclust import Run, StreamingGaussianMixture, StreamingKMeans, StreamingPCA, stages
from streamclust.cli import main
from streamclust.demo import make_digits_archive
from streamclust.errors import ConfigMismatchError, StageNotDoneError, UsageError
from streamclust.store import RunLayout

FIT_FLAGS = ["--pca-components", "8", "--clusters", "6", "--gmm-components", "3"]
FIT = dict(pca_components=8, clusters=6, gmm_components=3)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    src = make_digits_archive(tmp / "digits.zip")
    return src, Path(str(src) + ".labels.csv")


def _strip_times(value):
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if k not in ("seconds", "resumed_from")}
    return value


def _files(root: Path) -> dict[str, bytes]:
    """Every file a run wrote, but markers (fresh tokens) and the report page (a time stamp);
    JSON and compare.csv without their timings."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.endswith(".done") or rel == "report/index.html":
            continue
        data = p.read_bytes()
        if rel == "compare.csv":  # its last column is the fit's time
            data = b"\n".join(line.rsplit(b",", 1)[0] for line in data.splitlines())
        if p.suffix == ".json" and not rel.endswith("zarr.json"):
            data = json.dumps(_strip_times(json.loads(data)), sort_keys=True).encode()
        out[rel] = data
    return out


@pytest.fixture(scope="module")
def both(digits, tmp_path_factory):
    """The same run made by the commands and by the Run methods."""
    src, labels = digits
    tmp = tmp_path_factory.mktemp("both")
    cli, py = tmp / "cli", tmp / "py"
    for args in (["ingest", str(src), str(cli), "--size", "8", "--workers", "1"],
                 ["fit", str(cli), *FIT_FLAGS], ["assign", str(cli)], ["select-k", str(cli), "--k", "2:4"],
                 ["sample", str(cli), "-n", "16"], ["evaluate", str(cli), "--labels", str(labels)],
                 ["compare", str(cli), "--labels", str(labels), "--sample", "300"],
                 ["report", str(cli), "--tsne-samples", "100"]):
        assert main([*args, "--quiet"]) == 0, args
    run = Run(py, progress=False)
    results = {
        "ingest": run.ingest(src, size=8, workers=1),
        "fit": run.fit(**FIT),
        "assign": run.assign(),
        "select_k": run.select_k(range(2, 5)),
        "sample": run.sample(16),
        "evaluate": run.evaluate(labels),
        "compare": run.compare(labels=labels, sample=300),
        "report": run.report(tsne_samples=100),
    }
    return cli, run, results


def test_a_run_method_and_its_command_write_identical_files(both):
    cli, run, _ = both
    a, b = _files(cli), _files(run.path)
    assert sorted(a) == sorted(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, differ
    assert run.status() == stages.statuses(RunLayout.of(cli))
    assert all(v == stages.CURRENT for k, v in run.status().items() if not k.startswith(("train", "encode")))


def test_results_are_objects_a_notebook_uses(both):
    _, run, r = both
    assert r["ingest"].ok == 1797
    fit = r["fit"]
    assert isinstance(fit.pca, StreamingPCA) and isinstance(fit.kmeans, StreamingKMeans)
    assert isinstance(fit.gmm, StreamingGaussianMixture) and fit.pca.n_components_ == 8
    df = r["assign"]
    assert isinstance(df, pd.DataFrame) and len(df) == 1797
    assert list(df.columns[:4]) == ["index", "member", "duplicate_of", "cluster"]
    assert df["cluster"].between(0, 5).all()
    sk = r["select_k"]
    assert list(sk.table["k"]) == [2, 3, 4] and set(sk.picked) == {"bic", "aic", "heldout_loglik"}
    samples = r["sample"]
    assert np.asarray(samples).shape == (16, 8, 8, 3) and np.asarray(samples).dtype == np.uint8
    assert r["evaluate"].table.loc["kmeans", "ari"] > 0.3
    assert set(r["compare"]["method"]) == {"kmeans", "gmm"}
    assert Path(r["report"]).name == "index.html"
    # the notebook display: summary, what is fitted, montages and the curve inline
    page = run._repr_html_()
    assert "1797" in page and "current" in page and "data:image/png;base64" in page
    for name in ("fit", "select_k", "sample", "evaluate", "report"):
        assert r[name]._repr_html_().startswith("<"), name
    assert "data:image/png;base64" in sk._repr_html_() and "data:image/png;base64" in samples._repr_html_()


def test_run_has_the_commands_errors_and_resume(digits, tmp_path):
    src, _ = digits
    run = Run(tmp_path / "run", progress=False)
    with pytest.raises(StageNotDoneError, match="streamclust ingest"):
        run.fit(**FIT)
    with pytest.raises(UsageError, match="--size"):
        run.ingest(src, size=0)
    with pytest.raises(UsageError, match="no setting"):
        run.ingest(src, sise=8)
    assert not run.path.exists()
    run.ingest(src, size=8, workers=1)
    assert run.ingest(src, size=8, workers=1).already_complete
    with pytest.raises(ConfigMismatchError, match="overwrite"):
        run.ingest(src, size=6, workers=1)
    run.fit(**FIT)
    assert not run.fit(**FIT).summary.seconds  # resumed: already complete
    with pytest.raises(ConfigMismatchError, match="--overwrite"):
        run.fit(**{**FIT, "clusters": 4})
    with pytest.raises(UsageError, match="--pca-components"):
        run.fit(pca_components=1.5)
    run.assign()
    run.evaluate(from_folders=True)
    run.assign()  # again: the evaluation was of the old assignments
    assert run.status()["evaluate"] == stages.STALE
    assert "Stale" in run._repr_html_()
