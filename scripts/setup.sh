#!/usr/bin/env bash
# Create .venv (or $VENV) and install icl-heads with its test tools.
# torch is pinned to the CPU build through ci/constraints-cpu.txt; set
# ICL_HEADS_CONSTRAINTS=ci/constraints-tl3.txt for TransformerLens 3.x.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CONSTRAINTS=${ICL_HEADS_CONSTRAINTS:-ci/constraints-cpu.txt}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" torch
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" ".[dev]"
