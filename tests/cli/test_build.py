"""``medstream build`` on a machine without the TensorRT builder: a clear refusal naming what to install."""

from __future__ import annotations

import pytest

from medstream.cli.main import main
from tests.fixtures.gpu_models import tiny_conv
from tests.fixtures.models import save


def test_build_without_tensorrt_says_what_to_install(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("full tensorrt installed here")
    except ImportError:
        pass
    model = save(tiny_conv(32), tmp_path / "m.onnx")
    assert main(["build", "--model", str(model), "--precision", "fp16", "--out", str(tmp_path / "cache")]) != 0
    text = capsys.readouterr().err
    assert "full TensorRT" in text and "pip install 'medstream[tensorrt]'" in text and "JetPack" in text
    assert not (tmp_path / "cache").exists()  # refused before anything was written
