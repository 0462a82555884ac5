"""The fork server the decode workers come from: its environment, and the caller's left as it was."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from streamclust.ingest._server import NO_BLAS_THREADS, decoder_context, start_decoder_server, stop_decoder_server

pytestmark = pytest.mark.skipif(decoder_context() is None, reason="no forkserver start method here")


def test_decoders_run_without_blas_threads_and_the_callers_environment_is_unchanged(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    stop_decoder_server()
    start_decoder_server()
    try:
        assert dict(os.environ) == before
        with ProcessPoolExecutor(1, mp_context=decoder_context()) as ex:
            seen = {key: ex.submit(os.getenv, key).result() for key in NO_BLAS_THREADS}
        assert seen == NO_BLAS_THREADS
    finally:
        stop_decoder_server()
