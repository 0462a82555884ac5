"""The stage graph of a run directory (streamclust.stages): one test per declared edge, and the
stale-output guarantees on real runs."""

import json
import shutil

import pytest

from streamclust import stages
from streamclust.cli import main
from streamclust.config import FitConfig, IngestConfig
from streamclust.demo import make_digits_archive
from streamclust.errors import StageNotDoneError
from streamclust.ingest import ingest
from streamclust.pipeline.assign import assign_run
from streamclust.pipeline.compare import compare_run
from streamclust.pipeline.evaluate import evaluate_run
from streamclust.pipeline.fit import fit_run
from streamclust.pipeline.sample import sample_run
from streamclust.pipeline.select_k import select_k_run
from streamclust.report import build_report
from streamclust.store import RunLayout


def _closure(name: str) -> list[str]:
    """``name`` and every stage it reads, directly or not, in run order."""
    want = {name}
    for s in reversed(list(stages.STAGES)):
        if s in want:
            want.update(stages.reads(s))
    return [s for s in stages.STAGES if s in want]


def _config_for(up: str, down: str) -> dict:
    """A ``config.json`` under which the edge ``up -> down`` holds (conditional edges included)."""
    cfg = {"fit": {"features": "latents" if (up, down) == ("encode", "fit") else "pixels"}}
    if up.startswith("train-") and down == "encode":
        cfg["encode"] = {"model": up.split("-", 1)[1]}
    return cfg


