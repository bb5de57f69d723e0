"""The OpenVINO backend on this machine's real CPU: real OpenVINO and ONNX Runtime sessions, real model files.

Masks are compared with ONNX Runtime FP32 on the same preprocessed frames (the f32 hint must give identical
class maps); bf16 and int8 must pass the accuracy gate (Dice drop <= 1 point per class against FP32 on the
held-out phantom frames the calibration gate uses). Mocks only where this machine cannot have the hardware
(a CPU without bf16) or where a missing install is simulated (openvino hidden in sys.modules).
"""

from __future__ import annotations

import json
import platform
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from medstream.runtime.backends import BACKENDS, choose_backend, load_backend
from medstream.runtime.errors import ConfigError, MissingDependencyError, ModelLoadError
from medstream.runtime.models import MODELS_DIR
from medstream.runtime.models.loader import load_model
from medstream.runtime.postprocess import Postprocessor
from medstream.runtime.sources import read_labelled_frames

ov = pytest.importorskip("openvino", reason="the [openvino] extra is not installed (it is in the dev extra CI installs)")

from medstream.runtime.backends import openvino_backend  # noqa: E402
from medstream.runtime.backends.openvino_backend import OpenVinoBackend  # noqa: E402

HELD_OUT = {"ultrasound": "synthetic://ultrasound?seed=10000&scenes=10",
            "fluoroscopy": "synthetic://fluoroscopy?seed=10000&scenes=10"}
X86 = platform.machine().lower() in ("x86_64", "amd64")
BF16, BF16_WHY = openvino_backend.bf16_capable()


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSTREAM_OPENVINO_CACHE", str(tmp_path / "ov-cache"))


def class_maps(backend, frames, contract):
    """The class map of each frame through ``backend`` (the runtime's own pre- and postprocessing)."""
    pre, post = backend.make_preprocessor(), Postprocessor(contract)
    with backend:
        return [post.class_map(backend.infer({contract.input.name: pre(f.image, f.color_order).copy()})).copy()
                for f in frames]


# ------------------------------------------------------------------------------ identical to ORT FP32
@pytest.mark.parametrize("name", ["ultrasound", "fluoroscopy"])
def test_bundled_model_with_the_f32_hint_gives_the_masks_of_onnxruntime_fp32(name):
    frames = list(read_labelled_frames(HELD_OUT[name], 24))
    ort_model = load_model(name, backend="onnxruntime")
    ov_model = load_model(name, backend="openvino", precision="fp32")
    assert ov_model.run_path == ort_model.run_path == MODELS_DIR / f"{name}_unet.onnx"
    ov_backend = load_backend(ov_model, precision="fp32", threads=2)
    reference = class_maps(load_backend(ort_model, intra_op_threads=2), frames, ort_model.contract)
    got = class_maps(ov_backend, frames, ov_model.contract)
    assert ov_backend.precision == "fp32" and ov_backend.describe()["inference_precision_hint"] == "f32"
    assert any(m.any() for m in reference), "the frames must show some foreground, or the comparison proves little"
    for i, (a, b) in enumerate(zip(reference, got, strict=True)):
        assert np.array_equal(a, b), f"frame {i}: {int((a != b).sum())} pixels differ from ONNX Runtime FP32"


def foreign_model(path, batch="N"):
    """A model with no medstream contract, built here: 3x3 conv (1 -> 3 classes) + ReLU on a 48x40 grey image.

    Class 0 answers dark (< 0.3), 1 mid, 2 bright (> 0.67) pixels (centre-tap weights, biases), with a dynamic
    batch axis so the backend must fix the shape from the contract.
    """
    w = np.zeros((3, 1, 3, 3), np.float32)
    w[:, 0, 1, 1] = [-4.0, 1.0, 4.0]
    w[1, 0, 0, 0] = 0.3  # a neighbour tap, so the result depends on more than one pixel
    b = np.array([2.0, 0.5, -1.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["img", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["scores"])],
        "foreign",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [batch, 1, 48, 40])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3, 48, 40])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def foreign_contract(**input_changes) -> dict:
    """The contract a user writes in the config's ``contract:`` section for :func:`foreign_model`."""
    from medstream.runtime.contract import ClassSpec, InputSpec, ModelContract, OutputSpec

    return ModelContract(
        model_id="foreign-conv", modality="ultrasound",
        input=InputSpec(**{"name": "img", "height": 48, "width": 40, **input_changes}), outputs=(OutputSpec(name="scores"),),
        classes=(ClassSpec(name="dark", color=(0, 0, 0)), ClassSpec(name="mid", color=(200, 0, 0)),
                 ClassSpec(name="bright", color=(0, 200, 0)))).model_dump(mode="json")


FOREIGN_CONTRACT = foreign_contract()


