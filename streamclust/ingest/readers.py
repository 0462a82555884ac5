"""Archive readers: yield every file member of a zip, tar or folder, one at a time.

A reader never extracts the archive to disk and never holds it in memory whole: each
member's bytes are read (at most ``max_bytes + 1`` of them) when the member is reached.
Problems with a single member (a bad CRC, an encrypted entry, a link, an I/O error) are
returned as values on the :class:`Member`; only an unreadable archive raises
:class:`~streamclust.errors.SourceError`.
"""

from __future__ import annotations

import os
import stat
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import SourceError
from .zipdir import Region, Span, ZipDirectory, zip_info

__all__ = ["Member", "open_reader", "ArchiveReader", "source_kind", "TAR_SUFFIXES"]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass
class Member:
    """One file member of the source, in archive order."""

    position: int
    name: str
    data: bytes | None = None
    status: str = ""  # set when the reader itself could not deliver the bytes
    reason: str = ""
    note: str = ""
    size: int | None = None  # bytes read, when ``data`` was dropped after decoding

    @property
    def nbytes(self) -> int | None:
        return len(self.data) if self.data is not None else self.size


def _display_name(raw: bytes) -> tuple[str, str]:
    """A member name as text: UTF-8 when it is, else with backslash escapes and a note."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), "name is not valid UTF-8; shown with \\x escapes"


def source_kind(path: Path) -> str:
    """``"zip"``, ``"tar"`` or ``"dir"``; raises :class:`SourceError` otherwise."""
    if not path.exists():
        raise SourceError(f"source {str(path)!r} does not exist; give a .zip, .tar(.gz) or a folder of images")
    if path.is_dir():
        return "dir"
    if not path.is_file():  # from stat alone: a FIFO is never opened (that would wait for a writer)
        raise SourceError(
            f"source {str(path)!r} is not a regular file or a folder (a device, FIFO or socket); "
            "give a .zip, .tar(.gz) or a folder of images")
    if not os.access(path, os.R_OK):
        raise SourceError(f"source {str(path)!r} is not readable; check its permissions")
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError as exc:
        raise SourceError(f"source {str(path)!r} could not be read: {exc}") from None
    raise SourceError(
        f"source {str(path)!r} is neither a zip nor a tar archive nor a folder; "
        "pack the images with zip or tar, or point at their folder"
    )


class ArchiveReader:
    """Base class: ``len(reader)`` (when known) and ``reader.members(start)``."""

    kind = ""

    def __init__(self, path: Path, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes

    def count(self) -> int | None:
        """Number of file members when it is cheap to know, else ``None``."""
        return None

    def members(self, start: int = 0) -> Iterator[Member]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _too_large(self, pos: int, name: str, size: int, note: str = "") -> Member:
        return Member(pos, name, None, "too_large",
                      f"member is {size:,} bytes, over max_member_bytes={self.max_bytes:,}", note)


class ZipReader(ArchiveReader):
    """The file members of a zip, in directory order; the directory is read in slices
    (:mod:`.zipdir`), so the reader's memory does not grow with the member count."""

    kind = "zip"

    def __init__(self, path: Path, max_bytes: int):
        super().__init__(path, max_bytes)
        try:
            self._dir = ZipDirectory(path)
        except (zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
            raise SourceError(f"zip archive {str(path)!r} could not be read: {exc}") from None

    def count(self) -> int:
        return self._dir.count

    @staticmethod
    def _name(info: zipfile.ZipInfo) -> tuple[str, str]:
        if info.flag_bits & 0x800:
            return info.filename, ""
        try:  # no UTF-8 flag: zipfile decoded the name as cp437; many tools wrote UTF-8 anyway
            raw = info.filename.encode("cp437")
        except UnicodeEncodeError:
            return info.filename, ""
        name, note = _display_name(raw)
        if note:
            return info.filename, "name is not valid UTF-8; decoded as cp437"
        return name, ""

    def members(self, start: int = 0) -> Iterator[Member]:
        for pos, entry in self._dir.entries(start):
            yield self._member(pos, entry)

    def spans(self, start: int, max_bytes: int, max_members: int, stop: int | None = None) -> Iterator[Span]:
        """Blocks of members from ``start`` for :meth:`members_in` (see :meth:`ZipDirectory.spans`)."""
        return self._dir.spans(start, max_bytes, max_members, stop)

    def members_in(self, span: Span) -> Iterator[Member]:
        """The members of ``span``, read from the archive (with one read where they lie together)."""
        entries = self._dir.entries_in(span)
        region = self._dir.region(entries)
        for pos, entry in entries:
            yield self._member(pos, entry, region)

    def _member(self, pos: int, entry: bytes, region: Region | None = None) -> Member:
        plain = self._dir.read_plain(entry, self.max_bytes, region)
        if plain is not None and b"\0" not in plain[0]:
            raw, data = plain
            utf8 = entry[9] & 0x08  # flag bit 11: the name is UTF-8
            try:
                return Member(pos, raw.decode("utf-8"), data)
            except UnicodeDecodeError:
                if not utf8:  # zipfile's cp437 name, as _name gives it
                    return Member(pos, raw.decode("cp437"), data, note="name is not valid UTF-8; decoded as cp437")
        try:
            info = zip_info(entry, self._dir.concat)
        except (zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError, struct.error) as exc:
            return Member(pos, f"<zip member {pos}>", None, "unreadable", f"{type(exc).__name__}: {exc}")
        name, note = self._name(info)
        if info.flag_bits & 0x1:
            return Member(pos, name, None, "encrypted", "the member is encrypted", note)
        if info.file_size > self.max_bytes:
            return self._too_large(pos, name, info.file_size, note)
        try:
            data = self._dir.read(info, self.max_bytes)
        except zipfile.BadZipFile as exc:
            if "crc" in str(exc).lower():
                return Member(pos, name, None, "bad_crc", str(exc), note)
            return Member(pos, name, None, "unreadable", f"BadZipFile: {exc}", note)
        except NotImplementedError as exc:
            return Member(pos, name, None, "unreadable", f"unsupported zip feature: {exc}", note)
        except Exception as exc:  # noqa: BLE001 - zlib/lzma/I-O errors on one member
            return Member(pos, name, None, "unreadable", f"{type(exc).__name__}: {exc}", note)
        if len(data) > self.max_bytes:
            return self._too_large(pos, name, len(data), note)
        return Member(pos, name, data, note=note)

    def close(self) -> None:
        self._dir.close()


class _ResyncInfo(tarfile.TarInfo):
    """Reads a tar's headers as GNU tar does when one is damaged.

    Opened with ``ignore_zeros=True``, :class:`tarfile.TarFile` skips a block that is not
    a valid header and tries the next one; this class keeps that for damaged headers only
    (GNU tar's "Skipping to next header", after a header whose size field lies) and
    records where the skipping began and ended (``tf._resynced``), while a zero block
    still ends the archive, as it does without ``ignore_zeros``.  Without it, tarfile
    ends the archive silently at the first damaged header and every later member is lost.
    """

    @classmethod
    def fromtarfile(cls, tf):
        skipping = getattr(tf, "_damage_from", None)
        try:
            info = super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            if skipping is None and tf.offset:
                raise tarfile.EmptyHeaderError("end of archive") from None  # a zero block: the end
            raise  # inside damage: zero blocks are skipped like any other
        except tarfile.InvalidHeaderError:
            if skipping is None:
                tf._damage_from = tf.offset
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            if skipping is not None:  # damaged up to the end of the archive
                tf._resynced, tf._damage_from = (skipping, None), None
            raise
        if skipping is not None:
            tf._resynced, tf._damage_from = (skipping, info.offset), None
        return info


def _damage_reason(damage: tuple[int, int | None]) -> str:
    start, end = damage
    where = f"bytes {start:,} to {end:,} skipped to the next valid header" if end is not None else \
        f"no valid header from byte {start:,} to the end of the archive"
    return f"damaged tar stream: a header's size field does not lead to the next header ({where})"


class TarReader(ArchiveReader):
    """Streams a (possibly compressed) tar in one forward read; the count is unknown.

    A header whose size field lies (the next header is not where it says) does not end
    the archive: reading resumes at the next valid header, as GNU tar does, so every
    member GNU tar lists gets a row.  The member before the damage gets status
    ``unreadable`` (its size cannot be trusted), or the damage gets a row of its own.
    """

    kind = "tar"

    def members(self, start: int = 0) -> Iterator[Member]:
        try:
            tf = tarfile.open(self.path, mode="r|*", errorlevel=1, ignore_zeros=True, tarinfo=_ResyncInfo)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"tar archive {str(self.path)!r} could not be read: {exc}") from None
        pos = -1
        pending: Member | None = None  # held until the header after it is known to be sound
        try:
            while True:
                try:
                    info = tf.next()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    # the rest of the archive is damaged: record it and stop reading
                    if pending is not None and pending.position >= start:
                        yield pending
                    pos += 1
                    if pos >= start:
                        yield Member(pos, f"<tar data after member {pos}>", None, "unreadable",
                                     f"the tar stream is damaged from here on: {exc}")
                    return
                damage = getattr(tf, "_resynced", None)
                if damage is not None:
                    tf._resynced = None
                    if pending is not None:
                        reason = _damage_reason(damage)
                        pending = Member(pending.position, pending.name, None, "unreadable", reason, pending.note,
                                         size=pending.nbytes)
                    else:
                        pos += 1
                        pending = Member(pos, f"<tar data at byte {damage[0]:,}>", None, "unreadable",
                                         _damage_reason(damage))
                if pending is not None:
                    if pending.position >= start:
                        yield pending
                    pending = None
                if info is None:
                    return
                if info.isdir():
                    continue
                pos += 1
                if pos < start:
                    pending = Member(pos, "")  # not read again, but the damage after it still counts
                    continue
                name, note = _display_name(info.name.encode("utf-8", "surrogateescape"))
                if not info.isreg():
                    what = "symbolic link" if info.issym() else "hard link" if info.islnk() else "special file"
                    pending = Member(pos, name, None, "not_file", f"{what}, not a regular file", note)
                    continue
                if info.size > self.max_bytes:
                    pending = self._too_large(pos, name, info.size, note)
                    continue
                try:
                    fh = tf.extractfile(info)
                    data = fh.read(self.max_bytes + 1) if fh is not None else b""
                except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                    yield Member(pos, name, None, "unreadable", f"{type(exc).__name__}: {exc}", note)
                    return  # a stream read error leaves the stream unusable
                if len(data) < info.size:
                    pending = Member(pos, name, data, "truncated",
                                     f"the archive ends inside the member ({len(data):,} of {info.size:,} bytes)", note)
                    continue
                pending = Member(pos, name, data, note=note)
        finally:
            tf.close()


