"""fp16 conversion of the ONNX (what TensorRT 11 builds fp16 engines from), checked with ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from medstream.runtime.contract import read_contract
from medstream.runtime.engine.fp16 import PRECISION_KEY, convert_file_to_fp16, convert_to_fp16, has_qdq
from tests.fixtures.gpu_models import tiny_conv, tiny_qdq
from tests.fixtures.models import save


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_fp16_model_keeps_fp32_io_and_matches_fp32_within_tolerance():
    model = tiny_conv(32)
    fp16 = convert_to_fp16(model)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in fp16.graph.initializer} == {onnx.TensorProto.FLOAT16}
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    ref, got = _run(model, x), _run(fp16, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=5e-3)
    assert np.mean(np.argmax(got, 1) == np.argmax(ref, 1)) > 0.99
    assert not np.array_equal(got, ref)  # it really ran in reduced precision


def test_fp16_file_keeps_the_contract_and_marks_precision(tmp_path):
    src = save(tiny_conv(32), tmp_path / "m.onnx")
    dst = convert_file_to_fp16(src, tmp_path / "out" / "m_fp16.onnx")
    converted = onnx.load(str(dst))
    meta = {p.key: p.value for p in converted.metadata_props}
    assert meta[PRECISION_KEY] == "fp16"
    assert read_contract(converted) == read_contract(onnx.load(str(src)))
    # the original is untouched
    assert {i.data_type for i in onnx.load(str(src)).graph.initializer} == {onnx.TensorProto.FLOAT}


def test_has_qdq():
    assert has_qdq(tiny_qdq(32)) and not has_qdq(tiny_conv(32))
