"""The manifest: one CSV row per file member of the source, in archive order."""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = ["COLUMNS", "format_rows", "read_manifest", "status_counts"]

#: manifest columns, in order (documented in docs/store-format.md)
COLUMNS = (
    "position",      # 0-based order of the member in the source
    "index",         # row of images.zarr; empty when the member was skipped
    "member",        # path inside the archive (or relative to the folder), as stored
    "status",        # "ok" or a short word for the kind of skip
    "reason",        # human-readable; non-empty for every skip
    "width",         # original width in pixels (when the header could be read)
    "height",        # original height
    "format",        # Pillow's format name (JPEG, PNG, ...)
    "mode",          # original Pillow mode (RGB, L, P, RGBA, CMYK, I;16, ...)
    "bytes",         # size of the member in bytes (as read)
    "sha256",        # hash of the member's bytes
    "duplicate_of",  # for an ok image whose bytes repeat an earlier one: that one's index
    "note",          # caveats on an ok row (non-UTF-8 name, EXIF ignored, ...)
)


def _clean(value) -> str:
    return "" if value is None else str(value)


def format_rows(rows: Iterable[Sequence | dict]) -> bytes:
    """CSV-encode manifest rows as UTF-8 bytes.

    A row is a sequence of values in :data:`COLUMNS` order (None for an empty cell) or a
    dict keyed by :data:`COLUMNS` (missing keys are empty).
    """
    rows = [[_clean(row.get(col)) for col in COLUMNS] if isinstance(row, dict) else row for row in rows]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    text = buf.getvalue()
    if "\r" in text:
        # a carriage return inside a value (a member name): the minimal quoting leaves it bare,
        # and a reader would end the row there; such rows are written with every value quoted
        buf = io.StringIO()
        plain = csv.writer(buf, lineterminator="\n")
        quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        for row in rows:
            (quoted if any("\r" in str(v) for v in row if v is not None) else plain).writerow(row)
        text = buf.getvalue()
    return text.encode("utf-8")


def header() -> bytes:
    return (",".join(COLUMNS) + "\n").encode("utf-8")


def read_manifest(path: str | os.PathLike) -> Iterator[dict[str, str]]:
    """Yield the manifest's rows as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def status_counts(path: str | os.PathLike) -> Counter:
    return Counter(row["status"] for row in read_manifest(Path(path)))
