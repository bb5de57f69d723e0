"""A real Triton Inference Server on loopback, one per test session (issue 17).

The server is the ``tritonserver`` 2.51 binary of PyPI's ``nvidia-pytriton`` wheel, run from its own cached
virtual environment (``medstream.benchmarks.triton_server``: created on first use, ~1 min with PyPI access).
It has only the Python backend, so the repository is written by ``medstream triton-repo --backend
python-onnxruntime``. Tests skip, loudly, only where the wheel cannot run (not Linux x86-64, glibc < 2.35,
no shared libpython) or ``tritonclient`` is missing; a failed download fails.

The repository holds the bundled ultrasound U-Net twice: ``ultrasound_unet`` as written, and ``slow_unet``
whose ``model.py`` was made to sleep 300 ms per request (a slow server, for the age-limit tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medstream.benchmarks import triton_server

SLOW_MS = 300


def _skip_reason() -> str | None:
    reason = triton_server.why_cannot_run()
    if reason:
        return f"TRITON TESTS SKIPPED: {reason}"
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return "TRITON TESTS SKIPPED: tritonclient is not installed (pip install -e '.[dev]' or '.[triton]')"
    return None


def triton_repo(*args: str) -> subprocess.CompletedProcess:
    """``medstream triton-repo ARGS`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "medstream.cli.main", "triton-repo", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    repo = tmp_path_factory.mktemp("triton") / "repo"
    done = triton_repo("--model", "ultrasound", "--out", str(repo), "--backend", "python-onnxruntime",
                       "--threads", "1")
    assert done.returncode == 0, done.stderr
    slow = triton_repo("--model", "ultrasound", "--out", str(repo), "--backend", "python-onnxruntime",
                       "--name", "slow_unet", "--threads", "1")
    assert slow.returncode == 0, slow.stderr
    model_py = repo / "slow_unet" / "1" / "model.py"
    text = model_py.read_text()
    marker = "    def execute(self, requests):\n"
    assert marker in text
    model_py.write_text(text.replace(marker, marker + f"        import time\n        time.sleep({SLOW_MS / 1000})\n"))
    return repo


@pytest.fixture(scope="session")
def triton(repository):
    """The session's server (gRPC and HTTP on free loopback ports)."""
    try:
        triton_server.prepare()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not create the Triton server environment ({exc}); PyPI access is needed once")
    server = triton_server.LocalTriton(repository, log_path=repository.parent / "tritonserver.log")
    server.start()
    yield server
    server.stop()
