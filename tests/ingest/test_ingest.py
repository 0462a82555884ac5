import csv
import os
import time
import json
import tarfile
import zipfile
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from streamclust.config import IngestConfig
from streamclust.errors import ConfigMismatchError, SourceError
from streamclust.ingest import ingest
from streamclust.store import RunLayout, ok_rows

from .hostile import (
    corrupt_zip_crc,
    encode,
    fs_supports_bytes_names,
    hostile_members,
    noise,
    synthetic_jpegs,
    write_dir,
    write_tar,
    write_zip,
    zip_with_non_utf8_name,
)


def manifest(run: Path) -> list[dict]:
    with open(run / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build(kind: str, tmp_path: Path, members) -> Path:
    if kind == "zip":
        return write_zip(tmp_path / "src.zip", members)
    if kind == "tar":
        return write_tar(tmp_path / "src.tar", members)
    if kind == "tgz":
        return write_tar(tmp_path / "src.tgz", members, "w:gz")
    return write_dir(tmp_path / "src", members)


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz", "dir"])
@pytest.mark.parametrize("workers", [1, 2])
def test_hostile_archive_every_member_gets_its_row(kind, workers, tmp_path):
    members = hostile_members()
    src = build(kind, tmp_path, members)
    run = tmp_path / "run"
    summary = ingest(IngestConfig(str(src), size=16, chunk_size=4, workers=workers), run, progress=False)
    rows = manifest(run)
    expected = {name: status for name, _, status in members}
    assert len(rows) == len(members)  # exactly one row per file member, no directory rows
    assert {r["member"]: r["status"] for r in rows} == expected
    for r in rows:
        assert (r["index"] != "") == (r["status"] == "ok")
        assert (r["reason"] != "") == (r["status"] != "ok")
    n_ok = sum(s == "ok" for s in expected.values())
    arr = zarr.open_array(run / "images.zarr", mode="r")
    assert arr.shape == (n_ok, 16, 16, 3) and arr.dtype == np.uint8 and arr.chunks == (4, 16, 16, 3)
    assert sorted(int(r["index"]) for r in rows if r["index"]) == list(range(n_ok))
    assert summary.ok == n_ok and summary.members == len(members)
    assert summary.skipped == {s: list(expected.values()).count(s) for s in set(expected.values()) - {"ok"}}
    # duplicate content: kept, and marked with the first copy's index
    by_name = {r["member"]: r for r in rows}
    assert by_name["photos/good_copy.jpg"]["duplicate_of"] == by_name["photos/good.jpg"]["index"]
    assert len(ok_rows(run)) == n_ok - 1
    # every row of the store is the decoded member
    first = int(by_name["photos/good.jpg"]["index"])
    dup = int(by_name["photos/good_copy.jpg"]["index"])
    np.testing.assert_array_equal(arr[first], arr[dup])
    # the store is readable by dask too
    assert da.from_zarr(str(run / "images.zarr")).sum().compute() == arr[:].astype(np.int64).sum()


def test_all_sources_give_the_same_store(tmp_path):
    members = hostile_members()
    stores = []
    for kind in ("zip", "tgz", "dir"):
        (tmp_path / kind).mkdir()
        src = build(kind, tmp_path / kind, members)
        ingest(IngestConfig(str(src), size=16, chunk_size=4, workers=1), tmp_path / kind / "run", progress=False)
        stores.append(zarr.open_array(tmp_path / kind / "run" / "images.zarr")[:])
    # folders are walked in sorted order; archives keep their own order
    names = [m[0] for m in members]
    order = sorted(range(len(names)), key=lambda i: names[i].split("/"))
    ok = [i for i, m in enumerate(members) if m[2] == "ok"]
    perm = [ok.index(i) for i in order if i in ok]
    np.testing.assert_array_equal(stores[0], stores[1])
    np.testing.assert_array_equal(stores[0][perm], stores[2])


def test_zip_crc_mismatch_and_zip_bomb(tmp_path):
    img = encode(noise(40, 40), "PNG")
    src = tmp_path / "a.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("ok.png", img)
        zf.writestr(zipfile.ZipInfo("crc.png"), img)  # stored
        zf.writestr("bomb.bin", b"\0" * 5_000_000, compress_type=zipfile.ZIP_DEFLATED)  # 5 MB from ~5 KB
    corrupt_zip_crc(src, "crc.png")
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=8, workers=1, max_member_bytes=1_000_000), run, progress=False)
    status = {r["member"]: (r["status"], r["reason"]) for r in manifest(run)}
    assert status["ok.png"][0] == "ok"
    assert status["crc.png"][0] == "bad_crc" and "CRC" in status["crc.png"][1]
    assert status["bomb.bin"][0] == "too_large" and "max_member_bytes" in status["bomb.bin"][1]


