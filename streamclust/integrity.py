"""Integrity of a run directory's files: checksummed chunks, and counts recorded at completion.

Two cheap defences, so that a damaged file is a clear error and never a silently wrong
result (or a crash in a decompressor):

checksums
    Every zarr array streamclust writes (``images.zarr``, ``features.zarr``,
    ``embedding.zarr``, ``latents.zarr``) ends its codec chain with zarr v3's ``crc32c``
    codec (:func:`checksum_codecs`): each chunk carries the CRC-32C of its stored bytes,
    checked on every read before the decompressor sees them.  A flipped byte or a cut
    chunk fails the check: the arrays streamclust opens (:func:`open_checked`) raise an
    :class:`~streamclust.errors.IntegrityError` naming the chunk (zarr's own check would
    raise a ``ValueError`` that names neither the chunk nor the array).
records
    When a stage completes, its marker records what it wrote (:func:`array_record`: the
    shape, the chunk shape and the size in bytes of every chunk; :func:`manifest_record`:
    the manifest's rows and bytes).  Opening the output checks them
    (:func:`verify_array`, :func:`verify_manifest`): a chunk missing or of another size,
    another shape, a manifest of another size.  That lists the chunk keys (one directory
    walk) and hashes nothing; :func:`verify_checksums` reads every chunk and checks its
    CRC (what ``fit --overwrite`` does before discarding a fit).

Stores written before the checksums and the records (no ``crc32c`` codec, no record in
the marker) open and work as before: what was not recorded is not checked.

Every failure is an :class:`~streamclust.errors.IntegrityError` whose message is one line
naming the file and the command that rebuilds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import IntegrityError

if TYPE_CHECKING:
    from .store import RunLayout

__all__ = ["checksum_codecs", "has_checksums", "array_record", "manifest_record", "open_checked", "verify_array",
           "verify_manifest", "check_manifest_rows", "verify_checksums", "ingest_records", "verify_images",
           "verify_output", "fit_damage", "rebuild_command", "OUTPUTS"]

#: the codec that ends every chain streamclust writes (zarr v3 core codec, google-crc32c)
CHECKSUM_CODEC = "crc32c"

#: checked outputs of the later stages: artefact -> (the marker that records it, the command that rebuilds it)
OUTPUTS: dict[str, tuple[str, str]] = {
    "features": ("fit-features", "streamclust fit {run} --overwrite"),
    "embedding": ("fit-embedding", "streamclust fit {run} --overwrite"),
    "latents": ("encode", "streamclust encode {run} --overwrite"),
}

_METADATA = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def checksum_codecs(*compressors) -> tuple:
    """``compressors`` followed by zarr's ``Crc32cCodec``: what ``zarr.create_array(compressors=...)`` gets."""
    import zarr

    return (*compressors, zarr.codecs.Crc32cCodec())


def has_checksums(array) -> bool:
    """Whether ``array``'s chunks carry a ``crc32c`` checksum (stores written before them do not)."""
    try:
        return any(getattr(c, "to_dict", lambda: {})().get("name") == CHECKSUM_CODEC
                   for c in array.metadata.codecs)
    except AttributeError:  # zarr format 2
        return False


# ------------------------------------------------------------------------------ listing
def _is_url(location: str) -> bool:
    return "://" in str(location)


def _chunk_sizes(location: str) -> dict[str, int]:
    """``{chunk key: bytes}`` of the array at ``location`` (its metadata and ``.partial`` files left out)."""
    out: dict[str, int] = {}
    if _is_url(location):
        from .store import _store_fs

        fs, root = _store_fs(location)
        root = root.rstrip("/")
        for path, info in fs.find(root, detail=True).items():
            key = path[len(root):].lstrip("/")
            if key.rsplit("/", 1)[-1] not in _METADATA and not key.endswith(".partial"):
                out[key] = int(info.get("size") or 0)
        return out
    root = str(location)
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for fn in files:
            if fn in _METADATA or fn.endswith(".partial"):
                continue
            key = fn if rel == "." else f"{rel}/{fn}".replace(os.sep, "/")
            try:
                out[key] = os.stat(os.path.join(dirpath, fn)).st_size
            except FileNotFoundError:  # pragma: no cover - removed while listing
                continue
    return out


def _show(key: str) -> str:
    """``c/3/0/0/0`` as the brief form ``3.0.0.0``."""
    parts = key.split("/")
    if parts[0] == "c" and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts)


# ------------------------------------------------------------------------------ records
def array_record(location: str | os.PathLike) -> dict:
    """What a completed stage records of the array it wrote: shape, chunk shape, each chunk's size."""
    from .store import open_zarr

    array = open_zarr(str(location), "r")
    return {"shape": [int(s) for s in array.shape], "chunks": [int(c) for c in array.chunks],
            "chunk_bytes": dict(sorted(_chunk_sizes(str(location)).items())),
            "checksums": has_checksums(array)}


def manifest_record(path: str | os.PathLike, rows: int) -> dict:
    """What ingestion records of ``manifest.csv``: its rows (members) and its size in bytes."""
    return {"rows": int(rows), "bytes": Path(path).stat().st_size}


