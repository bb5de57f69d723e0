#!/usr/bin/env bash
# Set up medstream on a fresh machine and run the main job on its built-in defaults: a synthetic
# ultrasound stream at 30 fps (medstream simulate, as a scanner would send it) through the bundled
# ultrasound model on the CPU (medstream run), overlays published on tcp://127.0.0.1:5556, and a viewer
# that draws them on the matching frames and saves the result to out/overlays.mp4.
# Runs for DURATION seconds (default 15). For the single-process default, just type: medstream run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DURATION=${DURATION:-15}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
mkdir -p out
frames=$((DURATION * 30))
medstream view --connect tcp://127.0.0.1:5556 --frames-from tcp://127.0.0.1:5555 --save out/overlays.mp4 --timeout 10 &
viewer=$!
medstream run --source zmq+tcp://127.0.0.1:5555 --max-frames "$frames" --summary out/summary.json &
runner=$!
# two subscribers (the runtime and the viewer) before the first frame, so no frame is lost to a late joiner
medstream simulate --kind ultrasound --rate 30 --frames "$frames" --publish tcp://127.0.0.1:5555 --wait-subscribers 2
wait "$runner"
wait "$viewer" || true
echo "summary: out/summary.json   rendered overlays: out/overlays.mp4"
