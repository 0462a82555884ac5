"""One writer per run directory: a second writer is refused at once, in one line naming the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from streamclust import Run
from streamclust.errors import RunLockedError, StreamclustError
from streamclust.lock import RunLock, holder, run_lock

from .snapshots import FIT, INGEST, cli, copy_run, make_run, one_error_line, snapshot


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run ingested, fitted and assigned (copy it before writing to it)."""
    return make_run(tmp_path_factory.mktemp("lock"))


class Holder:
    """Another process holding the run directory's lock, as a writing command does, until :meth:`stop`."""

    def __init__(self, run_dir, command="fit"):
        code = textwrap.dedent(f"""
            import sys
            from streamclust import Run
            with Run({str(run_dir)!r}).lock({command!r}):
                print("held", flush=True)
                sys.stdin.readline()
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def stop(self):
        self.proc.communicate("\n", timeout=60)
        assert self.proc.returncode == 0

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)
        self.proc.communicate(timeout=60)


def _commands(src, run):
    return {
        "ingest": ["ingest", src, run, *INGEST],
        "fit": ["fit", run, *FIT],
        "assign": ["assign", run, "--quiet"],
        "select-k": ["select-k", run, "--k", "2:3:1", "--quiet"],
        "sample": ["sample", run, "-n", "4", "--quiet"],
        "evaluate": ["evaluate", run, "--labels-from-folders", "--quiet"],
        "compare": ["compare", run, "--quiet"],
        "report": ["report", run, "--quiet"],
        "train": ["train", run, "--epochs", "1", "--quiet"],
        "encode": ["encode", run, "--quiet"],
        "run": ["run", src, run, *INGEST, *FIT],
    }


def test_every_writing_command_is_refused_while_another_writes(finished, tmp_path):
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    before = snapshot(run)
    holding = Holder(run, "fit")
    try:
        for name, args in _commands(src, run).items():
            out = cli(*args)
            assert out.returncode == 2, (name, out.stderr)
            one_error_line(out, f"PID {holding.pid}", "is being written by", "Run.fit()")
        info = holder(run)
        assert info["pid"] == holding.pid and info["stage"] == "fit"
    finally:
        holding.stop()
    assert snapshot(run) == before  # the refused commands changed nothing; the holder left nothing


def test_readers_are_not_locked_out_and_the_api_raises(finished, tmp_path):
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    holding = Holder(run, "assign")
    try:
        r = Run(run)
        assert r.status()["fit"] == "current"
        assert r.models.pca.n_components_ == 4
        assert len(r.assignments) == 40 and r.images.shape == (40, 8, 8, 3)
        with pytest.raises(RunLockedError, match=f"PID {holding.pid}") as caught:
            r.fit(pca_components=4, clusters=3, gmm_components=2, overwrite=True)
        assert isinstance(caught.value, StreamclustError)
        with pytest.raises(RunLockedError):
            r.ingest(src, size=8, workers=1)
    finally:
        holding.stop()
    assert not (run / ".streamclust" / "lock").exists() and not (run / ".streamclust" / "lock.json").exists()


def test_two_fits_at_once_leave_one_consistent_model(finished, tmp_path):
    """The issue's case: two fits with other settings, one with --overwrite, run at the same time."""
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    a = subprocess.Popen([sys.executable, "-m", "streamclust", "fit", str(run), "--pca-components", "4",
                          "--clusters", "5", "--gmm-components", "3", "--overwrite", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([sys.executable, "-m", "streamclust", "fit", str(run), "--pca-components", "4",
                          "--clusters", "6", "--gmm-components", "2", "--overwrite", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) + (p.returncode, p.pid) for p in (a, b)]
    codes = sorted(o[2] for o in outs)
    assert codes in ([0, 0], [0, 2]), outs  # both ran one after the other, or one was refused
    for _, err, rc, pid in outs:
        if rc == 2:
            (line,) = err.strip().splitlines()
            other = next(o[3] for o in outs if o[3] != pid)
            assert f"PID {other}" in line and "streamclust fit" in line
    saved = json.loads((run / "config.json").read_text())["fit"]
    with np.load(run / "model" / "kmeans.npz") as km, np.load(run / "model" / "gmm.npz") as gmm:
        assert km["cluster_centers_"].shape[0] == saved["clusters"]
        assert gmm["means_"].shape[0] == saved["gmm_components"]
        assert np.abs(km["cluster_centers_"]).sum() > 0 and np.abs(gmm["means_"]).sum() > 0
    assert cli("assign", run, "--quiet").returncode == 0
    assert not list(run.rglob("*.partial"))


def test_two_ingests_at_once_leave_one_complete_manifest(tmp_path):
    from .snapshots import make_source

    src = make_source(tmp_path, n=300)
    run = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "streamclust", "ingest", str(src), str(run), "--size", "8",
                               "--workers", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert sorted(o[2] for o in outs) in ([0, 0], [0, 2]), outs
    rows = (run / "manifest.csv").read_text().splitlines()
    assert rows[0].startswith("position,") and len(rows) == 301


def test_a_lock_left_by_a_killed_writer_is_taken_over(finished, tmp_path):
    src, base = finished
    run = copy_run(base, tmp_path / "run")
    holding = Holder(run, "select-k")
    holding.kill()
    assert (run / ".streamclust" / "lock").exists() and holder(run)["pid"] == holding.pid  # left behind
    out = cli("fit", run, *FIT)
    assert out.returncode == 0, out.stderr
    assert not (run / ".streamclust" / "lock").exists() and holder(run) is None


def test_the_lock_is_reentrant_in_one_process_and_leaves_nothing(tmp_path):
    run = tmp_path / "new" / "run"
    with run_lock(run, "run") as outer:
        assert outer.path.exists() and holder(run)["pid"] == os.getpid()
        with RunLock(run, "ingest"), Run(run).lock("fit"):  # `streamclust run`: stages inside one lock
            assert holder(run)["stage"] == "run"
        assert outer.path.exists()
    assert not (tmp_path / "new").exists()  # made by the lock, empty: removed with it
    code = f"from streamclust.lock import run_lock\nwith run_lock({str(run)!r}, 'x'): pass\n"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # released for other processes


def test_run_holds_the_lock_across_its_stages(tmp_path):
    from .snapshots import make_source

    src = make_source(tmp_path)
    out = cli("run", src, tmp_path / "run", *INGEST, *FIT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "report" / "index.html").exists()
    assert not (tmp_path / "run" / ".streamclust" / "lock").exists()
