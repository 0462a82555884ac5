"""One writer per run directory: an advisory lock held by every command that writes.

A writing command (``ingest``, ``fit``, ``assign``, ... and the :class:`streamclust.Run`
methods behind them) holds ``RUN_DIR/.streamclust/lock`` with ``fcntl.flock`` while it
runs; a second writer is refused at once with :class:`~streamclust.errors.RunLockedError`,
naming the holder from the JSON sidecar ``.streamclust/lock.json`` (pid, host, command,
start time).  Readers (``Run.models``, ``run.assignments``, opening ``images.zarr``) take
no lock.

The kernel drops a ``flock`` when its process dies, however it dies (``kill -9``, the OOM
killer), so a lock left by a dead process is simply taken over by the next writer: the
lock file and sidecar it left are reused.  A lock is re-entrant within a process (``run``
calls ``ingest``, ``fit``, ``assign`` and ``report`` holding it once; threads of one
process share it), and released when
the outermost holder ends: the sidecar and the lock file are removed, and so are the
``.streamclust`` folder and ``RUN_DIR`` when the lock created them and nothing else was
written there, so a refused command leaves the run directory as it found it.  Where this
process cannot create the lock file (a read-only mount, no write permission) it goes on
unlocked: it cannot write the run either, and a write it tries is the operating system's
error, in one line.

On NFS (v4, or v3 with lockd) Linux maps ``flock`` to a byte-range lock the server
arbitrates, so writers on two machines exclude each other (the refusal names the
holder's host); on file systems without locking (some FUSE mounts, SMB without
byte-range locks) it may lock nothing: run one writer per run directory there yourself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import RunDirError, RunLockedError

__all__ = ["RunLock", "run_lock", "holder", "LOCK_FILES", "is_lock_file", "state_files", "clear_state_dir"]

logger = logging.getLogger(__name__)

#: the lock file and its sidecar, in ``RUN_DIR/.streamclust`` (never part of a stage's state)
LOCK_FILES = ("lock", "lock.json")

_REGISTRY_LOCK = threading.RLock()

#: errors creating the lock that mean the run directory cannot be written at all from here
_CANNOT_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass
class _Held:
    fd: int
    path: Path  # the lock file, absolute
    count: int
    created: list[Path] = field(default_factory=list)  # folders the lock made, innermost last


_HELD: dict[str, _Held] = {}  # resolved RUN_DIR -> the lock this process holds on it


def _forget_after_fork() -> None:  # a forked child holds nothing of its own: it must ask again
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _command_line(stage: str) -> str:
    """How the holding process was started, for the refusal message."""
    argv = list(sys.argv)
    first = Path(argv[0]).name if argv and argv[0] else ""
    if first == "streamclust" or argv[:1] and argv[0].endswith(os.path.join("streamclust", "__main__.py")):
        return " ".join(["streamclust", *argv[1:]])[:300]
    return (f"Run.{stage.replace('-', '_')}() in " + " ".join(["python", *argv]))[:300]


def _check_parents(root: Path) -> None:
    """Refuse a RUN_DIR that is, or is under, something other than a folder."""
    if root.exists() and not root.is_dir():
        raise RunDirError(f"RUN_DIR {str(root)!r} exists and is not a directory; name a folder")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"RUN_DIR {str(root)!r} is under {str(parent)!r}, which is a file, "
                                  "not a directory; name a folder")
            return


def holder(run_dir: str | os.PathLike) -> dict | None:
    """What ``.streamclust/lock.json`` says about the writer holding ``run_dir`` (``None``: nothing readable)."""
    path = Path(run_dir) / ".streamclust" / LOCK_FILES[1]
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _refusal(root: Path, stage: str) -> RunLockedError:
    info = None
    for _ in range(20):  # the holder writes its sidecar right after taking the lock
        info = holder(root)
        if info is not None and (info.get("host") != socket.gethostname() or _alive(info.get("pid"))):
            break
        info = None
        time.sleep(0.025)
    if info is None:
        who = "another process (it has not said which yet)"
    else:
        host = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
        who = f"PID {info.get('pid')}{host} ({info.get('command')}, since {info.get('since')})"
    return RunLockedError(f"run directory {str(root)!r} is being written by {who}; wait for it to end, "
                          f"or stop it, then run {stage} again (only one command may write a run directory at once)")


def _open_locked(path: Path) -> int | None:
    """``flock`` ``path`` (created if missing) without waiting: the fd, or ``None`` when another holds it."""
    import fcntl

    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: lock the one there now
    raise RunDirError(f"could not take the lock {str(path)!r}: it keeps being replaced")  # pragma: no cover


class RunLock:
    """The writer's lock of one run directory.

    Parameters
    ----------
    run_dir : path
        The run directory (created, with ``.streamclust``, when missing).
    stage : str
        What the holder runs (a command name such as ``"fit"``), for the refusal message.
    create : bool, default=True
        Create ``run_dir`` when it is missing; with ``False`` a missing ``run_dir`` is not
        locked (a command that needs an existing run then refuses, writing nothing).

    Raises
    ------
    RunLockedError
        On :meth:`acquire`, when another process holds the lock.
    RunDirError
        When ``run_dir`` is, or is under, a regular file.
    """

    def __init__(self, run_dir: str | os.PathLike, stage: str, *, create: bool = True):
        self.root = Path(run_dir)
        self.stage = stage
        self.create = create
        self._key: str | None = None

    @property
    def path(self) -> Path:
        return self.root / ".streamclust" / LOCK_FILES[0]

    def acquire(self) -> "RunLock":
        _check_parents(self.root)
        if not self.create and not self.root.is_dir():
            return self
        key = os.path.realpath(self.root)
        with _REGISTRY_LOCK:
            held = _HELD.get(key)
            if held is not None:  # re-entrant: this process already writes here
                held.count += 1
                self._key = key
                return self
            path = self.path.absolute()
            created = [p for p in reversed(path.parents) if not p.exists()]  # outermost first
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = _open_locked(path)
            except OSError as exc:
                _remove_empty(created)
                if exc.errno in _CANNOT_WRITE and self.root.is_dir():
                    # this process cannot write the run at all: a command that only reads it
                    # (`sample -o elsewhere`) goes on, and a write fails as it would have
                    logger.debug("%s is not writable (%s): not locked", self.root, exc.strerror)
                    return self
                raise
            except BaseException:
                _remove_empty(created)
                raise
            if fd is None:
                _remove_empty(created)
                raise _refusal(self.root, self.stage)
            try:
                previous = holder(self.root)
                if previous is not None and previous.get("pid") != os.getpid():
                    logger.debug("taking over the lock of %s left by PID %s (%s), which has ended",
                                 self.root, previous.get("pid"), previous.get("command"))
                from ._atomic import write_json

                write_json(path.with_name(LOCK_FILES[1]), {
                    "pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(self.stage),
                    "stage": self.stage, "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                })
            except BaseException:
                _unlock(path, fd, created)
                raise
            _HELD[key] = _Held(fd, path, 1, created)
            self._key = key
            return self

    def release(self) -> None:
        if self._key is None:
            return
        with _REGISTRY_LOCK:
            key, self._key = self._key, None
            held = _HELD.get(key)
            if held is None:  # pragma: no cover - released twice
                return
            held.count -= 1
            if held.count == 0:
                del _HELD[key]
                _unlock(held.path, held.fd, held.created)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _unlock(path: Path, fd: int, created: list[Path]) -> None:
    """Remove the sidecar and the lock file (still holding it), then let go; remove folders the lock made."""
    try:
        for name in (LOCK_FILES[1], LOCK_FILES[0]):
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()
    finally:
        os.close(fd)
    _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:  # something was written there: keep it (and its parents)
            return


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` (in ``.streamclust``) is the lock, its sidecar, or a sidecar being written."""
    name = path.name
    return name in LOCK_FILES or name.startswith(LOCK_FILES[1] + ".") and name.endswith(".partial")


def state_files(state_dir: Path) -> list[Path]:
    """The entries of ``.streamclust`` but the lock's: the state of the stages (empty when it is missing)."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.iterdir() if not is_lock_file(p))


def clear_state_dir(state_dir: Path) -> None:
    """Remove every stage's state from ``.streamclust``, keeping the lock held on it."""
    import shutil

    for p in state_files(state_dir):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, stage: str, *, create: bool = True) -> Iterator[RunLock]:
    """``with run_lock(run_dir, "fit"):`` hold the writer's lock of ``run_dir`` (see :class:`RunLock`)."""
    lock = RunLock(run_dir, stage, create=create).acquire()
    try:
        yield lock
    finally:
        lock.release()
