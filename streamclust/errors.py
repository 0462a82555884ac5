"""The streamclust error tree.

Every error raised on purpose by streamclust derives from :class:`StreamclustError`
and also from the built-in exception a caller would naturally catch, as zarr does
(``ArrayNotFoundError`` is a ``FileNotFoundError``).  The command line turns any
:class:`StreamclustError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

__all__ = [
    "StreamclustError",
    "UsageError",
    "SourceError",
    "RunDirError",
    "StageNotDoneError",
    "RunLockedError",
    "ConfigMismatchError",
    "MemoryLimitError",
    "ConvergenceError",
    "IntegrityError",
]


class StreamclustError(Exception):
    """Base class of all errors streamclust raises on purpose."""


class UsageError(StreamclustError, ValueError):
    """An invalid parameter or flag value."""


class SourceError(StreamclustError, FileNotFoundError):
    """The ingestion source is missing or cannot be read as an archive or folder."""


class RunDirError(StreamclustError, FileNotFoundError):
    """The run directory is missing, or lacks what a command needs."""


class StageNotDoneError(RunDirError):
    """A command needs a stage (ingest, fit, ...) that has not run on this run directory."""


class RunLockedError(StreamclustError, BlockingIOError):
    """Another process is writing the run directory (see :mod:`streamclust.lock`); its PID and command are named."""


class ConfigMismatchError(StreamclustError, ValueError):
    """The run directory was made with other settings; pass ``--overwrite`` to start again."""


class MemoryLimitError(StreamclustError, MemoryError):
    """The requested work cannot be done within the memory limit."""


class ConvergenceError(StreamclustError, ArithmeticError):
    """A model degenerated (an empty or collapsing component) and cannot be recovered."""


class IntegrityError(StreamclustError, OSError):
    """A file of the run directory is damaged: a missing or truncated chunk, a chunk whose
    checksum fails, a shape or row count other than the one recorded when its stage
    completed, a corrupt model file.  The message names the file and the command that
    rebuilds it.  An :class:`OSError`, as an I/O error of the disk would be."""