class DirReader(ArchiveReader):
    """Walks a folder recursively in sorted order (by the names' bytes)."""

    kind = "dir"

    def __init__(self, path: Path, max_bytes: int):
        super().__init__(path, max_bytes)
        root = os.fsencode(path)
        files: list[bytes] = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=None):
            dirnames.sort()
            for fn in sorted(filenames):
                files.append(os.path.relpath(os.path.join(dirpath, fn), root))
        self._files = sorted(files, key=lambda b: b.split(b"/"))

    def count(self) -> int:
        return len(self._files)

    def members(self, start: int = 0) -> Iterator[Member]:
        root = os.fsencode(self.path)
        for pos in range(start, len(self._files)):
            rel = self._files[pos]
            name, note = _display_name(rel.replace(os.sep.encode(), b"/"))
            full = os.path.join(root, rel)
            try:
                st = os.stat(full)
                if not stat.S_ISREG(st.st_mode):
                    yield Member(pos, name, None, "not_file", "not a regular file", note)
                    continue
                if st.st_size > self.max_bytes:
                    yield self._too_large(pos, name, st.st_size, note)
                    continue
                with open(full, "rb") as fh:
                    data = fh.read(self.max_bytes + 1)
            except OSError as exc:
                yield Member(pos, name, None, "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}", note)
                continue
            if len(data) > self.max_bytes:
                yield self._too_large(pos, name, len(data), note)
                continue
            yield Member(pos, name, data, note=note)


def open_reader(source: str | os.PathLike, max_bytes: int) -> ArchiveReader:
    """A reader for ``source`` (zip, tar or folder); raises :class:`SourceError` if it is none."""
    path = Path(source)
    kind = source_kind(path)
    return {"zip": ZipReader, "tar": TarReader, "dir": DirReader}[kind](path, max_bytes)
