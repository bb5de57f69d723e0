"""``medstream calibrate`` end to end on the mini U-Net: TensorRT-legal output, CPU variant, metadata, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from medstream.calibration.data import CalibrationData
from medstream.calibration.pipeline import calibrate
from medstream.calibration.quantize import float_nodes, read_quantization
from medstream.calibration.validator import validate_model
from medstream.cli.main import main as cli_main
from medstream.runtime.contract import read_contract
from tests.calibration.conftest import request_for
from tests.calibration.models import save, unet_like


def _qdq(model_path):
    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return model, inits, [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_tensorrt_file_is_symmetric_int8_with_per_channel_axis(calibrated):
    result, _ = calibrated
    path = result.outputs["int8"]
    assert validate_model(path) == []
    model, inits, qdq = _qdq(path)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert qdq, "no Q/DQ nodes"
    for node in qdq:
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), node.name
    weights = [n for n in qdq if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].ndim == 4]
    assert len(weights) == 4  # first, mid, fuse, head convs: int8 weights
    for node in weights:
        scale = inits[node.input[1]]
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert scale.ndim == 1 and scale.size == inits[node.input[0]].shape[axis] and axis == 0
        assert inits[node.input[0]].dtype == np.int8 and np.abs(inits[node.input[0]]).max() <= 127
    # biases stay float: TensorRT's Dequantize takes int8 only
    assert not any(inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int32 for n in qdq)


def test_cpu_file_is_u8s8_and_is_not_for_tensorrt(calibrated):
    result, _ = calibrated
    path = result.outputs["int8_cpu"]
    _, inits, qdq = _qdq(path)
    act_types = {inits[n.input[2]].dtype for n in qdq if n.op_type == "QuantizeLinear"}
    assert act_types == {np.dtype(np.uint8)}
    assert {"uint8", "quant_type"} <= {v.rule for v in validate_model(path)}  # uint8 activations, int32 biases


def test_int8_files_carry_the_contract_and_how_they_were_made(calibrated):
    result, model = calibrated
    for key, variant in (("int8", "tensorrt"), ("int8_cpu", "cpu")):
        path = result.outputs[key]
        assert read_contract(path) == read_contract(str(model))
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert meta["medstream.precision"] == "int8"
        q = read_quantization(path)
        assert q["variant"] == variant and q["frames"] == 16 and q["method"] == result.chosen.method
        assert q["excluded_nodes"] == [] and q["data"] == [str(result.request.data[0])]


def test_report_names_frames_dice_agreement_logit_error_and_latency(calibrated):
    result, _ = calibrated
    report = json.loads(Path(result.outputs["report"]).read_text())
    assert report["passed"] and report["frames_used"] == 16 and report["eval_frames"] == 24
    gate = report["chosen"]["gate"]
    assert gate["classes"] == ["background", "mid", "bright"] and gate["dice_fp32"] == [1.0, 1.0, 1.0]
    for v in gate["variants"]:
        assert v["dice"] == [1.0, 1.0, 1.0] and v["argmax_agreement"] == 1.0
        assert 0 < v["logit_mean_abs"] < 0.1 and v["logit_max_rel"] < 0.2
    assert {"fp32", "int8", "int8_cpu"} <= set(report["latency_ms"])


def test_second_run_with_same_data_skips_the_statistics_pass(tmp_path, unet_model, calib_folder, eval_folder):
    from medstream.runtime.contract import read_contract as rc

    contract = rc(str(unet_model))
    req = request_for(unet_model, tmp_path / "a" / "m.int8.onnx", calib_folder, eval_folder, cache_dir=tmp_path / "cache")
    first = CalibrationData([str(calib_folder)], 16, contract)
    r1 = calibrate(req, data=first)
    assert first.reads == 16 and not r1.cache["stats_hit"]
    assert len(list((tmp_path / "cache").glob("stats-*.npz"))) == 1

    again = CalibrationData([str(calib_folder)], 16, contract)
    req2 = request_for(unet_model, tmp_path / "b" / "m.int8.onnx", calib_folder, eval_folder, cache_dir=tmp_path / "cache")
    r2 = calibrate(req2, data=again)
    assert again.reads == 0, "the statistics pass read frames despite a cache hit"
    assert r2.cache["stats_hit"] and r2.frames_used == 16
    assert Path(r1.outputs["trt_calib_cache"]).read_text() == Path(r2.outputs["trt_calib_cache"]).read_text()

    other = CalibrationData([str(calib_folder)], 12, contract)  # other frame count: another key
    req3 = request_for(unet_model, tmp_path / "c" / "m.int8.onnx", calib_folder, eval_folder,
                       cache_dir=tmp_path / "cache", frames=12)
    assert not calibrate(req3, data=other).cache["stats_hit"] and other.reads == 12


def test_excluded_node_stays_float(tmp_path, unet_model, calib_folder, eval_folder):
    result = calibrate(request_for(unet_model, tmp_path / "m.int8.onnx", calib_folder, eval_folder, exclude=["mid_conv"],
                                   cpu_variant=False, trt_cache=False, use_cache=False))
    assert result.passed and "int8_cpu" not in result.outputs and "trt_calib_cache" not in result.outputs
    assert float_nodes(result.outputs["int8"], ["mid_conv", "fuse_conv"]) == ["mid_conv"]
    assert read_quantization(result.outputs["int8"])["excluded_nodes"] == ["mid_conv"]
    with pytest.raises(Exception, match="no_such_node"):
        calibrate(request_for(unet_model, tmp_path / "x.int8.onnx", calib_folder, eval_folder, exclude=["no_such_node"]))


def test_rgb_nhwc_model_calibrates_through_the_same_command(tmp_path, calib_folder, eval_folder, capsys):
    model = save(unet_like(layout="NHWC", channels=3, model_id="tiny-rgb-nhwc"), tmp_path / "rgb.onnx")
    out = tmp_path / "rgb.int8.onnx"
    code = cli_main(["calibrate", "--model", str(model), "--data", str(calib_folder), "--frames", "16",
                     "--eval-data", f"file://{eval_folder}", "--eval-frames", "24", "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache"), "--latency-runs", "0", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "gate         PASSED" in text and "16 frames" in text
    assert validate_model(out) == []
    contract = read_contract(str(out))
    assert (contract.input.layout, contract.input.channels, contract.input.color_order) == ("NHWC", 3, "rgb")
    assert (tmp_path / "rgb.int8-cpu.onnx").is_file() and (tmp_path / "rgb.calib.cache").is_file()


def test_old_opset_model_is_upgraded_to_13(tmp_path, calib_folder, eval_folder):
    model = save(unet_like(opset=11), tmp_path / "old.onnx")
    result = calibrate(request_for(model, tmp_path / "old.int8.onnx", calib_folder, eval_folder, use_cache=False,
                                   cpu_variant=False))
    assert result.passed and validate_model(result.outputs["int8"]) == []
    opset = next(o.version for o in onnx.load(result.outputs["int8"]).opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13


def test_unknown_method_and_missing_eval_data_are_refused(tmp_path, unet_model, calib_folder, eval_folder):
    from medstream.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="method"):
        calibrate(request_for(unet_model, tmp_path / "m.int8.onnx", calib_folder, eval_folder, method="kl"))
    req = request_for(unet_model, tmp_path / "m.int8.onnx", calib_folder, eval_folder)
    req.eval_data = None
    with pytest.raises(ConfigError, match="--eval-data"):
        calibrate(req)


def test_input_is_int8_quantized_not_uint8(calibrated):
    """The TensorRT file's very first Q (on the graph input) is int8: the classic U8 mistake is not made."""
    result, _ = calibrated
    model = onnx.load(result.outputs["int8"])
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    zp = next(i for i in model.graph.initializer if i.name == q.input[2])
    assert zp.data_type == TensorProto.INT8


def test_outputs_get_ordinary_file_permissions(calibrated):
    """Atomic writes go through mkstemp (0600); the outputs must not stay unreadable to the service user."""
    import os
    import stat

    from medstream.runtime.files import DEFAULT_MODE

    result, _ = calibrated
    for path in result.outputs.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == DEFAULT_MODE, path
