#!/usr/bin/env bash
# Set everything up, then run the full analysis on the bundled organism.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-results/organism-$(date +%Y%m%d-%H%M%S)}
.venv/bin/icl-heads analyze --model organism --task organism --out "$OUT"