def _fail(name: str, problem: str, rebuild: str) -> IntegrityError:
    return IntegrityError(f"{name}: {problem}; rebuild with `{rebuild}`")


def verify_array(location: str | os.PathLike, record: dict | None, *, rebuild: str):
    """Open the array at ``location`` read-only, checked against ``record`` (:func:`array_record`).

    Raises :class:`IntegrityError` when the array is missing or unreadable, when its shape
    or chunk shape differ from the recorded ones, or a recorded chunk is missing or of
    another size (truncated, or written over).  Without a record (a store written before
    records were kept) only the opening is checked.
    """
    from .store import open_zarr

    name = str(location)
    try:
        array = open_zarr(name, "r")
    except FileNotFoundError:
        raise _fail(name, "the array is missing", rebuild) from None
    except Exception as exc:  # noqa: BLE001 - zarr.json unreadable or not an array
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise _fail(name, f"the array cannot be opened ({why})", rebuild) from None
    if not record:
        if not has_checksums(array):
            _check_blosc_sizes(name, array, rebuild)
        return open_checked(name, rebuild=rebuild)
    if list(array.shape) != list(record["shape"]):
        raise _fail(name, f"its shape is {tuple(array.shape)}, but {tuple(record['shape'])} was written", rebuild)
    if list(array.chunks) != list(record["chunks"]):
        raise _fail(name, f"its chunk shape is {tuple(array.chunks)}, but {tuple(record['chunks'])} was written",
                    rebuild)
    expected = record.get("chunk_bytes") or {}
    found = _chunk_sizes(name)
    for key, size in expected.items():
        if key not in found:
            raise _fail(name, f"chunk {_show(key)} is missing", rebuild)
        if found[key] != size:
            raise _fail(name, f"chunk {_show(key)} is {found[key]:,} bytes, but {size:,} were written "
                              "(truncated or written over)", rebuild)
    extra = sorted(set(found) - set(expected))
    if extra:
        raise _fail(name, f"chunk {_show(extra[0])} was not written by streamclust", rebuild)
    return open_checked(name, rebuild=rebuild)


def _checked_store_class():
    """:class:`zarr.storage.WrapperStore` that checks each chunk's CRC-32C as it is read,
    so that a damaged chunk is an :class:`IntegrityError` naming it (zarr's codec would
    check it too, but its ``ValueError`` does not say which chunk of which array)."""
    global _CheckedStore
    if _CheckedStore is not None:
        return _CheckedStore
    import google_crc32c
    from zarr.storage import WrapperStore

    class CheckedStore(WrapperStore):
        def __init__(self, store, name: str = "", rebuild: str = ""):
            super().__init__(store)
            self._name, self._rebuild = name, rebuild

        def _with_store(self, store):
            return type(self)(store, self._name, self._rebuild)

        def __reduce__(self):  # module level, so that dask can ship the array to its workers
            return _checked_store, (self._store, self._name, self._rebuild)

        async def get(self, key, prototype, byte_range=None):
            buf = await self._store.get(key, prototype, byte_range)
            if buf is not None and byte_range is None and key.rsplit("/", 1)[-1] not in _METADATA:
                data = buf.as_numpy_array()
                if len(data) < 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != bytes(data[-4:]):
                    raise _fail(self._name, f"chunk {_show(key)} fails its checksum (damaged on disk)", self._rebuild)
            return buf

    _CheckedStore = CheckedStore
    return CheckedStore


_CheckedStore = None


def _checked_store(store, name: str, rebuild: str):
    return _checked_store_class()(store, name, rebuild)


def open_checked(location: str | os.PathLike, *, rebuild: str):
    """The array at ``location``, read-only; with checksums, each chunk read is checked (see
    :func:`_checked_store_class`), without (a store written before them) as zarr opens it."""
    import zarr

    from .store import open_zarr, storage_options

    name = str(location)
    array = open_zarr(name, "r")
    if not has_checksums(array):
        return array
    if _is_url(name):
        store = zarr.storage.FsspecStore.from_url(name, storage_options=storage_options(name), read_only=True)
    else:
        store = zarr.storage.LocalStore(name, read_only=True)
    return zarr.open_array(store=_checked_store(store, name, rebuild), mode="r")


def _check_blosc_sizes(name: str, array, rebuild: str) -> None:
    """A store written before checksums and records (local, Blosc-compressed): each chunk's
    size against the compressed size its Blosc header states (16 bytes read per chunk), so
    that a truncated chunk is an error rather than a crash in the decompressor."""
    import struct

    if _is_url(name) or not any(getattr(c, "to_dict", lambda: {})().get("name") == "blosc"
                                for c in array.metadata.codecs):
        return
    for key, size in sorted(_chunk_sizes(name).items()):
        with open(os.path.join(name, key), "rb") as fh:
            head = fh.read(16)
        stated = struct.unpack_from("<I", head, 12)[0] if len(head) == 16 else None
        if stated != size:
            said = f"its Blosc header states {stated:,}" if stated is not None else "shorter than a Blosc header"
            raise _fail(name, f"chunk {_show(key)} is {size:,} bytes, but {said} (truncated)", rebuild)