def test_non_utf8_names_are_kept_with_a_note(tmp_path):
    img = encode(noise(20, 20), "PNG")
    run = tmp_path / "run"
    ingest(IngestConfig(str(zip_with_non_utf8_name(tmp_path / "n.zip", img)), size=8, workers=1), run,
           progress=False)
    (row,) = manifest(run)
    assert row["status"] == "ok" and row["member"].startswith("caf") and "UTF-8" in row["note"]

    src = tmp_path / "n.tar"
    with tarfile.open(src, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("café.png")
        info.size = len(img)
        import io
        tf.addfile(info, io.BytesIO(img))
    ingest(IngestConfig(str(src), size=8, workers=1), tmp_path / "run2", progress=False)
    (row,) = manifest(tmp_path / "run2")
    assert row["status"] == "ok" and row["member"] == "caf\\xe9.png" and "UTF-8" in row["note"]

    if fs_supports_bytes_names(tmp_path):
        folder = tmp_path / "folder"
        folder.mkdir()
        import os
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as fh:
            fh.write(img)
        ingest(IngestConfig(str(folder), size=8, workers=1), tmp_path / "run3", progress=False)
        (row,) = manifest(tmp_path / "run3")
        assert row["status"] == "ok" and row["member"] == "caf\\xe9.png"


def test_tar_links_and_a_truncated_archive(tmp_path):
    img = encode(noise(20, 20), "PNG")
    src = tmp_path / "l.tar"
    import io
    with tarfile.open(src, "w") as tf:
        for name in ("a.png", "b.png"):
            info = tarfile.TarInfo(name)
            info.size = len(img)
            tf.addfile(info, io.BytesIO(img))
        link = tarfile.TarInfo("link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "a.png"
        tf.addfile(link)
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    assert [(r["member"], r["status"]) for r in manifest(run)] == [
        ("a.png", "ok"), ("b.png", "ok"), ("link.png", "not_file")]
    # cut the archive inside the second member's data
    raw = src.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: 512 + 512 + 512 + len(img) // 2 + 512])
    ingest(IngestConfig(str(cut), size=8, workers=1), tmp_path / "run2", progress=False)
    rows = manifest(tmp_path / "run2")
    assert rows[0]["status"] == "ok"
    assert all(r["status"] != "ok" and r["reason"] for r in rows[1:]) and len(rows) >= 2


def test_rerun_is_a_noop_and_changed_settings_are_refused(tmp_path):
    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(20)))
    run = tmp_path / "run"
    cfg = IngestConfig(str(src), size=16, chunk_size=8, workers=1)
    ingest(cfg, run, progress=False)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    again = ingest(cfg, run, progress=False)
    assert again.already_complete and again.ok == 20
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigMismatchError, match="size"):
        ingest(IngestConfig(str(src), size=8, chunk_size=8, workers=1), run, progress=False)
    other = write_zip(tmp_path / "other.zip", list(synthetic_jpegs(5)))
    with pytest.raises(ConfigMismatchError, match="source"):
        ingest(IngestConfig(str(other), size=16, chunk_size=8, workers=1), run, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    out = ingest(IngestConfig(str(other), size=8, workers=1), run, overwrite=True, progress=False)
    assert out.ok == 5 and zarr.open_array(run / "images.zarr").shape == (5, 8, 8, 3)
    # the worker count does not change the output, so it may differ on a re-run
    assert ingest(IngestConfig(str(other), size=8, workers=2), run, progress=False).already_complete


def test_missing_source_writes_nothing(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        ingest(IngestConfig(str(tmp_path / "nope.zip")), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(SourceError, match="neither a zip nor a tar"):
        ingest(IngestConfig(str(junk)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_store_layout_and_saved_config(tmp_path):
    src = write_zip(tmp_path / "s.zip", list(synthetic_jpegs(10)))
    run = tmp_path / "run"
    ingest(IngestConfig(str(src), size=16, workers=1), run, progress=False)
    layout = RunLayout.of(run)
    assert layout.is_done("ingest")
    cfg = json.loads(layout.config.read_text())["ingest"]
    assert cfg["size"] == 16 and cfg["chunk_size"] == 4096 and cfg["source"]["path"] == str(src.resolve())
    summary = json.loads(layout.ingest_summary.read_text())
    assert summary["ok"] == 10 and summary["members"] == 10
    assert not list(run.rglob("*.partial"))


def test_a_failed_commit_stops_the_run_and_a_rerun_completes_it(tmp_path, monkeypatch):
    """Chunks are written on a background thread: its error (a full disk, say) must stop
    the run with that error, leave the last consistent commit, and a re-run must end
    with the same store and manifest as an unbroken run."""
    import streamclust.ingest.writer as run_mod

    src = write_zip(tmp_path / "a.zip", list(synthetic_jpegs(70, side=16)))
    cfg = IngestConfig(str(src), size=8, chunk_size=16, workers=2)
    ref = tmp_path / "ref"
    ingest(cfg, ref, progress=False)

    real, calls = run_mod.format_rows, []

    def failing(rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(rows)

    monkeypatch.setattr(run_mod, "format_rows", failing)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        ingest(cfg, run, progress=False)
    state = json.loads((run / ".streamclust" / "ingest_state.json").read_text())
    assert state["rows_done"] == 32 and not state["finished"]  # two commits landed, not the third
    assert not RunLayout.of(run).is_done("ingest")

    monkeypatch.setattr(run_mod, "format_rows", real)
    out = ingest(cfg, run, progress=False)
    assert out.resumed_from == state["members_done"] and out.ok == 70
    assert (run / "manifest.csv").read_bytes() == (ref / "manifest.csv").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(run / "images.zarr")[:], zarr.open_array(ref / "images.zarr")[:])


@pytest.mark.parametrize("task_members", [1, 7, 1024])
def test_worker_counts_and_task_sizes_give_identical_outputs(tmp_path, monkeypatch, task_members):
    """Chunks end inside decode tasks and duplicates span tasks: the store and manifest
    must not depend on how the members were split among tasks and workers."""
    import streamclust.ingest.pool as pool

    members = list(synthetic_jpegs(60, side=20))
    members += [(f"again/{name}", data) for name, data in members[::7]]  # duplicates of earlier tasks' images
    members += [m[:2] for m in hostile_members()]
    src = write_zip(tmp_path / "s.zip", members)
    ref = tmp_path / "ref"
    ingest(IngestConfig(str(src), size=8, chunk_size=5, workers=1), ref, progress=False)
    monkeypatch.setattr(pool, "TASK_MEMBERS", task_members)
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        ingest(IngestConfig(str(src), size=8, chunk_size=5, workers=workers), run, progress=False)
        assert (run / "manifest.csv").read_bytes() == (ref / "manifest.csv").read_bytes()
        np.testing.assert_array_equal(zarr.open_array(run / "images.zarr")[:], zarr.open_array(ref / "images.zarr")[:])
    rows = manifest(ref)
    by_name = {r["member"]: r for r in rows}
    for name, _ in members[:60:7]:
        assert by_name[f"again/{name}"]["duplicate_of"] == by_name[name]["index"]


def test_an_archive_of_few_images_commits_by_member_count(tmp_path, monkeypatch):
    """Commits also come every COMMIT_MEMBERS members, so the rows held stay bounded when
    chunks fill slowly; the partly written chunk is completed later, to the same bytes."""
    import streamclust.ingest.writer as run_mod

    images = list(synthetic_jpegs(12, side=16))
    members = []
    for k, m in enumerate(images):
        members.append(m)
        members += [(f"notes/{k}_{j}.txt", b"not an image %d" % j) for j in range(k % 4 * 3)]
    src = write_zip(tmp_path / "s.zip", members)
    cfg = IngestConfig(str(src), size=8, chunk_size=4, workers=1)
    ingest(cfg, tmp_path / "ref", progress=False)
    monkeypatch.setattr(run_mod._Writer, "COMMIT_MEMBERS", 5)
    commits = []
    real = run_mod.format_rows
    monkeypatch.setattr(run_mod, "format_rows", lambda rows: commits.append(len(rows)) or real(rows))
    run = tmp_path / "run"
    ingest(cfg, run, progress=False)
    assert max(commits) <= 5 and len(commits) > len(members) // 5
    assert (run / "manifest.csv").read_bytes() == (tmp_path / "ref" / "manifest.csv").read_bytes()
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in (root / "images.zarr").rglob("*") if p.is_file()}
    assert files(run) == files(tmp_path / "ref")


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_non_regular_source_is_refused_at_once(tmp_path, capsys, kind):
    """/dev/zero would be read without end and a FIFO would block in open(): both refused from stat."""
    from streamclust.cli import main

    if kind == "device":
        source = "/dev/zero"
    else:
        source = str(tmp_path / "pipe.zip")
        os.mkfifo(source)
    t = time.monotonic()
    rc = main(["ingest", source, str(tmp_path / "run"), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - t < 10
    assert "is not a regular file or a folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_carriage_return_in_a_member_name_round_trips_through_the_manifest(tmp_path):
    from streamclust.ingest.manifest import COLUMNS, format_rows, header, read_manifest

    rows = [{"position": 0, "member": "a\rb.png", "status": "ok"}, {"position": 1, "member": "c.png", "status": "ok"}]
    path = tmp_path / "manifest.csv"
    path.write_bytes(header() + format_rows(rows))
    back = list(read_manifest(path))
    assert [r["member"] for r in back] == ["a\rb.png", "c.png"]
    assert [r["status"] for r in back] == ["ok", "ok"] and list(back[0]) == list(COLUMNS)


def test_an_archive_with_a_carriage_return_in_a_name_ingests_and_re_runs(tmp_path):
    from .hostile import encode, noise, write_zip

    src = write_zip(tmp_path / "cr.zip", [("a\rb.png", encode(noise(16, 16), "PNG")),
                                         ("c.png", encode(noise(16, 16, seed=1), "PNG"))])
    run = tmp_path / "run"
    first = ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    assert first.ok == 2
    with open(run / "manifest.csv", newline="", encoding="utf-8") as fh:
        assert [r["member"] for r in csv.DictReader(fh)] == ["a\rb.png", "c.png"]
    again = ingest(IngestConfig(str(src), size=8, workers=1), run, progress=False)
    assert again.already_complete
    ingest(IngestConfig(str(src), size=8, workers=1), run, overwrite=True, progress=False)
