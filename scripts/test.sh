#!/usr/bin/env bash
# Run the test suite: creates/reuses .venv, installs streamclust with the dev extra (and the
# CPU build of PyTorch for the deep-feature tests), runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ingest -x
# STREAMCLUST_NO_TORCH=1 skips the PyTorch install (the deep tests are then skipped).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" dev
cd "$ROOT"
if [ -z "${STREAMCLUST_NO_TORCH:-}" ] && ! python -c "import torch" >/dev/null 2>&1; then
  # pinned: this version's CPU wheel is what this project's machines provide; an unpinned
  # install would pull a multi-GB CUDA build
  echo "installing torch==2.13.0 for the deep-feature tests" >&2
  python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
    || echo "warning: torch could not be installed; the deep-feature tests will be skipped" >&2
fi
exec python -m pytest "$@"
