"""A zip's central directory read in slices, and its members read with one ``pread`` each.

:class:`zipfile.ZipFile` parses the whole central directory when it opens an archive and
keeps a :class:`~zipfile.ZipInfo` per member (about 600 bytes each: 6 GB for ten million
members).  :class:`ZipDirectory` walks the directory once to count the file members and
keeps only where every :data:`STRIDE`-th of them starts; the entries are parsed again, a
slice at a time, when they are read.  A block of members is named by a :class:`Span` (the
positions and the bytes of the directory that hold them), so that a decode worker can
read its own members from the archive.

Reading a member takes one ``pread`` of its local header, name and data when it is plain
(stored or deflated, not encrypted, the local name matching the directory's); anything
else, and any member whose data does not come out exactly (size, CRC), is read through
:meth:`zipfile.ZipFile.open`, so every error is the one :mod:`zipfile` raises.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = ["ZipDirectory", "Span", "Region", "STRIDE", "zip_info"]

#: file members between two marks of the sparse position index
STRIDE = 1024
#: bytes of the central directory read at a time
SLICE = 1 << 20

_CENTRAL = struct.Struct(zipfile.structCentralDir)
_LOCAL = struct.Struct(zipfile.structFileHeader)
_LENGTHS = struct.Struct("<HHH")  # name, extra and comment lengths, at offset 28 of an entry
_SIZE = struct.Struct("<L")  # compressed size, at offset 20
_U16 = struct.Struct("<H")
_LENGTHS2 = struct.Struct("<HH")  # a local header's name and extra lengths, at offset 26
_PLAIN_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
#: flag bits that make a member need zipfile's own reader (encrypted, patch data, strong encryption)
_SPECIAL_FLAGS = 0x01 | 0x20 | 0x40


@dataclass(frozen=True)
class Span:
    """File members ``lo:hi`` of a zip, whose entries fill directory bytes ``cd_lo:cd_hi``."""

    lo: int
    hi: int
    cd_lo: int
    cd_hi: int


class _ShallowZipFile(zipfile.ZipFile):
    """A :class:`zipfile.ZipFile` that does not parse the central directory (we do, in slices).

    It is only asked to :meth:`open` members given as :class:`~zipfile.ZipInfo`.
    """

    def _RealGetContents(self):  # noqa: N802 - zipfile's name
        pass


def zip_info(entry: bytes, concat: int) -> zipfile.ZipInfo:
    """The :class:`~zipfile.ZipInfo` of one central-directory entry, as zipfile builds it."""
    centdir = _CENTRAL.unpack_from(entry)
    if centdir[0] != zipfile.stringCentralDir:
        raise zipfile.BadZipFile("Bad magic number for central directory")
    n_name, n_extra, n_comment = centdir[12], centdir[13], centdir[14]
    raw = entry[46:46 + n_name]
    flags = centdir[5]
    filename = raw.decode("utf-8") if flags & 0x800 else raw.decode("cp437")
    x = zipfile.ZipInfo(filename)
    x.extra = entry[46 + n_name:46 + n_name + n_extra]
    x.comment = entry[46 + n_name + n_extra:46 + n_name + n_extra + n_comment]
    x.header_offset = centdir[18]
    (x.create_version, x.create_system, x.extract_version, x.reserved,
     x.flag_bits, x.compress_type, t, d, x.CRC, x.compress_size, x.file_size) = centdir[1:12]
    if x.extract_version > zipfile.MAX_EXTRACT_VERSION:
        raise NotImplementedError("zip file version %.1f" % (x.extract_version / 10))
    x.volume, x.internal_attr, x.external_attr = centdir[15:18]
    x._raw_time = t
    x.date_time = ((d >> 9) + 1980, (d >> 5) & 0xF, d & 0x1F, t >> 11, (t >> 5) & 0x3F, (t & 0x1F) * 2)
    try:
        x._decodeExtra()
    except TypeError:  # pragma: no cover - Python >= 3.12 passes the name's CRC
        x._decodeExtra(zlib.crc32(raw))
    x.header_offset += concat
    return x


class ZipDirectory:
    """The central directory of the zip at ``path``: counted once, then read in slices.

    Raises :class:`zipfile.BadZipFile` (or :class:`OSError`) when it cannot be read.
    Memory: one ``int64`` per :data:`STRIDE` file members, whatever the archive's size.
    """

    def __init__(self, path: str | os.PathLike):
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.zip = _ShallowZipFile(path)
            endrec = zipfile._EndRecData(self.zip.fp)
            if not endrec:
                raise zipfile.BadZipFile("File is not a zip file")
            size_cd, offset_cd = endrec[zipfile._ECD_SIZE], endrec[zipfile._ECD_OFFSET]
            concat = endrec[zipfile._ECD_LOCATION] - size_cd - offset_cd
            if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
                concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
            self.concat = concat
            self.start, self.end = offset_cd + concat, offset_cd + concat + size_cd
            if self.start < 0:
                raise zipfile.BadZipFile("Bad offset for central directory")
            self.count, self._marks = self._scan()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        zf = getattr(self, "zip", None)
        if zf is not None:
            zf.close()

    def _scan(self) -> tuple[int, np.ndarray]:
        """Count the file members; note the offset of every STRIDE-th (a tight loop: ~1 us an entry)."""
        marks, count = [], 0
        offset, end, fd, lengths, sig = self.start, self.end, self.fd, _LENGTHS.unpack_from, zipfile.stringCentralDir
        while offset < end:
            buf = os.pread(fd, min(SLICE, end - offset), offset)
            n, i = len(buf), 0
            while i + 46 <= n:
                n_name, n_extra, n_comment = lengths(buf, i + 28)
                j = i + 46 + n_name
                if j + n_extra + n_comment > n:
                    break
                if not buf.startswith(sig, i):
                    raise zipfile.BadZipFile("Bad magic number for central directory")
                if n_name and buf[j - 1] != 0x2F and buf.find(b"\0", i + 46, j) < 0 or not _is_dir(buf, i, n_name):
                    if not count % STRIDE:
                        marks.append(offset + i)
                    count += 1
                i = j + n_extra + n_comment
            if i == 0:  # an entry longer than a slice
                big, n_name = self._entry_at(offset, end)
                if not _is_dir(big, 0, n_name):
                    if not count % STRIDE:
                        marks.append(offset)
                    count += 1
                i = len(big)
            offset += i
        return count, np.asarray(marks, dtype=np.int64)

    def _walk(self, offset: int, end: int) -> Iterator[tuple[int, bytes, int, int, int]]:
        """``(offset, buf, i, name_length, entry_length)`` of each entry in ``offset:end``;
        the entry is ``buf[i:i + entry_length]``."""
        while offset < end:
            buf = os.pread(self.fd, min(SLICE, end - offset), offset)
            n, i = len(buf), 0
            while i + 46 <= n:
                n_name, n_extra, n_comment = _LENGTHS.unpack_from(buf, i + 28)
                size = 46 + n_name + n_extra + n_comment
                if i + size > n:
                    break
                if buf[i:i + 4] != zipfile.stringCentralDir:
                    raise zipfile.BadZipFile("Bad magic number for central directory")
                yield offset + i, buf, i, n_name, size
                i += size
            if i == 0:  # an entry longer than a slice, or the directory ends inside one
                buf, n_name = self._entry_at(offset, end)
                yield offset, buf, 0, n_name, len(buf)
                i = len(buf)
            offset += i

    def _entry_at(self, offset: int, end: int) -> tuple[bytes, int]:
        """The whole entry at ``offset`` and its name's length; raises if it passes ``end``."""
        head = os.pread(self.fd, 46, offset)
        if len(head) < 46 or offset + 46 > end:
            raise zipfile.BadZipFile("Truncated central directory")
        n_name, n_extra, n_comment = _LENGTHS.unpack_from(head, 28)
        size = 46 + n_name + n_extra + n_comment
        buf = os.pread(self.fd, size, offset)
        if len(buf) < size or offset + size > end:
            raise zipfile.BadZipFile("Truncated central directory")
        if buf[:4] != zipfile.stringCentralDir:
            raise zipfile.BadZipFile("Bad magic number for central directory")
        return buf, n_name

    def _from(self, start: int, end: int | None = None) -> Iterator[tuple[int, int, bytes, int, int, int]]:
        """``(position, offset, buf, i, name_length, entry_length)`` of file members from ``start``."""
        if start >= self.count:
            return
        mark = start // STRIDE
        pos = mark * STRIDE
        for offset, buf, i, n_name, size in self._walk(int(self._marks[mark]), self.end if end is None else end):
            if _is_dir(buf, i, n_name):
                continue
            if pos >= start:
                yield pos, offset, buf, i, n_name, size
            pos += 1

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """``(position, entry bytes)`` of every file member from position ``start``."""
        for pos, _, buf, i, _, size in self._from(start):
            yield pos, buf[i:i + size]

    def entries_in(self, span: Span) -> list[tuple[int, bytes]]:
        """``(position, entry bytes)`` of the file members of ``span``."""
        out, pos = [], span.lo
        for _, buf, i, n_name, size in self._walk(span.cd_lo, span.cd_hi):
            if not _is_dir(buf, i, n_name):
                out.append((pos, buf[i:i + size]))
                pos += 1
        return out

    def region(self, entries: list[tuple[int, bytes]]) -> "Region":
        """The archive bytes that hold the members of ``entries``, read with one ``pread``
        when they lie together (as they do in any archive written in one go)."""
        lo, hi, payload = None, 0, 0
        for _, entry in entries:
            csize, = _SIZE.unpack_from(entry, 20)
            n_name, = _U16.unpack_from(entry, 28)
            offset, = _SIZE.unpack_from(entry, 42)
            offset += self.concat
            lo = offset if lo is None else min(lo, offset)
            hi = max(hi, offset + 30 + n_name + csize + _EXTRA_SLACK)
            payload += 30 + n_name + csize
        if lo is None or hi - lo > 2 * payload + _EXTRA_SLACK * len(entries) or hi - lo > _MAX_REGION:
            return Region(self.fd, 0, b"")
        return Region(self.fd, lo, os.pread(self.fd, min(hi, self.start) - lo, lo))

    def spans(self, start: int, max_bytes: int, max_members: int, stop: int | None = None) -> Iterator[Span]:
        """Consecutive blocks of file members from ``start`` (to ``stop``), each of at most
        ``max_members`` members and about ``max_bytes`` compressed bytes."""
        stop = self.count if stop is None else stop
        lo = cd_lo = None
        hi = cd_hi = n = nbytes = 0
        for pos, offset, buf, i, _, size in self._from(start):
            if pos >= stop:
                break
            if lo is None:
                lo, cd_lo = pos, offset
            n += 1
            nbytes += _SIZE.unpack_from(buf, i + 20)[0]
            hi, cd_hi = pos + 1, offset + size
            if n >= max_members or nbytes >= max_bytes:
                yield Span(lo, hi, cd_lo, cd_hi)
                lo, n, nbytes = None, 0, 0
        if lo is not None:
            yield Span(lo, hi, cd_lo, cd_hi)

    def read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        """The bytes of member ``info`` (at most ``limit + 1`` of them), through zipfile:
        raises what zipfile raises."""
        with self.zip.open(info) as fh:
            return fh.read(limit + 1)

    def read_plain(self, entry: bytes, limit: int, region: "Region | None" = None) -> tuple[bytes, str] | None:
        """``(raw name, data)`` of a plain member straight from its entry, or None where
        zipfile must read it (see the module's docstring)."""
        (_, _, _, version, _, flags, method, _, _, crc, csize, fsize, n_name, _, _,
         _, _, _, offset) = _CENTRAL.unpack_from(entry)
        if method not in _PLAIN_METHODS or flags & _SPECIAL_FLAGS or fsize > limit \
                or version > zipfile.MAX_EXTRACT_VERSION or 0xFFFFFFFF in (csize, fsize, offset):
            return None
        raw_name = entry[46:46 + n_name]
        offset += self.concat
        get = region.get if region is not None else Region(self.fd, 0, b"").get
        head = get(offset, 30 + n_name)
        if len(head) != 30 + n_name or head[:4] != zipfile.stringFileHeader:
            return None
        l_flags, = _U16.unpack_from(head, 6)
        l_n_name, l_extra = _LENGTHS2.unpack_from(head, 26)
        if l_n_name != n_name or head[30:] != raw_name or (l_flags ^ flags) & 0x800:
            return None
        raw = get(offset + 30 + n_name + l_extra, csize)
        if len(raw) != csize:
            return None
        if method == zipfile.ZIP_STORED:
            if csize != fsize:
                return None
            data = raw
        else:
            inflater = zlib.decompressobj(-15)
            try:
                data = inflater.decompress(raw, fsize + 1)
            except zlib.error:
                return None
            if len(data) != fsize or not inflater.eof:
                return None
        if zlib.crc32(data) != crc:
            return None
        return raw_name, data


#: bytes allowed for a local header's extra field when a region is sized from the directory
_EXTRA_SLACK = 256
#: the most bytes one region read may hold
_MAX_REGION = 64 << 20


class Region:
    """Bytes ``offset:offset + len(data)`` of the archive; reads outside them go to the file."""

    __slots__ = ("fd", "offset", "data")

    def __init__(self, fd: int, offset: int, data: bytes):
        self.fd, self.offset, self.data = fd, offset, data

    def get(self, offset: int, n: int) -> bytes:
        i = offset - self.offset
        if i >= 0 and i + n <= len(self.data):
            return self.data[i:i + n]
        return os.pread(self.fd, n, offset)


def _is_dir(buf: bytes, i: int, n_name: int) -> bool:
    """Whether the entry at ``buf[i:]`` is a directory (its name, cut at a NUL, ends in ``/``)."""
    lo = i + 46
    nul = buf.find(b"\0", lo, lo + n_name)
    last = (nul if nul >= 0 else lo + n_name) - 1
    return last >= lo and buf[last] == 0x2F
