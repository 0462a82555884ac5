"""The zip reader reads the central directory in slices; it must deliver what zipfile does."""

import zipfile

import numpy as np
import pytest

import streamclust.ingest.zipdir as zipdir
from streamclust.ingest.readers import open_reader

from .hostile import corrupt_zip_crc, encode, noise, zip_with_non_utf8_name


def _zipfile_members(path, max_bytes=2**20):
    """What zipfile itself delivers: (name, bytes or None) of each file member."""
    out = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            try:
                out.append((info.filename, zf.read(info)))
            except zipfile.BadZipFile:
                out.append((info.filename, None))
    return out


def _mixed_zip(path, n=2500):
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("top/", b"")
        for i in range(n):
            if i % 400 == 0:
                zf.writestr(f"dir{i}/", b"")
            data = rng.bytes(int(rng.integers(0, 300)))
            method = zipfile.ZIP_DEFLATED if i % 3 else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(f"dir{i // 400 * 400}/m{i:05d}.bin"), data, compress_type=method)
        zf.writestr("l" * 2000 + ".bin", b"a long name")  # an entry longer than a small slice
    return path


@pytest.mark.parametrize("slice_bytes", [zipdir.SLICE, 333])
def test_members_positions_spans_and_resume_points_match_zipfile(tmp_path, monkeypatch, slice_bytes):
    monkeypatch.setattr(zipdir, "SLICE", slice_bytes)
    monkeypatch.setattr(zipdir, "STRIDE", 64)
    src = _mixed_zip(tmp_path / "m.zip")
    expected = _zipfile_members(src)
    reader = open_reader(src, 2**20)
    got = [(m.name, m.data) for m in reader.members()]
    assert reader.count() == len(expected) and got == expected
    assert [m.position for m in reader.members()] == list(range(len(expected)))
    for start in (0, 1, 63, 64, 65, 1000, len(expected) - 1, len(expected)):
        assert [(m.name, m.data) for m in reader.members(start)] == expected[start:]
        spans = list(reader.spans(start, 2000, 50))
        assert all(s.hi - s.lo <= 50 for s in spans)
        assert [(m.position, m.name, m.data) for s in spans for m in reader.members_in(s)] == \
            [(start + k, *e) for k, e in enumerate(expected[start:])]
    reader.close()


def test_broken_members_get_zipfile_s_verdicts(tmp_path):
    img = encode(noise(20, 20), "PNG")
    src = tmp_path / "b.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("ok.png", img)
        zf.writestr(zipfile.ZipInfo("crc.png"), img)
        zf.writestr("big.bin", b"\0" * 50_000, compress_type=zipfile.ZIP_DEFLATED)
    corrupt_zip_crc(src, "crc.png")
    members = {m.name: m for m in open_reader(src, 10_000).members()}
    assert members["ok.png"].data == img and not members["ok.png"].status
    assert members["crc.png"].status == "bad_crc" and "CRC" in members["crc.png"].reason
    assert members["big.bin"].status == "too_large"


def test_a_name_that_is_not_utf8_is_kept_with_a_note(tmp_path):
    img = encode(noise(20, 20), "PNG")
    (m,) = open_reader(zip_with_non_utf8_name(tmp_path / "n.zip", img), 2**20).members()
    assert m.name.startswith("caf") and "UTF-8" in m.note and m.data == img


def test_a_damaged_central_directory_is_a_source_error(tmp_path):
    from streamclust.errors import SourceError

    src = _mixed_zip(tmp_path / "m.zip", n=50)
    raw = bytearray(src.read_bytes())
    at = raw.rfind(b"PK\x01\x02")
    raw[at:at + 4] = b"XXXX"
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match="could not be read"):
        open_reader(bad, 2**20)
