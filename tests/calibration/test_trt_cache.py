"""The TensorRT calibration cache file: header, hex float32 big-endian scales, ONNX tensor names."""

from __future__ import annotations

import struct

import onnx
import pytest

from medstream.calibration.trt_cache import (
    format_cache,
    hex_to_scale,
    read_cache,
    scale_to_hex,
    trt_version_code,
    write_cache,
)
from medstream.runtime.errors import ConfigError


def test_version_codes_follow_nv_tensorrt_version():
    assert trt_version_code("8.6.1") == 8601
    assert trt_version_code("8.5") == 8500
    assert trt_version_code("10.3.0") == 100300
    with pytest.raises(ConfigError):
        trt_version_code("7.2.1")  # no explicit-batch ONNX calibration cache
    with pytest.raises(ConfigError):
        trt_version_code("ten")


def test_scale_is_amax_over_127_as_big_endian_float32_hex():
    text = format_cache({"input": 127.0, "/conv/Relu_output_0": 1.0}, version="8.6.1")
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert lines[1] == "input: 3f800000"  # 127 / 127 = 1.0f = 0x3f800000
    name, value = lines[2].split(": ")
    assert name == "/conv/Relu_output_0"
    assert value == struct.pack(">f", 1.0 / 127.0).hex() and len(value) == 8
    assert hex_to_scale(value) == pytest.approx(1.0 / 127.0, rel=1e-7)
    assert scale_to_hex(2.0) == "40000000"


def test_write_then_read_round_trips(tmp_path):
    amax = {"input": 1.0, "a b/c:0": 2.0, "logits": 3.5}
    path = write_cache(tmp_path / "m.calib.cache", amax, version="10.3.0")
    version, algorithm, scales = read_cache(path)
    assert (version, algorithm) == (100300, "EntropyCalibration2")
    assert "a b/c:0" not in scales  # a ':' would make the line ambiguous: left out (TensorRT keeps it in float)
    assert scales == pytest.approx({"input": 1.0 / 127, "logits": 3.5 / 127}, rel=1e-6)
    assert not list(tmp_path.glob(".*tmp"))


def test_calibrate_writes_a_cache_named_by_onnx_tensors(calibrated):
    """The cache written beside M.int8.onnx names the FP32 model's own tensors (as TensorRT's parser does)."""
    result, model = calibrated
    version, algorithm, scales = read_cache(result.outputs["trt_calib_cache"])
    assert (version, algorithm) == (8601, "EntropyCalibration2")
    graph = onnx.load(str(model)).graph
    tensors = {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    assert set(scales) <= tensors
    assert {"input", "a", "m", "u", "cat", "f", "logits"} <= set(scales)
    assert all(s > 0 for s in scales.values())
    assert scales["input"] == pytest.approx(1.0 / 127, rel=0.05)  # input range [0, 1]: amax ~1
