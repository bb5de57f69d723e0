"""The INT8 gate scores every task by its own metric, bounds the raw output error, and refuses what it cannot score.

Models here are real ONNX files built in the test from the bundled ultrasound U-Net: its softmax head
re-expressed as a 2-channel **sigmoid** head (``logit_k - logit_background``: foreground where class k beats
background), so a sigmoid segmenter with a known, good answer exists without training one. "Candidates" are
the same graph with a changed tail (scaled or shifted outputs) standing in for an INT8 file: the gate's
logic is what is tested, on real ONNX Runtime sessions and the runtime's own decoders.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from medstream.calibration.gate import EvalSet, Gate, GateRefused
from medstream.runtime.contract import read_contract, write_contract
from medstream.runtime.models import bundled_model_path

DATA = "synthetic://ultrasound?seed=10030&scenes=2"
FRAMES = 6


def _sigmoid_unet(tmp_path, name: str, scale: float = 1.0, shift: float = 0.0):
    """The bundled U-Net with a sigmoid head ``scale * (logits[:, 1:3] - logits[:, 0:1]) + shift``."""
    src = bundled_model_path("ultrasound")
    proto = onnx.load(str(src))
    contract = read_contract(proto)
    old = contract.primary_output.name
    g = proto.graph
    consts = {"s_fg_start": [1], "s_fg_end": [3], "s_bg_start": [0], "s_bg_end": [1], "s_axis": [1]}
    for key, value in consts.items():
        g.initializer.append(helper.make_tensor(key, TensorProto.INT64, [1], value))
    g.initializer.append(helper.make_tensor("s_scale", TensorProto.FLOAT, [], [scale]))
    g.initializer.append(helper.make_tensor("s_shift", TensorProto.FLOAT, [], [shift]))
    g.node.extend([
        helper.make_node("Slice", [old, "s_fg_start", "s_fg_end", "s_axis"], ["s_fg"]),
        helper.make_node("Slice", [old, "s_bg_start", "s_bg_end", "s_axis"], ["s_bg"]),
        helper.make_node("Sub", ["s_fg", "s_bg"], ["s_diff"]),
        helper.make_node("Mul", ["s_diff", "s_scale"], ["s_scaled"]),
        helper.make_node("Add", ["s_scaled", "s_shift"], ["fg_logits"]),
    ])
    shape = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("fg_logits", TensorProto.FLOAT, [shape[0], 2, shape[2], shape[3]]))
    new = contract.model_copy(update={
        "contract_version": 2,
        "outputs": (contract.primary_output.model_copy(update={"name": "fg_logits", "activation": "sigmoid"}),)})
    write_contract(proto, new)
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path, read_contract(str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    good, contract = _sigmoid_unet(tmp, "good")
    data = EvalSet.load(contract, DATA, FRAMES)
    return tmp, good, contract, data


def test_a_good_sigmoid_segmenter_is_scored_by_its_sigmoid_masks_and_passes(models):
    tmp, good, contract, data = models
    gate = Gate(good, contract, data)
    report = gate.new_report()
    assert report.metric == "Dice" and report.task == "segmentation"
    vessel, needle = report.dice_fp32[1], report.dice_fp32[2]
    assert vessel > 0.9 and needle > 0.8, report  # the sigmoid head decoded as sigmoid, not argmaxed to background
    score = gate.score(good, "same file")
    assert score.passed and score.output_rel_l2 == 0.0 and score.argmax_agreement == 1.0, score


def test_a_sigmoid_segmenter_whose_fp32_masks_are_all_background_is_refused(models):
    tmp, _, contract, data = models
    blind, blind_contract = _sigmoid_unet(tmp, "blind", shift=-50.0)  # every pixel far below every threshold
    with pytest.raises(GateRefused) as err:
        Gate(blind, blind_contract, data)
    text = str(err.value)
    assert "Dice 0" in text and "vessel" in text and "needle" in text and "contract" in err.value.fix


def test_same_masks_but_a_large_output_error_fails_on_the_output_bound(models):
    tmp, good, contract, data = models
    gate = Gate(good, contract, data)
    stretched, _ = _sigmoid_unet(tmp, "stretched", scale=1.5)  # same signs, so the same masks; outputs 50 % off
    score = gate.score(stretched, "int8")
    assert score.worst_drop_points is not None and abs(score.worst_drop_points) < 1e-9
    assert not score.passed and score.output_rel_l2 == pytest.approx(0.5, rel=1e-3)
    assert any("raw output error" in r for r in score.reasons), score.reasons
    slight, _ = _sigmoid_unet(tmp, "slight", scale=1.02)
    assert gate.score(slight, "int8").passed


def test_the_bundled_classifier_and_detector_are_gated_by_f1_and_ap(tmp_path):
    from medstream.calibration.gate import TASK_METRIC

    for name, metric in (("needle-classifier", "F1"), ("ultrasound-detector", "AP@0.5")):
        path = bundled_model_path(name)
        contract = read_contract(str(path))
        assert TASK_METRIC[contract.task] == metric
        data = EvalSet.load(contract, "synthetic://ultrasound?seed=10040&scenes=4&stride=30", 24)
        gate = Gate(path, contract, data)
        report = gate.new_report()
        assert report.metric == metric and all(v is not None and v > 0.5 for v in report.dice_fp32), report
        score = gate.score(path, "same file")
        assert score.passed and score.output_rel_l2 == 0.0 and score.argmax_agreement == 1.0


def test_an_unscoreable_classifier_is_refused(tmp_path):
    """A classifier whose FP32 never predicts 'needle' (logits pinned) has F1 0 on it: refused, not passed."""
    path = bundled_model_path("needle-classifier")
    proto = onnx.load(str(path))
    contract = read_contract(proto)
    g = proto.graph
    out = g.output[0].name
    g.initializer.append(helper.make_tensor("pin", TensorProto.FLOAT, [1, 2], [1000.0, -1000.0]))
    g.node.append(helper.make_node("Add", [out, "pin"], ["pinned"]))
    g.output[0].name = "pinned"
    write_contract(proto, contract.model_copy(update={"outputs": (contract.primary_output.model_copy(
        update={"name": "pinned"}),)}))
    pinned = tmp_path / "pinned.onnx"
    onnx.save(proto, str(pinned))
    contract = read_contract(str(pinned))
    data = EvalSet.load(contract, "synthetic://ultrasound?seed=10040&scenes=4&stride=30", 24)
    assert any(np.asarray(t).size for t in data.truths)
    with pytest.raises(GateRefused, match="F1 0 on class"):
        Gate(pinned, contract, data)