def reference_class_map(x: np.ndarray) -> np.ndarray:
    """:func:`foreign_model` in numpy (an independent reference): conv taps, bias, ReLU, argmax."""
    shifted = np.pad(x, 1)[:-2, :-2]  # the input at (y-1, x-1), zero outside: the top-left tap
    scores = np.stack([np.maximum(-4.0 * x + 2.0, 0), np.maximum(1.0 * x + 0.3 * shifted + 0.5, 0),
                       np.maximum(4.0 * x - 1.5, 0)])
    return np.argmax(scores, axis=0).astype(np.uint8)


def test_foreign_model_with_the_contract_from_config_gives_the_masks_of_onnxruntime_fp32(tmp_path):
    path = foreign_model(tmp_path / "foreign.onnx")
    ort_model = load_model(path, contract=FOREIGN_CONTRACT, backend="onnxruntime")
    ov_model = load_model(path, contract=FOREIGN_CONTRACT, backend="openvino", precision="fp32")
    assert ov_model.contract.model_id == "foreign-conv"
    frames = list(read_labelled_frames("synthetic://ultrasound?seed=3&width=40&height=48", 8))
    reference = class_maps(load_backend(ort_model, intra_op_threads=1), frames, ort_model.contract)
    got = class_maps(load_backend(ov_model, precision="fp32", threads=1), frames, ov_model.contract)
    assert len({int(c) for m in reference for c in np.unique(m)}) == 3, "all three classes must appear"
    for a, b in zip(reference, got, strict=True):
        assert np.array_equal(a, b)
    # and both agree with the independent numpy reference (ties, where ReLU zeroes two classes, may differ)
    pre = load_backend(ov_model).make_preprocessor()
    for frame, mask in zip(frames, got, strict=True):
        x = pre(frame.image, "gray")[0, 0].astype(np.float64)
        assert np.mean(reference_class_map(x) == mask) > 0.999


def test_a_contract_that_does_not_fit_the_model_is_refused_before_the_stream_starts(tmp_path):
    from medstream.runtime.contract import ModelContract
    from medstream.runtime.errors import ContractError

    path = foreign_model(tmp_path / "foreign.onnx", batch=1)
    with pytest.raises(ContractError, match="H=48.*the contract says 64"):  # the loader's check, first
        load_backend(load_model(path, contract=foreign_contract(height=64), backend="openvino"))
    # the backend's own check on what OpenVINO read (for files the loader cannot see into)
    model = ov.Core().read_model(str(path))
    check = openvino_backend.check_model_against_contract
    with pytest.raises(ContractError, match="H=48, the contract says 64"):
        check(model, ModelContract.model_validate(foreign_contract(height=64)), str(path))
    with pytest.raises(ContractError, match="no input named 'image'"):
        check(model, ModelContract.model_validate(foreign_contract(name="image")), str(path))
    misnamed = FOREIGN_CONTRACT | {"outputs": [{**FOREIGN_CONTRACT["outputs"][0], "name": "logits"}]}
    with pytest.raises(ContractError, match="no output"):
        check(model, ModelContract.model_validate(misnamed), str(path))
    check(model, ModelContract.model_validate(FOREIGN_CONTRACT), str(path))  # the right contract passes


# ---------------------------------------------------------------------------- bf16 and int8: the gate
def _dice_drops(reference, candidate) -> dict[str, float]:
    return {c.name: 100 * ((c.dice or 0.0) - (candidate.dice(c.name) or 0.0)) for c in reference.classes}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_bf16_and_int8_pass_the_accuracy_gate_against_fp32_on_held_out_frames(precision):
    """Dice drop <= 1 point per class against ONNX Runtime FP32 (the calibration gate's limit and eval set)."""
    from medstream.runtime.evaluation import evaluate_model

    if precision == "bf16" and not BF16:
        pytest.skip(f"bf16 needs AMX-BF16 or AVX512-BF16: {BF16_WHY}")
    frames = 120
    fp32 = evaluate_model(MODELS_DIR / "ultrasound_unet.onnx", HELD_OUT["ultrasound"], frames, intra_op_threads=2)
    path = MODELS_DIR / ("ultrasound_unet.int8.onnx" if precision == "int8" else "ultrasound_unet.onnx")
    got = evaluate_model(path, HELD_OUT["ultrasound"], frames, backend="openvino", precision=precision, threads=2)
    assert got.backend["backend"] == "openvino" and got.backend["precision"] == precision
    drops = _dice_drops(fp32, got)
    assert all(d <= 1.0 for d in drops.values()), f"{precision}: Dice drop per class in points {drops}"
    assert (fp32.dice("needle") or 0) > 0.9, "the FP32 reference must itself be good, or the gate proves little"


