"""`streamclust run`: every stage in one command, resumable as a whole."""

import json

from streamclust.cli import main
from streamclust.demo import make_digits_archive


def test_run_does_every_stage_then_skips_them(tmp_path, capsys):
    src = make_digits_archive(tmp_path / "digits.zip")
    run = tmp_path / "run"
    args = ["run", str(src), str(run), "--size", "8", "--pca-components", "10", "--clusters", "10",
            "--gmm-components", "5", "--labels", str(src) + ".labels.csv", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1797 ok" in out and "kmeans" in out and "report:" in out
    for name in ("images.zarr", "manifest.csv", "model/pca.npz", "model/kmeans.npz", "model/gmm.npz",
                 "assignments.csv", "evaluation.json", "report/index.html"):
        assert (run / name).exists(), name
    assert json.loads((run / "evaluation.json").read_text())["methods"]["kmeans"]["ari"] > 0.4
    stamps = {p: p.stat().st_mtime_ns for p in (run / "model").iterdir()}
    stamps[run / "assignments.csv"] = (run / "assignments.csv").stat().st_mtime_ns
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ingest already complete" in out and "fit already complete" in out
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    # changed fit settings are refused with one line, unless --overwrite
    assert main([*args[:-1], "--clusters", "4", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
