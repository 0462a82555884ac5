#!/usr/bin/env bash
# The demo: builds a zip of scikit-learn's bundled 8x8 digits (as PNGs, with a few broken
# members mixed in) and runs streamclust on it.  Creates/reuses .venv on first use.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" ""
cd "$ROOT"
OUT="${1:-$ROOT/demo-run}"
mkdir -p "$OUT"
python -m streamclust.demo "$OUT/digits.zip"
streamclust ingest "$OUT/digits.zip" "$OUT/run" --size 8
echo "demo results: $OUT/run (images.zarr, manifest.csv, ingest_summary.json)"
