"""The ingest stage's writer: a source archive to ``images.zarr`` + ``manifest.csv``, resumably
(what ``streamclust ingest`` runs; the decode pool is :mod:`.pool`).

Resume protocol (datatrove/img2dataset style): decoded images are written chunk by chunk;
after each full chunk of ``images.zarr`` is written, the manifest rows of every member
consumed so far are appended (and fsynced) to ``.streamclust/manifest.part.csv``, and
only then is ``.streamclust/ingest_state.json`` replaced atomically with the new position
(members done, rows done, manifest bytes).  A killed run restarts from that state: the
array is cut back to the rows done, the manifest part to its recorded length, and the
members after the recorded position are read again.  The commit points depend only on
the source, so the result is byte-identical to an unbroken run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .._atomic import fsync_dir, write_json
from ..config import IngestConfig, load_run_config
from ..errors import ConfigMismatchError, SourceError
from ..lock import clear_state_dir, state_files
from .. import stages
from ..store import RunLayout, images_location, is_url, open_zarr, remove_store, storage_options, store_exists
from .batch import KEY_BYTES, Batch, collect
from .decode import DecodeParams, Decoded
from .digests import DigestIndex
from .manifest import COLUMNS, format_rows, header, read_manifest
from .pool import DecodedBatches, decoded_members_distributed
from .readers import ArchiveReader, Member, open_reader

__all__ = ["ingest", "IngestSummary", "IMAGE_CODEC"]

logger = logging.getLogger(__name__)


def image_compressors():
    """Codecs of ``images.zarr``: Blosc LZ4 with bit shuffling, then a CRC-32C checksum.

    Chosen by measurement (docs/benchmarks.md, "Codec"): on 64x64 images decoded from
    JPEGs it reads 1.6x faster than zstd level 3 at about the same size, and the models
    read the store many times.
    """
    import zarr

    from ..integrity import checksum_codecs

    # then each chunk's CRC-32C: a damaged chunk is an error, never a silent change (or a crash in blosc)
    return checksum_codecs(zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=1))


IMAGE_CODEC = "blosc(cname=lz4, clevel=5, shuffle=bitshuffle), crc32c"


@dataclass
class IngestSummary:
    """What an ingestion did."""

    run_dir: str
    members: int = 0
    ok: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    already_complete: bool = False
    resumed_from: int = 0

    def line(self) -> str:
        if self.already_complete:
            head = f"ingest already complete in {self.run_dir}: nothing to do."
        else:
            rate = (self.members - self.resumed_from) / self.seconds if self.seconds > 0 else 0.0
            head = f"ingested {self.run_dir} in {self.seconds:.1f} s ({rate:,.0f} members/s)."
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items())) or "none"
        return (f"{head} {self.members} members: {self.ok} ok ({self.duplicates} duplicates), "
                f"{sum(self.skipped.values())} skipped ({skipped}).")


def _remove_partials(layout: RunLayout, location: str) -> None:
    """Remove temp files of atomic writes that a kill interrupted (``NAME.<uuid>.partial``)."""
    strays = [*layout.root.glob("*.partial"), *layout.state_dir.glob("*.partial")]
    if not is_url(location) and Path(location).exists():
        strays += list(Path(location).rglob("*.partial"))
    for stray in strays:
        stray.unlink(missing_ok=True)


def _fingerprint(source: Path) -> dict:
    st = source.stat()
    fp = {"path": str(source.resolve())}
    if source.is_file():
        fp.update(bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    return fp



def staging_location(layout: RunLayout, store: str | None) -> str:
    """Where a distributed ingestion stages decoded pixels (one row per member).

    Beside the image array, so that the workers can reach it wherever that is: in the
    run's state folder for the default ``RUN_DIR/images.zarr``, else ``<store>-staging``.
    """
    return str(layout.state_dir / "staging.zarr") if store is None else store.rstrip("/") + "-staging"


def _open_staging(location: str, n_members: int, size: int):
    """The staging array, created (or re-created when its shape is not this run's)."""
    import zarr

    from .pool import TASK_MEMBERS_DISTRIBUTED

    shape = (n_members, size, size, 3)
    if store_exists(location):
        try:
            if open_zarr(location, "r").shape == shape:
                return
        except Exception:  # noqa: BLE001 - not an array: replace it
            pass
        remove_store(location)
    zarr.create_array(store=location, shape=shape, chunks=(TASK_MEMBERS_DISTRIBUTED, size, size, 3),
                      dtype="uint8", compressors=image_compressors(), fill_value=0, overwrite=True,
                      storage_options=storage_options(location))


def _reset_run_dir(layout: RunLayout) -> None:
    """``--overwrite``: remove everything streamclust wrote in the run directory (and its store)."""
    layout.invalidate_downstream("ingest")  # every stage made from the old images (streamclust.stages), markers first
    if layout.config.exists():
        saved_store = (load_run_config(layout.root).get("ingest") or {}).get("store")
        remove_store(images_location(layout.root))  # the earlier run's, wherever it was
        remove_store(staging_location(layout, saved_store))
    clear_state_dir(layout.state_dir)  # all but the writer's lock, held meanwhile
    for child in (layout.images, layout.manifest, layout.ingest_summary, layout.model_dir,
                  layout.config, layout.root / "report", layout.root / "assignments.csv"):
        if child.is_dir():
            shutil.rmtree(child)
        elif child.exists():
            child.unlink()


def _check_existing(layout: RunLayout, identity: dict, overwrite: bool) -> bool:
    """True when the run directory holds an ingestion with these settings (to resume/skip)."""
    saved = load_run_config(layout.root).get("ingest")
    if saved is None:
        if layout.images.exists() or state_files(layout.state_dir):
            if not overwrite:
                raise ConfigMismatchError(
                    f"{layout.root} holds files of an unknown earlier run; pass --overwrite to replace them"
                )
            _reset_run_dir(layout)
        return False
    saved_identity = {k: v for k, v in saved.items() if k != "workers"}
    saved_identity.setdefault("store", None)  # runs ingested before --store existed
    if saved_identity == identity:
        return True
    if not overwrite:
        diff = sorted(k for k in set(saved_identity) | set(identity) if saved_identity.get(k) != identity.get(k))
        raise ConfigMismatchError(
            f"{layout.root} was ingested with other settings ({', '.join(diff)} differ); "
            "pass --overwrite to start again, or use another RUN_DIR"
        )
    _reset_run_dir(layout)
    return False


def _load_state(state_path: Path) -> dict:
    if state_path.exists():
        return json.loads(state_path.read_text())
    return {"members_done": 0, "rows_done": 0, "manifest_bytes": 0, "finished": False}


def _check_part(layout: RunLayout, state: dict) -> dict:
    """The state to resume from: the one saved, unless the manifest rows it counts are gone.

    ``.streamclust/manifest.part.csv`` deleted (or cut) under a killed ingestion loses the
    rows of members already done; resuming would "complete" with fewer members than the
    source has.  Ingestion then starts again from the first member, with a warning.
    """
    part = layout.state_dir / "manifest.part.csv"
    have = part.stat().st_size if part.exists() else 0
    if state["manifest_bytes"] > 0 and have < state["manifest_bytes"]:
        logger.warning("%s is missing or shorter than the %d bytes committed: ingesting again from the first member",
                       part, state["manifest_bytes"])
        (layout.state_dir / "ingest_state.json").unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        return {"members_done": 0, "rows_done": 0, "manifest_bytes": 0, "finished": False}
    return state


class _Writer:
    """Appends chunks to images.zarr and rows to the manifest part; commits the state.

    Decoded members arrive a :class:`~.batch.Batch` at a time; their pixels are copied
    straight into the chunk being filled, and a chunk is committed the moment its last
    image arrives (with the manifest rows of every member up to that one), wherever that
    falls in a batch, or after :attr:`COMMIT_MEMBERS` members without a commit: the
    commit points depend only on the source.  Commits run on a
    background thread, one at a time and in order (images, then the manifest rows, then
    the state), so decoding goes on while a chunk is compressed and written.
    """

    #: members gathered by :meth:`add` before they are handed to :meth:`add_batch`
    PAIRS_PER_BATCH = 256
    #: a commit also comes after this many members without one (the rows held stay
    #: bounded in an archive of few images); the chunk in progress is then written in part
    COMMIT_MEMBERS = 1 << 14

    def __init__(self, layout: RunLayout, cfg: IngestConfig, state: dict, *, client=None, staging: str | None = None):
        import zarr  # imported here: the decode workers start up meanwhile

        #: with a dask client and a staging array, a chunk is written by a worker from the
        #: staged pixels (the buffered "images" are then member positions)
        self.client, self.staging = client, staging
        self.location = cfg.store or str(layout.images)

        self.layout = layout
        self.size = cfg.size
        self.chunk = cfg.resolved_chunk_size
        self.state_path = layout.state_dir / "ingest_state.json"
        self.part_path = layout.state_dir / "manifest.part.csv"
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = state
        shape = (self.state["rows_done"], self.size, self.size, 3)
        location = self.location
        if self.state["rows_done"] == 0 and not self.state_path.exists():
            array = zarr.create_array(
                store=location, shape=shape, chunks=(self.chunk, self.size, self.size, 3),
                dtype="uint8", compressors=image_compressors(), fill_value=0, overwrite=True,
                dimension_names=("image", "y", "x", "channel"), storage_options=storage_options(location),
            )
        else:
            array = open_zarr(location, mode="r+")
            if array.shape != shape:
                array.resize(shape)  # drops rows written after the last commit
        # skip zarr's "is this chunk all fill value?" scan: a third of a chunk write's time
        self.array = array.with_config({"write_empty_chunks": True})
        # cut the manifest part back to the last commit
        if not self.part_path.exists() or self.state["manifest_bytes"] == 0:
            with open(self.part_path, "wb") as fh:
                fh.write(header())
            self.state["manifest_bytes"] = len(header())
        else:
            with open(self.part_path, "r+b") as fh:
                fh.truncate(self.state["manifest_bytes"])
        self.digests = DigestIndex(KEY_BYTES)
        self.counts: Counter = Counter()
        self.duplicates = 0
        self._rebuild_index()
        self.pairs: list = []
        self.buffer = self._new_buffer()
        self._spare = None  # the buffer of the commit before the last: free again once that one ended
        self.buffer_row = self.state["rows_done"]  # store row of the buffer's first image
        self.filled = 0  # images in the buffer
        self.rows: list[tuple] = []
        self.next_index = self.state["rows_done"]  # row of the next ok image
        self.next_position = self.state["members_done"]
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="streamclust-ingest-commit")
        self._pending: Future | None = None

    def _new_buffer(self):
        """The chunk being filled: pixels, or (staged on dask workers) member positions."""
        if self.staging is not None:
            return np.empty(self.chunk, np.int64)
        return np.empty((self.chunk, self.size, self.size, 3), np.uint8)

    def _rebuild_index(self) -> None:
        """Counts and the duplicate index from the committed manifest rows (a resume)."""
        keys: list[bytes] = []
        rows: list[int] = []

        def flush():
            self.digests.first(b"".join(keys), np.asarray(rows, np.int64))
            keys.clear()
            rows.clear()

        for row in read_manifest(self.part_path):
            self.counts[row["status"]] += 1
            if row["status"] == "ok":
                keys.append(bytes.fromhex(row["sha256"][:2 * KEY_BYTES]))
                rows.append(int(row["index"]))
                self.duplicates += bool(row["duplicate_of"])
                if len(keys) >= 65536:
                    flush()
        flush()

    def add(self, member: Member, dec: Decoded | None) -> None:
        """One decoded member (``dec`` None: the reader could not deliver it)."""
        self.pairs.append((member, dec))
        if len(self.pairs) >= self.PAIRS_PER_BATCH:
            self._flush_pairs()

    def _flush_pairs(self) -> None:
        if self.pairs:
            pairs, self.pairs = self.pairs, []
            self.add_batch(collect(pairs, self.size))

    def add_batch(self, batch: Batch) -> None:
        """The next members of the source; commits at every commit point they pass."""
        n_ok = len(batch.ok)
        index = np.arange(self.next_index, self.next_index + n_ok, dtype=np.int64)
        first = self.digests.first(batch.keys, index)
        dup = first != index
        self.duplicates += int(dup.sum())
        self.counts.update(row[2] for row in batch.rows)
        images = batch.pixels if batch.pixels is not None else np.asarray(batch.positions, np.int64)
        n_rows = len(batch.rows)
        row = done = 0  # rows and ok images of the batch handed over
        while row < n_rows:
            # the next commit point: the image that completes the chunk, or the member
            # that makes COMMIT_MEMBERS since the last commit (whichever comes first)
            need = self.chunk - (self.buffer_row + self.filled) % self.chunk
            cut = row + self.COMMIT_MEMBERS - len(self.rows)
            if done + need <= n_ok:
                cut = min(cut, batch.ok[done + need - 1] + 1)
            commit = cut <= n_rows
            cut = min(cut, n_rows)
            upto = bisect_left(batch.ok, cut, lo=done)
            self.buffer[self.filled:self.filled + upto - done] = images[done:upto]
            self.filled += upto - done
            self._rows(batch, row, cut, index, first, dup)
            self.next_position = batch.rows[cut - 1][0] + 1
            row, done = cut, upto
            if commit:
                self.commit()
        self.next_index += n_ok

    def _rows(self, batch: Batch, lo: int, hi: int, index, first, dup) -> None:
        """Manifest rows ``lo:hi`` of ``batch``, in :data:`COLUMNS` order."""
        if lo >= hi:
            return
        ok = {r: k for k, r in enumerate(batch.ok) if lo <= r < hi}
        out = self.rows
        for r in range(lo, hi):
            pos, name, status, reason, w, h, fmt, mode, nbytes, sha, note = batch.rows[r]
            k = ok.get(r)
            if k is None:
                out.append((pos, None, name, status, reason, w, h, fmt, mode, nbytes, sha, None, note))
            else:
                out.append((pos, int(index[k]), name, status, reason, w, h, fmt, mode, nbytes, sha,
                            int(first[k]) if dup[k] else None, note))

    def commit(self) -> None:
        """Hand the buffered chunk to the commit thread (after the previous commit ended)."""
        self.wait()
        self._pending = self._thread.submit(self._commit, self.buffer[:self.filled], self.rows, self.next_position)
        self.buffer_row += self.filled
        # two buffers in turn (the one being written, the one being filled): a new one per
        # chunk would cost its pages' first touch every time
        spare = self._spare if self._spare is not None else self._new_buffer()
        self.buffer, self._spare, self.filled, self.rows = spare, self.buffer, 0, []

    def wait(self) -> None:
        """Wait for the commit in progress; re-raises its error (a full disk, say)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _commit(self, images: np.ndarray, rows: list[tuple], next_position: int) -> None:
        """Write the images, then the manifest rows, then (last) the state."""
        rows_done = self.state["rows_done"]
        n = len(images)
        if n:
            self.array.resize((rows_done + n, self.size, self.size, 3))
            if self.staging is None:
                self.array[rows_done:rows_done + n] = images
            else:  # staged on the workers: one of them writes the chunk
                from .pool import write_rows_from_staging

                done = self.client.submit(write_rows_from_staging, self.staging, images.tolist(), self.location,
                                          rows_done, pure=False).result()
                if done != n:  # pragma: no cover - a worker wrote another number of rows
                    raise RuntimeError(f"a worker wrote {done} rows of {n} at row {rows_done}")
            rows_done += n
        data = format_rows(rows)
        with open(self.part_path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.state.update(members_done=next_position, rows_done=rows_done,
                          manifest_bytes=self.state["manifest_bytes"] + len(data))
        write_json(self.state_path, self.state)

    def finish(self) -> None:
        self._flush_pairs()
        self.commit()
        self.wait()
        self.state["finished"] = True
        write_json(self.state_path, self.state)

    def close(self) -> None:
        """Let a commit in progress end (it is consistent either way), then stop the thread."""
        self._thread.shutdown(wait=True)


def ingest(
    config: IngestConfig,
    run_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    client=None,
) -> IngestSummary:
    """Ingest ``config.source`` into ``run_dir``; resumes an interrupted run.

    Parameters
    ----------
    config : IngestConfig
        The settings (source, size, chunk size, limits, workers).
    run_dir : path
        Created if missing.  A completed ingestion with the same settings is a no-op; other
        settings raise :class:`~streamclust.errors.ConfigMismatchError` unless ``overwrite``.
    overwrite : bool, default=False
        Remove an earlier run's outputs and start again.
    progress : bool or None, default=None
        Show a tqdm bar; ``None`` shows it only when stderr is a terminal.
    client : distributed.Client, default=None
        Decode on a dask cluster (one task per block of members); the driver writes the
        store and manifest in source order, so the result is identical.

    Returns
    -------
    IngestSummary
    """
    layout = RunLayout.of(run_dir)
    source = Path(config.source)
    reader = open_reader(source, config.max_member_bytes)  # raises before anything is written
    identity = config.identity()
    identity["source"] = _fingerprint(source)
    try:
        if layout.root.exists() and not layout.root.is_dir():
            raise SourceError(f"RUN_DIR {str(layout.root)!r} exists and is not a directory")
        same = layout.root.is_dir() and _check_existing(layout, identity, overwrite)
        if same and layout.is_done("ingest"):
            summary = IngestSummary(str(layout.root), already_complete=True)
            _fill_counts(summary, layout.manifest)
            logger.debug(summary.line())
            return summary
        if config.store is not None and not same and store_exists(config.store):
            if not overwrite:  # another run's images, or anything else: never written over silently
                raise ConfigMismatchError(f"--store {config.store} already exists and is not this run's; "
                                          "pass --overwrite to replace it, or name another location")
            remove_store(config.store)
        layout.root.mkdir(parents=True, exist_ok=True)
        run_cfg = load_run_config(layout.root)
        run_cfg["ingest"] = {**identity, "workers": config.workers}
        write_json(layout.config, run_cfg)
        return _run(reader, config, layout, progress, client)
    finally:
        reader.close()


def _fill_counts(summary: IngestSummary, manifest: Path) -> None:
    counts: Counter = Counter()
    duplicates = 0
    for row in read_manifest(manifest):
        counts[row["status"]] += 1
        duplicates += bool(row["duplicate_of"])
    _set_counts(summary, counts, duplicates)


def _set_counts(summary: IngestSummary, counts: Counter, duplicates: int) -> None:
    counts = Counter(counts)
    summary.members = sum(counts.values())
    summary.ok = counts.pop("ok", 0)
    summary.skipped = dict(counts)
    summary.duplicates = duplicates


def _run(reader: ArchiveReader, config: IngestConfig, layout: RunLayout, progress: bool | None,
         client=None) -> IngestSummary:
    t0 = time.perf_counter()
    _remove_partials(layout, config.store or str(layout.images))
    state_path = layout.state_dir / "ingest_state.json"
    if state_path.exists() and json.loads(state_path.read_text()).get("finished") and layout.manifest.exists() \
            and not (layout.state_dir / "manifest.part.csv").exists():
        remove_store(staging_location(layout, config.store))  # killed while finalising
        return _finalise(layout, t0, json.loads(state_path.read_text())["members_done"])
    state = _check_part(layout, _load_state(state_path))
    start = state["members_done"]
    if start:
        logger.info("resuming ingestion at member %d (%d images already written)", start, state["rows_done"])
    counts = None  # (status counts, duplicates) of every row, when the writer ran
    if not state["finished"]:  # (finished: killed before the manifest was moved into place)
        params = DecodeParams(config.size, config.max_pixels, config.min_side, config.max_aspect, config.background)
        staged = None
        if client is not None:
            if reader.kind in ("zip", "dir") and reader.count() is not None:
                staged = staging_location(layout, config.store)
                _open_staging(staged, reader.count(), config.size)
            stream = decoded_members_distributed(reader, start, params, client, staging=staged)
        else:  # the decode workers start now, while the writer opens the store
            stream = DecodedBatches(reader, start, params, config.resolved_workers)
        bar = None
        try:
            writer = _Writer(layout, config, state, client=client, staging=staged)
            from tqdm.auto import tqdm  # (imported late too)

            try:
                bar = tqdm(total=reader.count(), initial=start, unit="img", desc="ingest", dynamic_ncols=True,
                           disable=(not progress) if progress is not None else None, file=sys.stderr)
                if client is not None:
                    for member, dec in stream:
                        writer.add(member, dec)
                        bar.update(1)
                else:
                    for batch in stream:
                        writer.add_batch(batch)
                        bar.update(len(batch.rows))
                        skipped = sum(v for k, v in writer.counts.items() if k != "ok")
                        bar.set_postfix(ok=writer.counts["ok"], skipped=skipped, refresh=False)
                writer.finish()
                counts = writer.counts, writer.duplicates
            finally:
                writer.close()
        finally:
            stream.close()
            if bar is not None:
                bar.close()
    os.replace(layout.state_dir / "manifest.part.csv", layout.manifest)
    fsync_dir(layout.root)
    remove_store(staging_location(layout, config.store))
    return _finalise(layout, t0, start, counts)


def _finalise(layout: RunLayout, t0: float, start: int, counts: tuple[Counter, int] | None = None) -> IngestSummary:
    """Write the summary, then (last) the completion marker.  ``counts``: the writer's
    (status counts, duplicates); without them they are read back from the manifest."""
    summary = IngestSummary(str(layout.root), seconds=time.perf_counter() - t0, resumed_from=start)
    if counts is None:
        _fill_counts(summary, layout.manifest)
    else:
        _set_counts(summary, *counts)
    images, manifest = _records(layout, summary)
    write_json(layout.ingest_summary, {
        "members": summary.members, "ok": summary.ok, "duplicates": summary.duplicates,
        "skipped": summary.skipped, "seconds": round(summary.seconds, 3), "resumed_from": start,
        "codec": IMAGE_CODEC, "columns": list(COLUMNS),
    })
    # what later commands check on open (streamclust.integrity): the array's shape and chunks, the manifest's size
    stages.complete(layout, "ingest", ok=summary.ok, members=summary.members, images=images, manifest=manifest)
    logger.debug(summary.line())
    return summary


def _records(layout: RunLayout, summary: IngestSummary) -> tuple[dict, dict]:
    """The integrity records of a finished ingestion, after checking that it is whole: a
    manifest row for every member done, an image row for every ok member, every chunk written."""
    from ..errors import IntegrityError
    from ..integrity import array_record, manifest_record, rebuild_command

    state_path = layout.state_dir / "ingest_state.json"
    done = json.loads(state_path.read_text()).get("members_done") if state_path.exists() else None
    location = images_location(layout.root)
    images = array_record(location)
    n_rows, chunk = images["shape"][0], images["chunks"][0]
    problem = None
    if done is not None and summary.members != done:
        problem = f"{layout.manifest}: {summary.members:,} rows for the {done:,} members ingested"
    elif n_rows != summary.ok:
        problem = f"{location}: {n_rows:,} images for the {summary.ok:,} ok rows of the manifest"
    elif len(images["chunk_bytes"]) != -(-n_rows // chunk):
        problem = f"{location}: {len(images['chunk_bytes'])} chunks written of {-(-n_rows // chunk)}"
    if problem:
        raise IntegrityError(f"{problem}; rebuild with `{rebuild_command(layout, 'images')}`")
    return images, manifest_record(layout.manifest, summary.members)
