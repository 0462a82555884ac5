"""Tars whose header size field lies (issue 16, item 6).

Python's tarfile ends a stream silently at the first header that is not where the
previous header's size says, so the members after it were lost (2 rows for 4 members,
exit 0).  GNU tar skips to the next valid header and lists them.  streamclust now reads
them as GNU tar does: every member GNU tar lists gets a row, and the member whose size
cannot be trusted gets status ``unreadable`` with the damage as its reason.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from streamclust.config import IngestConfig
from streamclust.ingest import ingest
from streamclust.ingest.manifest import read_manifest
from streamclust.ingest.readers import open_reader
from tests.ingest.hostile import synthetic_jpegs

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
NAMES = [f"img/{i:06d}.jpg" for i in range(4)]

#: size-field error of member 1 -> (the names GNU tar lists, whether member 1 is damaged);
#: GNU tar 1.34's listings, so that the test holds where no GNU tar is installed
EXPECTED = {
    -600: (NAMES, True),        # the next header is read from inside member 1: skip to member 2's
    -100: (NAMES, True),        # a block short: the same
    +100: (NAMES, False),       # within the last block's padding: nothing is lost, nothing to see
    +600: ([NAMES[0], NAMES[1], NAMES[3]], True),  # member 2's header was read as data (GNU tar loses it too)
    +3000: (NAMES[:2], True),   # past every later header: nothing valid after it
}


def _blocks(size: int) -> int:
    return -(-size // 512) * 512


def lying_tar(path: Path, delta: int, *, fmt: str = "ustar", victim: int = 1, compress: bool = False) -> Path:
    """Four JPEG members; the header of member ``victim`` says ``delta`` bytes more (or fewer) than it holds
    (its checksum recomputed, so the header itself is valid, as a buggy writer would make it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=FORMATS[fmt]) as tf:
        for name, data in synthetic_jpegs(4, side=64):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    offset, index = 0, 0
    while True:
        info = tarfile.TarInfo.frombuf(bytes(raw[offset:offset + 512]), "utf-8", "surrogateescape")
        if info.type not in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME) and index == victim:
            break
        if info.type not in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            index += 1
        offset += 512 + _blocks(info.size)
    raw[offset + 124:offset + 136] = b"%011o\0" % (info.size + delta)
    raw[offset + 148:offset + 156] = b" " * 8
    raw[offset + 148:offset + 156] = b"%06o\0 " % sum(raw[offset:offset + 512])
    data = gzip.compress(bytes(raw), mtime=0) if compress else bytes(raw)
    path.write_bytes(data)
    return path


def _rows(path: Path, start: int = 0) -> list[tuple[int, str, str, str]]:
    reader = open_reader(path, 1 << 20)
    try:
        return [(m.position, m.name, m.status, m.reason) for m in reader.members(start)]
    finally:
        reader.close()


def _gnu_tar_names(path: Path) -> tuple[list[str], int] | None:
    tar = shutil.which("tar")
    if tar is None:
        return None
    version = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
    if "GNU tar" not in version:
        return None
    proc = subprocess.run([tar, "tf", str(path)], capture_output=True, text=True)
    return proc.stdout.split(), proc.returncode


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("delta", list(EXPECTED))
def test_every_member_gnu_tar_lists_gets_a_row(tmp_path, delta, fmt, compress):
    path = lying_tar(tmp_path / ("lies.tar.gz" if compress else "lies.tar"), delta, fmt=fmt, compress=compress)
    names, damaged = EXPECTED[delta]
    gnu = _gnu_tar_names(path)
    if gnu is not None:
        assert gnu[0] == names  # what GNU tar itself lists
        assert (gnu[1] != 0) == damaged  # and whether it complains
    rows = _rows(path)
    assert [name for _, name, _, _ in rows] == names
    assert [pos for pos, _, _, _ in rows] == list(range(len(names)))
    statuses = {name: (status, reason) for _, name, status, reason in rows}
    if damaged:
        status, reason = statuses.pop(NAMES[1])
        assert status == "unreadable"
        assert reason.startswith("damaged tar stream: a header's size field does not lead to the next header (")
    assert all(status == "" for status, _ in statuses.values())


def test_a_resumed_read_gives_the_same_rows(tmp_path):
    path = lying_tar(tmp_path / "lies.tar", -600)
    rows = _rows(path)
    for start in range(len(rows) + 1):
        assert _rows(path, start) == rows[start:]


def test_ingest_writes_a_row_for_every_member_and_says_which_one_is_damaged(tmp_path):
    path = lying_tar(tmp_path / "lies.tar", -600)
    proc = subprocess.run([sys.executable, "-m", "streamclust", "ingest", str(path), str(tmp_path / "run"),
                           "--size", "16", "--workers", "1", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(read_manifest(tmp_path / "run" / "manifest.csv"))
    assert [(r["member"], r["status"], r["index"]) for r in rows] == [
        (NAMES[0], "ok", "0"), (NAMES[1], "unreadable", ""), (NAMES[2], "ok", "1"), (NAMES[3], "ok", "2")]
    assert re.search(r"\(bytes [\d,]+ to [\d,]+ skipped to the next valid header\)$", rows[1]["reason"])


def test_damage_to_the_end_of_the_archive_is_said(tmp_path):
    rows = _rows(lying_tar(tmp_path / "lies.tar", +3000))
    assert rows[-1][2] == "unreadable" and "to the end of the archive" in rows[-1][3]


def test_a_sound_tar_reads_as_before(tmp_path):
    path = lying_tar(tmp_path / "sound.tar", 0)
    rows = _rows(path)
    assert [(name, status) for _, name, status, _ in rows] == [(n, "") for n in NAMES]
    run = tmp_path / "run"
    summary = ingest(IngestConfig(source=str(path), size=16, workers=1), run, progress=False)
    assert summary.members == 4 and summary.ok == 4
