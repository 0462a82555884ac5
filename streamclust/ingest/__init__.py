"""Ingestion: archive readers, a pure decoder, the chunk writer and the manifest.

``ingest`` and ``IngestSummary`` are imported on first use, so that decode worker
processes (which import :mod:`streamclust.ingest.decode`) stay light.
"""

from __future__ import annotations

import importlib

__all__ = ["ingest", "IngestSummary", "decode_image", "STATUSES"]

_LAZY = {"ingest": ".writer", "IngestSummary": ".writer", "decode_image": ".decode", "STATUSES": ".decode"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamclust.ingest' has no attribute {name!r}")
