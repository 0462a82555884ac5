"""Flags and config.json are checked whole before anything is written or deleted: one line, exit 2, no change."""

from __future__ import annotations

import json

import pytest

from streamclust import Run
from streamclust.cli import main
from streamclust.errors import RunDirError, UsageError

from .snapshots import FIT, INGEST, copy_run, make_run, snapshot


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("validation"))


def _refused(capsys, args, *needles) -> str:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse refuses a flag itself
        code = exc.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], lines
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["fit", "RUN", "--pca-components", "100000", "--overwrite"], "--pca-components 100000"),
    (["fit", "RUN", "--seed", "-1", "--overwrite"], "--seed"),
    (["fit", "RUN", "--seed", "4294967296", "--overwrite"], "--seed"),
    (["fit", "RUN", "--clusters", "1000", "--overwrite"], "--clusters 1000"),
    (["select-k", "RUN", "--k", "2:3:1", "--seed", "-1"], "--seed"),
    (["sample", "RUN", "--seed", "-1"], "--seed"),
    (["sample", "RUN", "-n", "100000000"], "-n 100000000"),
    (["report", "RUN", "--seed", "-1"], "--seed"),
    (["compare", "RUN", "--seed", "-1"], "--seed"),
    (["train", "RUN", "--seed", "-1"], "--seed"),
    (["ingest", "SRC", "RUN", "--size", "8", "--chunk-size", "1000000000", "--overwrite"], "--chunk-size"),
    (["ingest", "SRC", "RUN", "--size", "8", "--max-aspect", "inf", "--overwrite"], "--max-aspect"),
    (["ingest", "SRC", "RUN", "--size", "8", "--max-aspect", "nan", "--overwrite"], "--max-aspect"),
    (["run", "SRC", "RUN", "--size", "8", "--chunk-size", "1000000000", "--overwrite"], "--chunk-size"),
    (["run", "SRC", "RUN", "--size", "8", "--seed", "-1", "--overwrite"], "--seed"),
])
def test_a_bad_flag_on_a_finished_run_changes_nothing(finished, tmp_path, capsys, args, needle):
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    before = snapshot(run)
    _refused(capsys, [src if a == "SRC" else run if a == "RUN" else a for a in args], needle)
    assert snapshot(run) == before


@pytest.mark.parametrize("args", [
    ["ingest", "SRC", "RUN", "--chunk-size", "1000000000"],
    ["ingest", "SRC", "RUN", "--max-aspect", "inf"],
    ["run", "SRC", "RUN", "--max-aspect", "inf"],
    ["run", "SRC", "RUN", "--seed", "-1"],
])
def test_a_bad_flag_on_a_new_run_creates_nothing(finished, tmp_path, capsys, args):
    src, _ = finished
    _refused(capsys, [src if a == "SRC" else tmp_path / "new" / "run" if a == "RUN" else a for a in args])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", [["ingest", "SRC", "RUN", *INGEST], ["fit", "RUN", *FIT],
                                     ["run", "SRC", "RUN", *INGEST], ["assign", "RUN"]])
def test_a_run_dir_under_a_regular_file_is_refused(finished, tmp_path, capsys, command):
    src, _ = finished
    (tmp_path / "afile").write_text("not a folder")
    before = snapshot(tmp_path)
    run = tmp_path / "afile" / "run"
    _refused(capsys, [src if a == "SRC" else run if a == "RUN" else a for a in command], "is a file")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("text,needle", [
    ("{ garbage", "not valid JSON"),
    ("[1, 2]", "not an object"),
    ('{"fit": "clusters=5"}', "fit are not JSON objects"),
    ("\udcff", "not UTF-8"),
])
@pytest.mark.parametrize("command", [["fit", "RUN", *FIT, "--overwrite"], ["assign", "RUN"],
                                     ["ingest", "SRC", "RUN", *INGEST, "--overwrite"], ["report", "RUN"],
                                     ["select-k", "RUN", "--k", "2:3:1"]])
def test_a_damaged_config_json_is_refused_before_any_write(finished, tmp_path, capsys, text, needle, command):
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    (run / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    before = snapshot(run)
    line = _refused(capsys, [src if a == "SRC" else run if a == "RUN" else a for a in command], "config.json",
                    "damaged", needle)
    assert "--overwrite" in line  # how to start again
    assert snapshot(run) == before


def test_after_a_refused_fit_the_corrected_one_runs(finished, tmp_path, capsys):
    """Issue 16 item 8: the refused settings must not have been saved."""
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    _refused(capsys, ["fit", run, "--clusters", "1000", "--overwrite"], "--clusters 1000")
    assert main(["fit", str(run), *FIT[:-1], "--clusters", "5", "--overwrite", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["fit"]["clusters"] == 5


def test_the_api_checks_settings_before_any_write(finished, tmp_path):
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(UsageError, match="seed"):
        Run(run).fit(pca_components=4, clusters=3, gmm_components=2, seed=-1, overwrite=True)
    with pytest.raises(UsageError, match="seed"):
        Run(run).sample(4, seed=-1)
    with pytest.raises(UsageError, match="max-aspect"):
        Run(run).ingest(src, size=8, max_aspect=float("inf"), overwrite=True)
    (run / "config.json").write_text("{")
    with pytest.raises(RunDirError, match="damaged"):
        Run(run).assign()
    (run / "config.json").write_bytes((base / "config.json").read_bytes())
    assert snapshot(run) == before


@pytest.mark.parametrize("call", [
    lambda r: r.fit(pca_components=4, clusters=3, gmm_components=2, seed=-1, overwrite=True),
    lambda r: r.select_k("2:3:1", seed=-1),
    lambda r: r.sample(4, seed=-1),
    lambda r: r.compare(seed=-1),
    lambda r: r.report(seed=-1),
    lambda r: r.train(seed=-1, epochs=1),
], ids=["fit", "select_k", "sample", "compare", "report", "train"])
def test_every_api_seed_is_checked_before_any_write(finished, tmp_path, call):
    _, base = finished
    run = copy_run(base, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(UsageError, match="seed"):
        call(Run(run))
    assert snapshot(run) == before
