#!/usr/bin/env bash
# The demo: builds a zip of scikit-learn's bundled 8x8 digits (as PNGs, with a few broken
# members mixed in) and runs the whole streamclust pipeline on it: ingest -> fit -> assign ->
# evaluate -> report.  Creates/reuses .venv on first use.  Usage: scripts/demo.sh [OUT_DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" ""
cd "$ROOT"
OUT="${1:-$ROOT/demo-run}"
mkdir -p "$OUT"
# made once: a re-run of the demo resumes (or reuses) the same run instead of meeting a new archive
[ -f "$OUT/digits.zip.labels.csv" ] || python -m streamclust.demo "$OUT/digits.zip" >/dev/null
streamclust run "$OUT/digits.zip" "$OUT/run" --size 8 --pca-components 20 --clusters 10 \
  --gmm-components 10 --covariance diag --labels "$OUT/digits.zip.labels.csv"
streamclust sample "$OUT/run" -n 64 --quiet
echo
echo "demo results in $OUT/run:"
echo "  report:      $OUT/run/report/index.html"
echo "  assignments: $OUT/run/assignments.csv"
echo "  evaluation:  $OUT/run/evaluation.json"
echo "  samples:     $OUT/run/samples.png"
