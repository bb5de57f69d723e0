"""The TensorRT Q/DQ validator: one hand-built graph per rejection rule, and a clean graph that passes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medstream.calibration.validator import RULES, validate_model
from medstream.cli.main import main as cli_main

F = TensorProto.FLOAT


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def qdq_conv(*, act_zp=0, act_zp_dtype=np.int8, act_zp_given=True, w_axis: int | None = 0, w_scales=(0.02, 0.03),
             w_zp=(0, 0), w_dtype=np.int8, opset=17, domain="", scale_from_input=False, act_scale=0.01,
             extra_nodes=(), extra_inits=(), dq_output_direct=False) -> onnx.ModelProto:
    """input -> Q -> DQ -> Conv(DQ(int8 weights, per-channel)) -> output: TensorRT-legal by default.

    Every keyword bends one rule.
    """
    inits = [_const("x_scale", act_scale), _const("w_scale", list(w_scales)),
             _const("w_q", np.ones((len(w_scales), 1, 1, 1)), w_dtype), _const("w_zp", list(w_zp), w_dtype)]
    q_inputs = ["x", "x_scale"]
    if act_zp_given:
        inits.append(_const("x_zp", act_zp, act_zp_dtype))
        q_inputs.append("x_zp")
    inputs = [helper.make_tensor_value_info("x", F, [1, 1, 4, 4])]
    if scale_from_input:
        inputs.append(helper.make_tensor_value_info("dyn_scale", F, []))
        q_inputs[1] = "dyn_scale"
    w_attrs = {} if w_axis is None else {"axis": w_axis}
    nodes = [
        helper.make_node("QuantizeLinear", q_inputs, ["xq"], name="q_x", domain=domain),
        helper.make_node("DequantizeLinear", ["xq", *q_inputs[1:]], ["xd"], name="dq_x", domain=domain),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w", **w_attrs),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
        *extra_nodes,
    ]
    outputs = [helper.make_tensor_value_info("y", F, [1, len(w_scales), 4, 4])]
    if dq_output_direct:
        outputs.append(helper.make_tensor_value_info("xq", TensorProto.INT8, [1, 1, 4, 4]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits + list(extra_inits))
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def rules(model) -> list[str]:
    return sorted({v.rule for v in validate_model(model)})


def test_clean_graph_passes():
    assert validate_model(qdq_conv()) == []


def test_every_rule_has_an_explanation():
    assert set(RULES) >= {"opset", "no_qdq", "qoperator", "dynamic_quantize", "contrib_domain", "uint8", "quant_type",
                          "zero_point", "constant", "scale_value", "per_channel_axis", "q_without_dq"}


def test_non_zero_zero_point_is_rejected_with_node_name():
    found = validate_model(qdq_conv(act_zp=3))
    assert [(v.rule, v.node) for v in found] == [("zero_point", "q_x"), ("zero_point", "dq_x")]
    assert "3" in found[0].detail


def test_non_zero_per_channel_weight_zero_point_is_rejected():
    found = validate_model(qdq_conv(w_zp=(0, 1)))
    assert [(v.rule, v.node) for v in found] == [("zero_point", "dq_w")]


def test_uint8_qdq_is_rejected():
    found = validate_model(qdq_conv(act_zp=0, act_zp_dtype=np.uint8))
    assert {(v.rule, v.node) for v in found} == {("uint8", "q_x"), ("uint8", "dq_x")}


def test_quantize_without_zero_point_means_uint8():
    found = validate_model(qdq_conv(act_zp_given=False))
    assert ("uint8", "q_x") in {(v.rule, v.node) for v in found}
    assert "defaults to uint8" in next(v.detail for v in found if v.node == "q_x")


def test_int32_bias_dequantize_is_rejected():
    bias = [_const("b_q", [5, -3], np.int32), _const("b_scale", [0.0002, 0.0003]), _const("b_zp", [0, 0], np.int32)]
    dq_b = helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["bd"], name="dq_bias", axis=0)
    found = validate_model(qdq_conv(extra_nodes=[dq_b], extra_inits=bias))
    assert [(v.rule, v.node) for v in found] == [("quant_type", "dq_bias")]
    assert "bias" in found[0].detail


def test_qoperator_nodes_are_rejected():
    inits = [_const(n, v, t) for n, v, t in (("xs", 0.1, np.float32), ("xz", 0, np.int8), ("ws", 0.1, np.float32),
                                               ("wz", 0, np.int8), ("ys", 0.1, np.float32), ("yz", 0, np.int8),
                                               ("w", np.ones((1, 1, 1, 1)), np.int8))]
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], name="qconv"),
             helper.make_node("ConvInteger", ["x", "w"], ["y2"], name="convint"),
             helper.make_node("MatMulInteger", ["x", "x"], ["y3"], name="mmint")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.INT8, None) for o in ("y",)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    found = validate_model(model)
    assert [(v.rule, v.node) for v in found] == [("qoperator", "qconv"), ("qoperator", "convint"), ("qoperator", "mmint")]


def test_dynamic_quantize_linear_is_rejected():
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "s", "z"], name="dyn")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [4])],
                              [helper.make_tensor_value_info("xq", TensorProto.UINT8, [4])])
    found = validate_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(v.rule, v.node) for v in found] == [("dynamic_quantize", "dyn")]


def test_per_channel_scale_without_axis_is_rejected():
    found = validate_model(qdq_conv(w_axis=None))
    assert [(v.rule, v.node) for v in found] == [("per_channel_axis", "dq_w")]
    assert "no 'axis'" in found[0].detail


def test_per_channel_axis_outside_the_tensor_is_rejected():
    found = validate_model(qdq_conv(w_axis=4))
    assert [(v.rule, v.node) for v in found] == [("per_channel_axis", "dq_w")]


def test_per_channel_axis_with_wrong_channel_count_is_rejected():
    found = validate_model(qdq_conv(w_axis=1))  # weights are (2, 1, 1, 1): axis 1 has 1 channel, 2 scales
    assert [(v.rule, v.node) for v in found] == [("per_channel_axis", "dq_w")]
    assert "2 scales" in found[0].detail


def test_opset_below_13_is_rejected():
    assert "opset" in rules(qdq_conv(opset=12))


def test_contrib_domain_qdq_is_rejected():
    found = validate_model(qdq_conv(domain="com.microsoft"))
    assert {(v.rule, v.node) for v in found} == {("contrib_domain", "q_x"), ("contrib_domain", "dq_x")}


def test_scale_that_is_not_a_constant_is_rejected():
    found = validate_model(qdq_conv(scale_from_input=True))
    assert {(v.rule, v.node) for v in found} == {("constant", "q_x"), ("constant", "dq_x")}


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan")])
def test_non_positive_or_nan_scale_is_rejected(scale):
    found = validate_model(qdq_conv(act_scale=scale))
    assert {(v.rule, v.node) for v in found} == {("scale_value", "q_x"), ("scale_value", "dq_x")}


def test_int8_tensor_leaving_the_graph_without_dequantize_is_rejected():
    assert [(v.rule, v.node) for v in validate_model(qdq_conv(dq_output_direct=True))] == [("q_without_dq", "q_x")]


def test_model_without_any_qdq_is_rejected():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", F, [4])], [helper.make_tensor_value_info("y", F, [4])])
    assert rules(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])) == ["no_qdq"]


def test_check_int8_command_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(qdq_conv(), str(good))
    onnx.save(qdq_conv(act_zp=3, act_zp_dtype=np.uint8), str(bad))
    assert cli_main(["check-int8", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli_main(["check-int8", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "[uint8] q_x" in out and "[zero_point] q_x" in out
    assert cli_main(["check-int8", str(tmp_path / "missing.onnx")]) != 0
