"""The one place that imports PyTorch: lazily, with a one-line install hint when it is missing."""

from __future__ import annotations

from ..errors import UsageError

__all__ = ["require_torch", "INSTALL_HINT"]

INSTALL_HINT = 'deep features need PyTorch: pip install "streamclust[deep]"'


def _import():
    import torch

    return torch


def require_torch():
    """Return the ``torch`` module, or raise :class:`UsageError` saying how to install it."""
    try:
        return _import()
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
