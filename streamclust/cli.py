"""The ``streamclust`` command line: a thin layer over the Python API.

Every error streamclust raises on purpose becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import StreamclustError, UsageError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("streamclust")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, and where to look)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings and errors only")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _add_ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=_positive_int, default=64, help="output side in pixels (default 64)")
    p.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="images per zarr chunk (default: largest power of two under 16 MiB)")
    p.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--max-member-bytes", type=_positive_int, default=64 * 2**20,
                   help="skip members larger than this many bytes (default 64 MiB)")
    p.add_argument("--max-pixels", type=_positive_int, default=64_000_000,
                   help="skip images whose canvas is larger, before decoding (default 64,000,000)")
    p.add_argument("--min-side", type=_positive_int, default=8, help="skip images with a shorter side (default 8)")
    p.add_argument("--max-aspect", type=float, default=4.0,
                   help="skip images more elongated than this ratio (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in RUN_DIR with other settings")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamclust", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"streamclust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("ingest", help="turn a zip, tar or folder of images into a zarr store",
                       description="Turn a zip, tar or folder of images into RUN_DIR/images.zarr "
                                   "and RUN_DIR/manifest.csv; re-run the same command to resume.")
    p.add_argument("source", metavar="SOURCE", help="a .zip, .tar, .tar.gz/.tgz or a folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder (created if missing)")
    _add_ingest_args(p)
    _add_common(p)
    p.set_defaults(func=_cmd_ingest)
    return parser


def _ingest_config(args):
    from .config import IngestConfig

    return IngestConfig(
        source=args.source, size=args.size, chunk_size=args.chunk_size, workers=args.workers,
        max_member_bytes=args.max_member_bytes, max_pixels=args.max_pixels,
        min_side=args.min_side, max_aspect=args.max_aspect,
    )


def _cmd_ingest(args) -> int:
    from .ingest import ingest

    summary = ingest(_ingest_config(args), args.run_dir, overwrite=args.overwrite,
                     progress=False if args.quiet else None)
    print(summary.line())
    return 0


def _setup_logging(args) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamclust`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except StreamclustError as exc:
        print(f"streamclust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamclust {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