def test_int8_precision_runs_the_calibrated_sibling_and_says_so():
    loaded = load_model("ultrasound", backend="openvino", precision="int8")
    assert loaded.run_path == MODELS_DIR / "ultrasound_unet.int8.onnx" and loaded.variant == "int8 sibling"
    backend = load_backend(loaded, precision="int8", threads=2)
    with backend:
        info = backend.describe()
    assert info["precision"] == "int8" and info["model"].endswith("ultrasound_unet.int8.onnx")
    assert "quantized" in info["precision_reason"] and info["inference_precision_hint"] == "f32"
    # auto on the INT8 file runs it as int8 too; the S8S8 file itself, not the ONNX Runtime twin
    auto = load_model(MODELS_DIR / "ultrasound_unet.int8.onnx", backend="openvino")
    assert auto.run_path.name == "ultrasound_unet.int8.onnx"
    assert load_backend(auto).precision == "int8"


def test_auto_precision_is_bf16_where_the_cpu_has_it_else_fp32():
    backend = load_backend(load_model("ultrasound", backend="openvino"))
    assert backend.precision == ("bf16" if BF16 else "fp32") and backend.precision_reason.startswith("auto")


def test_impossible_precisions_are_refused_with_the_fix(tmp_path, monkeypatch):
    path = foreign_model(tmp_path / "foreign.onnx")
    with pytest.raises(ModelLoadError, match="no INT8 model foreign.int8.onnx") as err:
        load_model(path, contract=FOREIGN_CONTRACT, backend="openvino", precision="int8")
    assert "medstream calibrate" in err.value.fix
    with pytest.raises(ConfigError, match="is an INT8 model"):
        load_model(MODELS_DIR / "ultrasound_unet.int8.onnx", backend="openvino", precision="bf16")
    with pytest.raises(ConfigError, match="onnxruntime backend runs the model file as it is"):
        load_model("ultrasound", backend="onnxruntime", precision="int8")
    # A CPU without bf16: this machine cannot be one, so the CPU facts are replaced (a mock, said here).
    monkeypatch.setattr(openvino_backend, "bf16_capable", lambda: (False, "this CPU has neither AMX-BF16 nor AVX512-BF16"))
    with pytest.raises(ConfigError, match="bf16 was asked for, but this CPU has neither"):
        load_backend(load_model("ultrasound", backend="openvino", precision="bf16"), precision="bf16")
    assert load_backend(load_model("ultrasound", backend="openvino")).precision == "fp32"


# ----------------------------------------------------------------------------------- the stream, cache
def test_the_stream_runs_on_openvino_logs_and_summarises_the_precision(tmp_path, caplog):
    from medstream.runtime.config import load_config
    from medstream.runtime.stream import build_stream

    cfg = load_config(None, {"source": "synthetic://ultrasound?fps=200", "model": "ultrasound", "backend": "openvino",
                             "precision": "int8", "threads": 2, "publish": "tcp://127.0.0.1:0", "warmup_runs": 1})
    with caplog.at_level("INFO", logger="medstream"), build_stream(cfg) as pipe:
        pipe.prepare()
        summary = pipe.run(max_frames=20)
    c = summary["counters"]
    assert c["processed"] >= 1 and summary["accounting_ok"]
    assert summary["backend"]["backend"] == "openvino" and summary["backend"]["precision"] == "int8"
    assert any("int8 precision" in r.getMessage() for r in caplog.records)
    assert any("Intel GPU/NPU" in r.getMessage() or "also sees" in r.getMessage() for r in caplog.records)
    blobs = list((tmp_path / "ov-cache").glob("*.blob"))
    assert blobs, "the compiled model is cached on disk"


# ---------------------------------------------------------------------------------- auto, doctor, missing
@pytest.mark.skipif(not X86, reason="auto picks OpenVINO on x86-64 only")
def test_auto_picks_openvino_on_this_cpu_only_x86_machine_and_doctor_says_why(capsys):
    from medstream.cli.main import main
    from medstream.runtime.gpu.cuda import device_count

    if device_count() > 0:
        pytest.skip("a CUDA device is usable here: auto picks a GPU backend")
    assert "openvino" in BACKENDS
    name, why = choose_backend("auto")
    assert name == "openvino" and "OpenVINO" in why and "x86-64" in why
    assert load_model("ultrasound").backend == "openvino"
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auto"]["backend"] == "openvino" and "OpenVINO" in report["auto"]["reason"]
    assert report["openvino"]["version"] and "CPU" in report["openvino"]["devices"]
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "auto ->     openvino" in text and "OpenVINO    " in text


def test_without_openvino_auto_falls_back_and_asking_for_it_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # simulates an install without the [openvino] extra
    name, why = choose_backend("auto")
    assert name != "openvino" and "OpenVINO is not installed" in why
    with pytest.raises(MissingDependencyError, match="openvino") as err:
        load_model("ultrasound", backend="openvino")
    assert "pip install 'medstream[openvino]'" in err.value.fix
    with pytest.raises(MissingDependencyError):
        OpenVinoBackend(str(MODELS_DIR / "ultrasound_unet.onnx"), load_model("ultrasound", backend="onnxruntime").contract)
    from medstream.cli.commands.doctor import format_report, machine_report

    text = format_report(machine_report())
    assert "OpenVINO    not installed" in text
