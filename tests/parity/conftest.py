"""Fixtures of scikit-learn's test suite, and the deviations applied to the collected tests.

- ``global_random_seed``: scikit-learn's seeds (``SKLEARN_TESTS_GLOBAL_RANDOM_SEED``,
  default 42), as in scikit-learn's own ``conftest.py``.
- ``global_dtype``: float32 and float64.  scikit-learn runs float32 only with
  ``SKLEARN_RUN_FLOAT32_TESTS=1``; here it always runs (float32 parity is one of the
  things checked).
- ``parity_input``: the tests named in :data:`tests.parity.deviations.LAZY_INPUT` run
  once per input kind (numpy, zarr, dask): the estimators then see every in-memory
  ``X`` as that kind of array.
- Every test id matching a pattern of :data:`tests.parity.deviations.DEVIATIONS` is
  skipped (``drop``), marked ``xfail(strict=True)`` (``xfail``) or ``xfail(strict=False)``
  (``pending``), with its reason.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from .deviations import DEVIATIONS, LAZY_INPUT
from .estimators import input_kind

_PARITY_DIR = os.path.dirname(os.path.abspath(__file__))


def _pattern(glob: str) -> re.Pattern:
    """A test-id pattern in which only ``*`` is a wildcard (ids contain ``[`` and ``]``)."""
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in glob) + r"\Z")


_RULES = [(_pattern(glob), action, reason) for glob, (action, reason) in DEVIATIONS.items()]


def _seeds() -> list[int]:
    value = os.environ.get("SKLEARN_TESTS_GLOBAL_RANDOM_SEED")
    if value is None:
        return [42]
    if value == "all":
        return list(range(100))
    if "-" in value:
        lo, hi = value.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(value)]


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def global_dtype(request):
    yield request.param


@pytest.fixture
def parity_input(request):
    with input_kind(request.param):
        yield request.param


def _module_key(path) -> str:
    return os.path.basename(str(path))


def pytest_generate_tests(metafunc):
    if "global_random_seed" in metafunc.fixturenames:
        metafunc.parametrize("global_random_seed", _seeds())
    name = metafunc.function.__name__
    if name in LAZY_INPUT.get(_module_key(metafunc.definition.path), ()):
        metafunc.fixturenames.append("parity_input")
        metafunc.parametrize("parity_input", ["numpy", "zarr", "dask"], indirect=True)


def test_id(item) -> str:
    """``test_k_means.py::test_all_init[...]``: the id the deviation patterns match."""
    return f"{_module_key(item.path)}::{item.name}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not str(item.path).startswith(_PARITY_DIR):
            continue
        tid = test_id(item)
        for pattern, action, reason in _RULES:
            if pattern.match(tid):
                if action == "drop":
                    item.add_marker(pytest.mark.skip(reason=f"parity deviation: {reason}"))
                elif action == "xfail":
                    item.add_marker(pytest.mark.xfail(reason=f"parity deviation: {reason}", strict=True))
                elif action == "pending":
                    item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
                else:  # pragma: no cover - checked by test_deviations.py
                    raise ValueError(f"unknown deviation action {action!r} for {tid}")
                break