def _fake_stage(layout: RunLayout, name: str) -> None:
    """What stage ``name`` leaves behind, as far as the graph is concerned: its outputs, then its marker."""
    for artefact in stages.artefacts_of(name):
        path = layout.path(artefact)
        if path.suffix in (".zarr",) or artefact.endswith("_dir"):
            path.mkdir(parents=True, exist_ok=True)
            (path / "data").write_text(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
    stages.complete(layout, name)


@pytest.mark.parametrize("up,down", stages.edges(), ids=[f"{u}->{d}" for u, d in stages.edges()])
def test_redoing_an_upstream_stage_makes_the_downstream_stage_stale(tmp_path, up, down):
    layout = RunLayout.of(tmp_path / "run")
    layout.state_dir.mkdir(parents=True)
    layout.config.write_text(json.dumps(_config_for(up, down)))
    for name in _closure(down):
        _fake_stage(layout, name)
    assert stages.status(layout, down) == stages.CURRENT
    assert up in stages.reads(down, json.loads(layout.config.read_text()))

    # the upstream stage completes again (other settings, another result): the downstream one is stale,
    # whatever the code that redid it removed
    stages.complete(layout, up)
    assert stages.status(layout, down) == stages.STALE
    assert stages.stale_because(layout, down) in (up, *stages.downstream(up))  # up, or a stage made from it
    with pytest.raises(StageNotDoneError, match="stale"):
        stages.require(layout, down)

    # and the cascade of a redo removes the downstream stage's marker and outputs
    gone = stages.invalidate(layout, up)
    assert down in gone and up not in gone
    assert stages.status(layout, down) == stages.MISSING
    for artefact in stages.artefacts_of(down):
        assert not layout.path(artefact).exists(), artefact
    for artefact in stages.artefacts_of(up):
        assert layout.path(artefact).exists(), artefact
    with pytest.raises(StageNotDoneError, match="first"):
        stages.require(layout, down)


def test_the_graph_is_declared_once_and_in_order():
    seen = set()
    for name, st in stages.STAGES.items():
        assert set(stages.reads(name)) <= seen, name
        seen.add(name)
    owners = [a for st in stages.STAGES.values() for a in st.writes]
    assert len(owners) == len(set(owners))
    assert set(stages.downstream("ingest")) == set(stages.STAGES) - {"ingest"}
    # a fit on pixels does not read the latents: encoding again leaves it alone
    assert "fit" not in stages.downstream("encode", {"fit": {"features": "pixels"}})
    assert "fit" in stages.downstream("encode", {"fit": {"features": "latents"}})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    src = make_digits_archive(tmp / "digits.zip")
    return src, src.parent / (src.name + ".labels.csv")


FIT = FitConfig(pca_components=8, clusters=6, gmm_components=3)


def _full_run(run, src, labels, size=8):
    ingest(IngestConfig(str(src), size=size, workers=1), run, progress=False)
    fit_run(run, FIT, progress=False)
    assign_run(run, progress=False)
    evaluate_run(run, labels=str(labels))
    compare_run(run, labels=str(labels), sample=200)
    select_k_run(run, [2, 3], progress=False)
    sample_run(run, 16)
    return run


OLD_OUTPUTS = ("evaluation", "compare_csv", "select_k_csv", "select_k_png", "samples", "assignments")


def test_the_report_of_a_reingested_run_shows_nothing_of_the_old_data(digits, tmp_path):
    src, labels = digits
    run = _full_run(tmp_path / "run", src, labels)
    layout = RunLayout.of(run)
    assert all(stages.is_current(layout, s) for s in ("evaluate", "compare", "select-k", "sample"))
    html = build_report(run, progress=False, tsne_samples=100).read_text()
    assert "ARI" in html and 'src="select_k.png"' in html

    ingest(IngestConfig(str(src), size=6, workers=1), run, overwrite=True, progress=False)
    for name in ("fit", "assign", "evaluate", "compare", "select-k", "sample", "report"):
        assert stages.status(layout, name) == stages.MISSING, name
    for artefact in (*OLD_OUTPUTS, "features", "model_dir", "fit_summary", "report_dir"):
        assert not layout.path(artefact).exists(), artefact  # nothing of the old data is left behind
    fit_run(run, FIT, progress=False)
    assign_run(run, progress=False)
    html = build_report(run, progress=False, tsne_samples=100).read_text()
    assert 'src="select_k.png"' not in html and "No select_k.csv" in html
    assert "No compare.csv" in html and "No labels were given" in html
    assert not (run / "report" / "select_k.png").exists()


def test_outputs_made_from_redone_stages_are_stale_and_hidden(digits, tmp_path):
    src, labels = digits
    run = _full_run(tmp_path / "run", src, labels)
    layout = RunLayout.of(run)
    assign_run(run, progress=False)  # the assignments again: the evaluation was made from the old ones
    assert stages.status(layout, "evaluate") == stages.STALE
    assert stages.is_current(layout, "compare") and stages.is_current(layout, "select-k")
    html = build_report(run, progress=False, tsne_samples=100).read_text()
    assert "The evaluation of this run is stale" in html and "Stale" in html
    assert 'src="select_k.png"' in html  # still current: shown

    # a fit with other settings removes everything made from the old models
    fit_run(run, FitConfig(pca_components=6, clusters=5, gmm_components=3), overwrite=True,
            progress=False)
    for artefact in OLD_OUTPUTS:
        assert not layout.path(artefact).exists(), artefact
    for name in stages.downstream("fit"):
        assert stages.status(layout, name) == stages.MISSING, name
    assert main(["report", str(run), "--quiet"]) == 2  # assign first


def test_a_fit_made_stale_by_its_input_refits_on_the_next_fit(digits, tmp_path):
    src, _ = digits
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    fit_run(run, FIT, progress=False)
    layout = RunLayout.of(run)
    fresh = shutil.copytree(run, tmp_path / "copy")
    stages.complete(layout, "ingest")  # as if the images were ingested again
    assert stages.status(layout, "fit") == stages.STALE
    with pytest.raises(StageNotDoneError, match="stale"):
        assign_run(run, progress=False)
    assert fit_run(run, FIT, progress=False).seconds  # fitted again, not "already complete"
    assert stages.is_current(layout, "fit")
    assert not fit_run(fresh, FIT, progress=False).seconds
