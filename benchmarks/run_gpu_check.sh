#!/usr/bin/env bash
# The GPU device check, end to end: what to prepare here, the exact device-tool calls, and the command
# that runs on the lent GPU machine (H100/H200: CUDA 13, cupy, cuda-python, onnx, opencv, numpy; NO
# onnxruntime-gpu, pydantic or TensorRT; no network). See ../shared/device/README.md.
#
#   1. Here, from the repository root:      benchmarks/run_gpu_check.sh prepare
#      - downloads the pydantic wheels for cp312/manylinux x86-64 into .whl/ (the model contract needs them)
#      - splits the onnxruntime-gpu 1.31.1 wheel into 48 MiB chunks under .carry/ort1 .. .carry/ortN
#        (../shared/device/prepare_ort_gpu.sh); both folders are git-ignored and travel only via `carry`.
#      - the bundled models runtime/models/{ultrasound,fluoroscopy}_unet.onnx must exist (tracked files travel).
#   2. Device calls, back to back (the machine stays warm ~30 s after each; each chunk call takes ~8 s):
#        call 1:     carry [".carry/ort1", ".whl"]
#                    command: mkdir -p /tmp/ortchunks /tmp/whl && cp .carry/ort1/* /tmp/ortchunks/ && cp .whl/*.whl /tmp/whl/
#        call 2..N:  carry [".carry/ortI"]
#                    command: mkdir -p /tmp/ortchunks && cp .carry/ortI/* /tmp/ortchunks/
#        last call:  carry []   timeout_s 360
#                    command: bash benchmarks/run_gpu_check.sh device
#      The results (gpu_check.json, gpu_check.md) come back from $OUT; the lead commits them under
#      benchmarks/results/ (e.g. benchmarks/results/gpu_check_h100.{json,md}). Then call give_back.
#   3. If the last call fails early (missing piece), it prints what is missing; fix and rerun only the last
#      call while the machine is warm (files under /tmp stay).
#
# CPU-only sanity check of the script (what CI runs):  python benchmarks/gpu_device_check.py --dry-run --models M.onnx
set -euo pipefail
mode=${1:-}
case "$mode" in
  prepare)
    root=$(git rev-parse --show-toplevel); cd "$root"
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      -d .whl "pydantic>=2.5,<3"
    ls -l .whl
    ../shared/device/prepare_ort_gpu.sh 1.31.1
    ;;
  device)
    : "${OUT:?run this on the device machine, where \$OUT is set}"
    d=/tmp/ortchunks
    if [ ! -d /tmp/site/onnxruntime ]; then
      wheel=$d/$(cat $d/WHEEL_NAME)
      cat $d/part.* > "$wheel"
      [ "$(md5sum "$wheel" | cut -d' ' -f1)" = "$(cat $d/MD5)" ] || { echo "onnxruntime-gpu wheel checksum mismatch: redo the chunk calls"; exit 3; }
      python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheel" /tmp/whl/*.whl
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/nvidia_smi.txt"
    python3 benchmarks/gpu_device_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log" | tail -c 11000
    ;;
  *)
    echo "usage: $0 prepare   (here)  |  $0 device   (on the lent GPU machine, last call)"; exit 2 ;;
esac
