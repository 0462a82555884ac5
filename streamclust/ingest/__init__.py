"""Ingestion: archive readers, a pure decoder, the chunk writer and the manifest."""

from .decode import STATUSES, decode_image
from .run import IngestSummary, ingest

__all__ = ["ingest", "IngestSummary", "decode_image", "STATUSES"]
