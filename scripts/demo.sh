#!/usr/bin/env bash
# Set up medstream on a fresh machine and run the built-in default: a synthetic ultrasound stream at
# 30 fps through the bundled ultrasound model on the CPU, overlays published on tcp://127.0.0.1:5556,
# with a viewer saving the rendered overlays to out/overlays.mp4. Runs for DURATION seconds (default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DURATION=${DURATION:-15}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
mkdir -p out
medstream view --connect tcp://127.0.0.1:5556 --save out/overlays.mp4 --timeout 10 &
viewer=$!
medstream run --duration "$DURATION" --summary out/summary.json
wait "$viewer" || true
echo "summary: out/summary.json   rendered overlays: out/overlays.mp4"
