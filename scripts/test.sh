#!/usr/bin/env bash
# Set up a virtual environment with everything the tests need, then run the whole test suite.
# This is the README's test command, and what CI runs (.ci/run). Safe to rerun: it reuses .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch: the CPU build of 2.13.0 first (an unpinned torch would pull a multi-GB CUDA build); the [train]
# extra's looser range is then already satisfied.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev,train,calibrate]'
# The TensorRT lean runtime (real bindings, no GPU needed to import) for the TensorRT contract test.
# The TensorRT lean runtime and NVIDIA's cuda-python (real bindings; both import without a GPU) for the
# contract tests that check every TensorRT and CUDA call the GPU backends make.
python -m pip install -q tensorrt-lean-cu13 cuda-python \
  || echo "note: tensorrt-lean-cu13 / cuda-python unavailable; their contract tests will skip"
# systemd-analyze, for the unit-file check (Debian package 'systemd'), when we may install it.
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null) \
    || echo "note: could not install systemd; the unit-file check will skip"
fi
# The package rules (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md) before the tests.
lint-imports --no-cache || { echo "import contracts broken (above): fix the import, or the contract and docs/ARCHITECTURE.md if the design changed" >&2; exit 1; }
# Debian's Chromium and its driver, for the browser test of the web view (tests/web/test_web_view.py), when
# we may install them; without them that test skips with a loud reason. Selenium never downloads a browser.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "note: could not install chromium/chromium-driver; the browser test will skip"
fi
# A real Triton Inference Server for tests/triton: the nvidia-pytriton wheel's tritonserver in its own cached
# virtual environment (it pins numpy<2); the tests skip loudly only where the wheel cannot run on this machine.
python -m medstream.benchmarks.triton_server --prepare \
  || echo "note: the local Triton server environment could not be prepared; tests/triton will create or skip it"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): treating as a failure, the suite must not be empty" >&2
  exit 1
fi
exit "$rc"
