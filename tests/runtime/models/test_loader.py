"""The model loader: one place resolves, checks, reads and matches a model file to a device."""

from __future__ import annotations

import json
import shutil

import pytest

from medstream.runtime.backends import load_backend
from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from medstream.runtime.errors import ConfigError, ContractError, ModelLoadError
from medstream.runtime.models import MODELS_DIR
from medstream.runtime.models.loader import load_model, pick_variant, read_model_contract
from tests.fixtures.models import tiny_contract


def test_bundled_name_resolves_reads_its_contract_and_chooses_a_backend_once(monkeypatch):
    import medstream.runtime.backends as backends

    calls = []
    real = backends.choose_backend
    monkeypatch.setattr(backends, "choose_backend", lambda name: calls.append(name) or real(name))
    loaded = load_model("ultrasound")
    assert calls == ["auto"], "the backend is chosen once, by the loader"
    assert loaded.path == MODELS_DIR / "ultrasound_unet.onnx" and loaded.run_path == loaded.path
    assert loaded.variant == "onnx" and loaded.contract.model_id.startswith("ultrasound")
    # no GPU here: the CPU (OpenVINO when the [openvino] extra is installed on x86-64), with the reason doctor prints
    assert loaded.backend in ("onnxruntime", "openvino")
    assert "TensorRT" in loaded.backend_reason and "OpenVINO" in loaded.backend_reason


def test_cpu_runs_the_u8s8_twin_of_an_int8_model_and_the_backend_opens_exactly_that_file():
    loaded = load_model(MODELS_DIR / "ultrasound_unet.int8.onnx", backend="onnxruntime")
    assert loaded.run_path == MODELS_DIR / "ultrasound_unet.int8-cpu.onnx" and loaded.variant == "int8-cpu twin"
    backend = load_backend(loaded, intra_op_threads=1)
    assert isinstance(backend, OnnxRuntimeBackend)
    with backend:
        assert backend.model_path == str(loaded.run_path)  # no file swapped after construction
    # TensorRT needs the symmetric file itself
    assert pick_variant(MODELS_DIR / "ultrasound_unet.int8.onnx", "tensorrt") == (
        MODELS_DIR / "ultrasound_unet.int8.onnx", "onnx")


def test_an_int8_model_without_its_twin_runs_itself(tmp_path):
    copy = shutil.copy(MODELS_DIR / "ultrasound_unet.int8.onnx", tmp_path / "m.int8.onnx")
    loaded = load_model(copy, backend="onnxruntime")
    assert loaded.run_path == copy and loaded.variant == "onnx"


@pytest.mark.parametrize("name, content, error, needle", [
    ("missing.onnx", None, ConfigError, "neither a bundled model nor an existing file"),
    ("empty.onnx", b"", ModelLoadError, "is empty (0 bytes)"),
    ("corrupt.onnx", b"\x08\x07garbage-not-a-protobuf" * 10, ModelLoadError, "cannot be read as ONNX"),
    ("weights.pt", b"torch", ModelLoadError, "neither an ONNX model"),
])
def test_bad_model_files_are_refused_naming_the_file_and_the_fix(tmp_path, name, content, error, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error) as exc:
        load_model(path)
    assert needle in str(exc.value) and "->" in str(exc.value)
    if content is not None:
        assert str(path) in str(exc.value)


def test_a_model_without_contract_needs_the_config_and_then_runs(tiny_model_no_contract):
    with pytest.raises(ContractError, match="carries no medstream contract"):
        load_model(tiny_model_no_contract)
    assert read_model_contract(tiny_model_no_contract, required=False) is None
    loaded = load_model(tiny_model_no_contract, contract=tiny_contract().model_dump(), backend="onnxruntime")
    assert loaded.contract.model_id == "tiny-intensity"


def test_engine_files_have_one_answer(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(ModelLoadError, match="has no manifest"):
        load_model(engine)
    (tmp_path / "m.json").write_text(json.dumps({"contract": json.loads(tiny_contract().to_json())}))
    with pytest.raises(ModelLoadError, match="the onnxruntime backend cannot run it") as exc:
        load_model(engine, backend="onnxruntime")
    assert "--backend tensorrt" in str(exc.value)
    # auto on an engine means TensorRT; the contract comes from the manifest 'medstream build' wrote
    loaded = load_model(engine)
    assert loaded.backend == "tensorrt" and loaded.variant == "engine" and loaded.is_engine
    assert loaded.contract == tiny_contract()
