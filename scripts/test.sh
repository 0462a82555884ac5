#!/usr/bin/env bash
# Run the test suite: creates/reuses .venv, installs streamclust with the dev extra, runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ingest -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" dev
cd "$ROOT"
exec python -m pytest "$@"
