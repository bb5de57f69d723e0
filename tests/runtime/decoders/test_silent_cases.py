"""Issue 13's silent cases, one test each: now right, or refused at start with a clear error.

Each runs a third-party-style ONNX model (built here, no medstream contract inside, the contract given by
config) through the real stream (synthetic source, ONNX Runtime, ZeroMQ, ``decode_overlay``) or the real
model loader, and checks against a reference decode written here in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medstream.runtime.config import load_config
from medstream.runtime.errors import ContractError, ModelLoadError
from medstream.runtime.models.loader import load_model
from medstream.runtime.sources import read_frames
from medstream.runtime.stream import build_stream
from tests.runtime.decoders import models as M

SEG_URI = "synthetic://ultrasound?fps=20&frames=5&width=64&height=64&seed=1"


def _frames(uri: str, n: int) -> dict[int, np.ndarray]:
    """The frames the stream saw, read again unpaced (the phantom moves at the paced rate: motion_fps)."""
    return {f.seq: f.image for f in read_frames(uri.replace("fps=20", "fps=0&motion_fps=20"), n)}


@pytest.mark.parametrize("probabilities", [False, True], ids=["logits", "probabilities"])
def test_one_channel_sigmoid_segmenter_gives_the_masks_a_numpy_sigmoid_threshold_gives(tmp_path, probabilities):
    model, contract = M.sigmoid_segmenter(probabilities=probabilities)
    overlays, summary = M.run_stream(M.save(model, tmp_path / "binary.onnx"), SEG_URI, contract)
    frames = _frames(SEG_URI, 5)
    assert summary["accounting_ok"] and summary["counters"]["processed"] == len(overlays) >= 3
    for ov in overlays:
        x = frames[ov.seq].astype(np.float32) / np.float32(255)
        p = 1.0 / (1.0 + np.exp(-(np.float32(20) * x - np.float32(3)).astype(np.float64)))
        expected = (p > 0.5).astype(np.uint8)
        assert 0.01 < expected.mean() < 0.75, "the reference must mark part of the frame, as in the issue"
        np.testing.assert_array_equal(ov.mask, expected)  # argmax over one channel would give all zeros
        assert ov.areas_px == {"background": int((expected == 0).sum()), "lesion": int(expected.sum())}
        assert ov.contours and all(c.class_id == 1 for c in ov.contours)
        assert ov.confidence == pytest.approx(p[expected == 1].mean(), abs=1e-4)  # 4096 px: every fg pixel counted
        q = p[expected == 1]
        entropy = -(q * np.log(q) + (1 - q) * np.log(1 - q)) / math.log(2)
        assert ov.entropy == pytest.approx(entropy.mean(), abs=1e-4)


def test_classifier_given_only_by_config_publishes_label_probabilities_and_top_k(tmp_path):
    model, contract = M.classifier()
    uri = "synthetic://ultrasound?fps=20&frames=4&width=64&height=48&seed=1"
    overlays, summary = M.run_stream(M.save(model, tmp_path / "planes.onnx"), uri, contract, low_confidence_below=0.1)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    frames = _frames(uri, 4)
    assert summary["accounting_ok"] and len(overlays) >= 3
    for ov in overlays:
        assert ov.task == "classification" and ov.mask.shape == (1, 1) and not ov.contours
        m = (frames[ov.seq].astype(np.float64) / 255).mean()  # grey replicated into RGB: all channel means equal
        logits = np.array([m, m * m]) @ weights["W"] + weights["B"]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        assert ov.label == int(np.argmax(p))
        np.testing.assert_allclose(ov.probabilities, p, atol=1e-5)
        assert [i for i, _ in ov.top_k] == list(np.argsort(-p)[:3])
        assert ov.confidence == pytest.approx(p.max(), abs=1e-4)
        assert ov.entropy == pytest.approx(-(p * np.log(p)).sum() / math.log(14), abs=1e-4)
        assert ov.low_confidence == (p.max() < 0.1)
        cam = weights["cam_const"][0, ov.label]
        assert ov.heatmap is not None and ov.heatmap.roi == (0, 0, 64, 48) and ov.heatmap.class_id == ov.label
        np.testing.assert_array_equal(ov.heatmap.data, np.rint((cam - cam.min()) / (cam.max() - cam.min()) * 255))


def _load(tmp_path, model: onnx.ModelProto, contract: dict):
    return load_model(M.save(model, tmp_path / "m.onnx"), contract=contract, backend="onnxruntime")


def test_a_classifier_with_its_layout_left_out_is_refused_at_load_not_dropped_per_frame(tmp_path):
    model, contract = M.classifier(with_cam=False)
    del contract["task"]  # the case: the user did not say classification, nor the layout
    with pytest.raises(ContractError) as exc:
        _load(tmp_path, model, contract)
    msg = str(exc.value)
    assert "'logits'" in msg and "[1, 14]" in msg and "rank 4" in msg and "task: classification" in msg
    contract["task"] = "classification"  # with the task, the left-out layout is NC and it loads
    assert _load(tmp_path, model, contract).contract.outputs[0].layout == "NC"


def test_two_classes_declared_for_a_four_channel_output_are_refused(tmp_path):
    model, contract = M.four_channel_segmenter()
    with pytest.raises(ContractError) as exc:
        _load(tmp_path, model, contract)
    assert "4 channels" in str(exc.value) and "classes list 2" in str(exc.value)
    assert "list 4 classes" in exc.value.fix


def test_only_an_auxiliary_output_is_refused(tmp_path):
    model, contract = M.sigmoid_segmenter()
    contract["outputs"] = [{"name": "out", "kind": "auxiliary"}]
    with pytest.raises(ContractError, match="none carries the segmentation answer"):
        _load(tmp_path, model, contract)


def _odd_size_unet(dynamic: bool = True) -> onnx.ModelProto:
    """Pool by 2, upsample by 2, add to the input: only even sides work (as in many U-Nets)."""
    hw = ["H", "W"] if dynamic else [64, 64]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("MaxPool", ["input"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Add", ["input", "u"], ["out"])]
    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, *hw])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, *hw])], [scales])
    model = helper.make_model(graph, opset_imports=M.OPSET)
    model.ir_version = 8
    return model


def test_dynamic_shape_model_at_an_odd_size_fails_at_warm_up_saying_what_was_fed(tmp_path):
    contract = {"model_id": "odd", "input": {"name": "input", "height": 63, "width": 63, "dynamic_spatial": True},
                "outputs": [{"name": "out", "kind": "logits"}], "classes": [{"name": "bg"}, {"name": "fg"}]}
    cfg = load_config(None, {"source": "synthetic://ultrasound?fps=0&frames=2&width=63&height=63",
                             "model": str(M.save(_odd_size_unet(), tmp_path / "odd.onnx")), "contract": contract,
                             "publish": M.free_endpoint(), "backend": "onnxruntime", "threads": 1})
    with build_stream(cfg) as pipe, pytest.raises(ModelLoadError) as exc:
        pipe.prepare()
    msg = str(exc.value)
    assert "warm-up" in msg and "[1, 1, 63, 63] float32" in msg and "before any frame" in msg
    assert "frame was dropped" not in msg and "multiples of 32" in msg


def _uint8_input_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.array([0.1], np.float32).reshape(1, 1, 1, 1), "w")
    b = numpy_helper.from_array(np.array([-3.0], np.float32), "b")
    nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["f", "w", "b"], ["out"])]
    graph = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("input", TensorProto.UINT8, [1, 1, 64, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 64, 64])], [w, b])
    model = helper.make_model(graph, opset_imports=M.OPSET)
    model.ir_version = 8
    return model


def test_a_uint8_input_model_is_refused_with_the_fix_then_warms_up_and_runs_as_uint8(tmp_path):
    path = M.save(_uint8_input_model(), tmp_path / "u8.onnx")
    contract = {"model_id": "u8", "input": {"name": "input", "height": 64, "width": 64},
                "outputs": [{"name": "out", "kind": "logits"}], "classes": [{"name": "bg"}, {"name": "fg"}]}
    with pytest.raises(ContractError) as exc:
        load_model(path, contract=contract, backend="onnxruntime")
    assert "takes uint8" in str(exc.value) and exc.value.fix == "set contract.input.dtype: uint8"
    contract["input"]["dtype"] = "uint8"
    overlays, summary = M.run_stream(path, SEG_URI, contract)
    frames = _frames(SEG_URI, 5)
    assert summary["accounting_ok"] and overlays
    for ov in overlays:  # logit = 0.1 * pixel - 3: foreground above pixel 30
        np.testing.assert_array_equal(ov.mask, (frames[ov.seq] > 30).astype(np.uint8))
