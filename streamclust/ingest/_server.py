"""The fork server that decode worker processes are forked from.

Kept free of heavy imports, so that the command line can start the server (which then
imports the decoder, Pillow and NumPy, on another core) before it imports the rest of
the ingester itself: the workers are ready sooner.
"""

from __future__ import annotations

import multiprocessing as mp

__all__ = ["decoder_context", "start_decoder_server"]

_PRELOAD = ["streamclust.ingest.pipeline"]  # the decode task, the readers and the decoder


def decoder_context():
    """The ``forkserver`` context preloading the decoder, or None where it does not exist."""
    if "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def start_decoder_server() -> None:
    """Start the fork server now (it is started on first use otherwise); never raises."""
    if decoder_context() is None:
        return
    try:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - the pool starts it later, or falls back to this process
        pass
