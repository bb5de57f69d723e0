"""Shared fixtures: tiny models, loopback endpoints, the bundled models when they exist."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.fixtures.models import intensity_classifier, save

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for processes that must bind it themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """64x64 grey input, 3 classes by intensity; carries a medstream contract."""
    return save(intensity_classifier(), tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_model_no_contract(tmp_path_factory) -> Path:
    return save(intensity_classifier(with_contract=False), tmp_path_factory.mktemp("models") / "tiny_nc.onnx")


@pytest.fixture(scope="session")
def bundled_ultrasound() -> Path:
    path = REPO / "runtime" / "models" / "ultrasound_unet.onnx"
    if not path.is_file():
        pytest.fail(f"bundled model {path} is missing: run python -m medstream.export.reference_models")
    return path