def _read_chunks(location: str) -> Iterator[tuple[str, bytes]]:
    if _is_url(location):
        from .store import _store_fs

        fs, root = _store_fs(location)
        for key in sorted(_chunk_sizes(location)):
            yield key, fs.cat_file(f"{root.rstrip('/')}/{key}")
        return
    for key in sorted(_chunk_sizes(location)):
        with open(os.path.join(location, key), "rb") as fh:
            yield key, fh.read()


def verify_checksums(location: str | os.PathLike, *, rebuild: str) -> int:
    """Check the CRC-32C of every chunk of the array at ``location`` (read, not decompressed).

    Returns the number of chunks checked (0 for a store written without checksums);
    raises :class:`IntegrityError` naming the first chunk whose checksum fails.
    """
    import google_crc32c  # zarr's own dependency for its crc32c codec

    from .store import open_zarr

    name = str(location)
    try:
        array = open_zarr(name, "r")
    except Exception:  # noqa: BLE001 - verify_array says why
        return 0
    if not has_checksums(array):
        return 0
    n = 0
    for key, data in _read_chunks(name):
        if len(data) < 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
            raise _fail(name, f"chunk {_show(key)} fails its checksum (damaged on disk)", rebuild)
        n += 1
    return n


def verify_manifest(path: str | os.PathLike, record: dict | None, *, rebuild: str) -> None:
    """Check ``manifest.csv`` against ``record`` (:func:`manifest_record`): present, of the recorded size."""
    name = str(path)
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        raise _fail(name, "the file is missing", rebuild) from None
    if record and size != record["bytes"]:
        raise _fail(name, f"the file is {size:,} bytes, but {record['bytes']:,} were written (cut short or edited)",
                    rebuild)


def check_manifest_rows(path: str | os.PathLike, rows: int, record: dict | None, *, rebuild: str) -> None:
    """The rows read from the manifest against the recorded count."""
    if record and rows != record["rows"]:
        raise _fail(str(path), f"the file has {rows:,} rows, but {record['rows']:,} were written (cut short or edited)",
                    rebuild)


# ------------------------------------------------------------------------------ the run's files
def _marker(layout: "RunLayout", stage: str) -> dict:
    try:
        value = json.loads(layout.marker(stage).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def rebuild_command(layout: "RunLayout", artefact: str) -> str:
    """The command that rebuilds ``artefact`` (``images``, ``manifest``, ``features``, a model file ...)."""
    run = str(layout.root)
    if artefact in ("images", "manifest"):
        from .config import load_run_config

        try:
            source = ((load_run_config(run).get("ingest") or {}).get("source") or {}).get("path") or "SOURCE"
        except Exception:  # noqa: BLE001 - an unreadable config.json is said elsewhere
            source = "SOURCE"
        return f"streamclust ingest {source} {run} --overwrite"
    if artefact in OUTPUTS:
        return OUTPUTS[artefact][1].format(run=run)
    return f"streamclust fit {run} --overwrite"


def ingest_records(layout: "RunLayout") -> tuple[dict | None, dict | None]:
    """``(images record, manifest record)`` of the ingestion's marker (``None``: not recorded)."""
    marker = _marker(layout, "ingest")
    return marker.get("images"), marker.get("manifest")


def verify_images(layout: "RunLayout", location: str, *, checksums: bool = False):
    """Open the run's image array checked against the ingestion's records (and the manifest's size).

    ``checksums``: also read every chunk and check its CRC (:func:`verify_checksums`).
    """
    images, manifest = ingest_records(layout)
    if manifest is not None:
        verify_manifest(layout.manifest, manifest, rebuild=rebuild_command(layout, "manifest"))
    rebuild = rebuild_command(layout, "images")
    array = verify_array(location, images, rebuild=rebuild)
    if checksums:
        verify_checksums(location, rebuild=rebuild)
    return array


def verify_output(layout: "RunLayout", artefact: str, *, checksums: bool = False):
    """Open ``features``, ``embedding`` or ``latents`` read-only, checked against its stage's record."""
    stage, _ = OUTPUTS[artefact]
    record = _marker(layout, stage).get("array")
    location = str(layout.path(artefact))
    rebuild = rebuild_command(layout, artefact)
    array = verify_array(location, record, rebuild=rebuild)
    if checksums:
        verify_checksums(location, rebuild=rebuild)
    return array


def fit_damage(layout: "RunLayout") -> IntegrityError | None:
    """The first damage found in a completed fit's outputs (``features.zarr``, ``embedding.zarr``,
    ``model/*.npz``), or ``None``: what ``fit --overwrite`` fits again even with the same settings."""
    from .models.io import load_model

    try:
        if layout.is_done("fit-features"):
            verify_output(layout, "features", checksums=True)
        if layout.is_done("fit-embedding"):
            verify_output(layout, "embedding", checksums=True)
        for path in sorted(layout.model_dir.glob("*.npz")) if layout.model_dir.is_dir() else ():
            load_model(path)
    except IntegrityError as exc:
        return exc
    return None
