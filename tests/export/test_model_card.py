"""The model card is read from the ONNX file alone (no torch): hash, shapes, weights, MACs, contract."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medstream.export.model_card import estimate_macs, model_card
from medstream.runtime.contract import ModelContract, write_contract


def conv_stack(batch_dim: int | str = 1) -> onnx.ModelProto:
    """Conv 1->4 (3x3, pad 1) at 32x32, ConvTranspose 4->2 (2x2, stride 2) to 64x64, then Gemm on a flat vector."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch_dim, 1, 32, 32])
    y = helper.make_tensor_value_info("up", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("score", TensorProto.FLOAT, None)
    inits = [
        numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w1"),
        numpy_helper.from_array(np.ones((4, 2, 2, 2), np.float32), "w2"),
        numpy_helper.from_array(np.ones((2 * 64 * 64, 5), np.float32), "w3"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c1", "w2"], ["up"], strides=[2, 2]),
        helper.make_node("Reshape", ["up", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3"], ["score"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


EXPECTED_MACS = 4 * 32 * 32 * 9 + 4 * 32 * 32 * 2 * 4 + 2 * 64 * 64 * 5


def test_macs_are_counted_from_conv_transpose_and_gemm_shapes():
    assert estimate_macs(conv_stack()) == EXPECTED_MACS
    # A symbolic batch is taken as 1; a symbolic spatial size without a given shape cannot be counted.
    assert estimate_macs(conv_stack("batch")) == EXPECTED_MACS
    assert estimate_macs(conv_stack(), {"image": [2, 1, 32, 32]}) == 2 * EXPECTED_MACS


def test_card_reads_hash_weights_shapes_and_contract(tmp_path):
    model = conv_stack()
    write_contract(model, ModelContract.model_validate({
        "model_id": "stack", "modality": "ultrasound", "input": {"name": "image", "height": 32, "width": 32},
        "outputs": [{"name": "up"}, {"name": "score", "kind": "auxiliary", "layout": "NC"}],
        "classes": [{"name": "background"}, {"name": "thing", "color": [1, 2, 3]}],
    }))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    card = model_card(path, torch_parameters=123)
    assert card.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card.parameters == 36 + 32 + 2 * 64 * 64 * 5  # the int64 shape constant is not a weight
    assert card.macs == EXPECTED_MACS and card.opset == 17
    assert card.inputs[0].shape == [1, 1, 32, 32] and card.inputs[0].dtype == "float32"
    assert [o.name for o in card.outputs] == ["up", "score"]
    assert card.op_counts == {"Conv": 1, "ConvTranspose": 1, "Reshape": 1, "Gemm": 1}
    text = card.format()
    for expected in ("m.onnx", card.sha256, "opset       17", "GMAC", "stack v1", "thing (1, 2, 3)", "123 trainable"):
        assert expected in text
    assert card.to_dict()["contract"]["model_id"] == "stack"
