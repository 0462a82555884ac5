import subprocess
import sys

import pytest

from streamclust.cli import main

from .ingest.hostile import synthetic_jpegs, write_zip


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "streamclust", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["ingest", "MISSING.zip", "RUN"], "does not exist"),
        (["ingest", "SRC", "RUN", "--size", "0"], "--size"),
        (["ingest", "SRC", "RUN", "--size", "big"], "--size"),
        (["ingest", "SRC", "RUN", "--workers", "-1"], "--workers"),
        (["ingest", "SRC", "RUN", "--max-aspect", "0.5"], "--max-aspect"),
        (["ingest", "SRC"], "RUN_DIR"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(3)))
    args = [str(src) if a == "SRC" else str(tmp_path / a) if a in ("RUN", "MISSING.zip") else a for a in args]
    out = run_cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "error" in lines[0]
    assert not (tmp_path / "RUN").exists()


def test_ingest_cli_prints_the_summary_and_resumes_as_noop(tmp_path, capsys):
    src = write_zip(tmp_path / "s.zip", [*synthetic_jpegs(5), ("bad.jpg", b"nope")])
    assert main(["ingest", str(src), str(tmp_path / "run"), "--size", "8", "--workers", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 members: 5 ok" in out and "1 not_image" in out
    assert main(["ingest", str(src), str(tmp_path / "run"), "--size", "8", "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["ingest", str(src), str(tmp_path / "run"), "--size", "16", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_python_warning_is_one_line_of_the_log(capsys, monkeypatch):
    """A library warning (scikit-learn's ConvergenceWarning, say) reaches the terminal as one
    line, not as a file name, line number and source excerpt."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from streamclust import cli

    def warn(args):
        warnings.warn("Best performing initialization did not converge.", ConvergenceWarning)
        return 0

    parser = cli.build_parser()
    args = parser.parse_args(["report", "some-run"])
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(args, "func", warn)
    monkeypatch.setattr(parser, "parse_args", lambda argv: args)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["report", "some-run"]) == 0
    err = capsys.readouterr().err
    assert err == "warning: Best performing initialization did not converge.\n"
