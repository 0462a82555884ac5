"""The fork server that decode worker processes are forked from.

Kept free of heavy imports, so that the command line can start the server (which then
imports the decoder, Pillow and NumPy, on another core) before it imports the rest of
the ingester itself: the workers are ready sooner.

None of these processes outlives the ingesting one.  Killed (``kill -9``), it leaves the
fork server, the workers and multiprocessing's resource tracker behind, and a watch on
its PID cannot tell while it is an unreaped zombie; so on Linux the fork server asks the
kernel for ``SIGTERM`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``), the workers do
the same of the fork server and also watch their parent change
(:func:`streamclust.ingest.pool._watch_parent`), and the tracker then reads the end
of its pipe and exits.  At a normal exit :func:`stop_decoder_server` stops the fork server
and the tracker before this process ends, so nothing of it is left for a moment after.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal

__all__ = ["decoder_context", "start_decoder_server", "stop_decoder_server", "decoder_server_pid", "die_with_parent",
           "NO_BLAS_THREADS"]

# this module first: importing it in the fork server arms the fork server's death signal
_PRELOAD = ["streamclust.ingest._server", "streamclust.ingest.pool"]  # the decode task, readers, decoder

#: set (to this process's PID) only while the fork server is started, so that it alone arms its death signal
_SERVER_PARENT = "STREAMCLUST_DECODER_SERVER_PARENT"

_PR_SET_PDEATHSIG = 1

#: the environment of a process that multiplies no matrices (the fork server, and through it
#: the decoders; ``streamclust ingest`` itself): a BLAS thread pool would only spin, 0.1-0.2 s
#: of a core in each process
NO_BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send ``sig`` to this process when ``parent`` (its parent) ends; elsewhere nothing.

    The signal comes when the parent *thread* that started this process ends: the fork
    server is started from the thread that runs the ingestion (see :func:`start_decoder_server`).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:  # pragma: no cover
        return
    if os.getppid() != parent:  # it ended before the request took effect
        os._exit(1)


if os.environ.get(_SERVER_PARENT) == str(os.getppid()):  # this is the fork server: imported by its preload
    die_with_parent(os.getppid())


def decoder_context():
    """The ``forkserver`` context preloading the decoder, or None where it does not exist."""
    if "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def start_decoder_server() -> None:
    """Start the fork server now (it is started on first use otherwise); never raises.

    Call it from the thread that runs the ingestion (a fork server started by a thread
    that ends is stopped by its death signal, and started again when next needed).
    """
    if decoder_context() is None:
        return
    from multiprocessing import forkserver

    saved = {key: os.environ.get(key) for key in NO_BLAS_THREADS}
    os.environ.update(NO_BLAS_THREADS, **{_SERVER_PARENT: str(os.getpid())})
    try:
        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - the pool starts it later, or falls back to this process
        pass
    finally:
        del os.environ[_SERVER_PARENT]
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
    _stop_at_exit()


def decoder_server_pid() -> int | None:
    """The running fork server's PID (``None``: none started, or another CPython), for its workers to watch."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


_registered = []


def _stop_at_exit() -> None:
    if not _registered:
        atexit.register(stop_decoder_server)
        _registered.append(True)


def stop_decoder_server(timeout: float = 2.0) -> None:
    """Stop the fork server, then multiprocessing's resource tracker, waiting for each at most
    ``timeout`` seconds; never raises.

    Each ends when the pipe this process holds to it is closed (and no worker holds it any
    more): closing it is what this process's exit would do, a moment earlier, so that
    nothing of the command is left when it ends.  Registered with :mod:`atexit` when the
    fork server starts.  They are started again when next needed.  (This reads private
    attributes of :mod:`multiprocessing`, the same from CPython 3.11 to 3.13; where they
    differ, nothing is done and the helpers end just after this process, as before.)
    """
    from multiprocessing import forkserver, resource_tracker

    for helper, fd_name, pid_name in ((forkserver._forkserver, "_forkserver_alive_fd", "_forkserver_pid"),
                                      (resource_tracker._resource_tracker, "_fd", "_pid")):
        try:
            with helper._lock:
                _close_and_reap(helper, fd_name, pid_name, timeout)
        except Exception:  # noqa: BLE001 - not started, already gone, or another CPython
            pass


def _close_and_reap(helper, fd_name: str, pid_name: str, timeout: float) -> None:
    import time

    fd, pid = getattr(helper, fd_name), getattr(helper, pid_name)
    if fd is None or pid is None:
        return
    os.close(fd)
    setattr(helper, fd_name, None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done or time.monotonic() > deadline:  # (past the deadline it ends by itself, later)
            setattr(helper, pid_name, None)
            return
        time.sleep(0.005)
