"""The accuracy oracle (medstream.runtime.evaluation), without torch.

The model here is a real ONNX file run by ONNX Runtime: a 1x1 convolution that classifies each pixel
by its grey level (0 -> background, 100 -> class 1, 200 -> class 2). Frames are drawn from those
levels, so the prediction is known exactly, and truth masks are then edited by hand to plant known
true/false positives and negatives, giving Dice and IoU values computed here by hand.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from medstream.runtime.contract import ModelContract, read_contract, resolve_contract, write_contract
from medstream.runtime.errors import ContractError
from medstream.runtime.evaluation import (
    confusion_from_masks,
    evaluate_model,
    find_image_mask_pairs,
    iter_eval_batches,
    iter_frames_with_truth,
    truth_at,
)
from medstream.runtime.phantom import UltrasoundPhantom
from medstream.runtime.preprocess import Preprocessor

SIZE = 32
CONTRACT = {
    "model_id": "level-classifier",
    "modality": "ultrasound",
    "input": {"name": "image", "height": SIZE, "width": SIZE},
    "outputs": [{"name": "logits", "kind": "logits", "layout": "NCHW"}],
    "classes": [{"name": "background"}, {"name": "vessel"}, {"name": "needle"}],
}


def level_classifier(path, with_contract: bool = True, size: int = SIZE):
    """1x1 conv: logits (0, 10x-2, 20x-8) for x = pixel/255; argmax gives 0 / 1 / 2 for 0 / 100 / 200."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, size, size])
    w = numpy_helper.from_array(np.array([0.0, 10.0, 20.0], np.float32).reshape(3, 1, 1, 1), "w")
    b = numpy_helper.from_array(np.array([0.0, -2.0, -8.0], np.float32), "b")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w", "b"], ["logits"])], "g", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_contract:
        contract = dict(CONTRACT, input=dict(CONTRACT["input"], height=size, width=size))
        write_contract(model, ModelContract.model_validate(contract))
    onnx.save(model, str(path))
    return path


LEVELS = np.array([0, 100, 200], np.uint8)


def frame_of(classes: np.ndarray) -> np.ndarray:
    return LEVELS[classes]


@pytest.fixture
def model(tmp_path):
    return level_classifier(tmp_path / "levels.onnx")


# --------------------------------------------------------------------------------------- metrics
def test_confusion_counts_truth_rows_prediction_columns():
    truth = np.array([[0, 1], [2, 2]], np.uint8)
    pred = np.array([[0, 2], [2, 1]], np.uint8)
    conf = confusion_from_masks(pred, truth, 3)
    assert conf.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_confusion_refuses_bad_masks():
    with pytest.raises(ContractError, match="differ in shape"):
        confusion_from_masks(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 2)
    with pytest.raises(ContractError, match="class id 3"):
        confusion_from_masks(np.full((2, 2), 3, np.uint8), np.zeros((2, 2), np.uint8), 3)


def test_truth_is_resized_with_nearest_neighbour():
    mask = np.zeros((96, 96), np.uint8)
    mask[:, ::2] = 2  # stripes: any interpolation would create 1s
    small = truth_at(mask, 64, 64)
    assert small.shape == (64, 64)
    assert set(np.unique(small)) <= {0, 2}
    cropped = truth_at(mask, 10, 10, roi=(2, 0, 10, 10))
    assert cropped.shape == (10, 10) and cropped[0, 0] == 2 and cropped[0, 1] == 0


# --------------------------------------------------------------------------------------- end to end
def _write_npz_folder(folder, frames):
    folder.mkdir()
    for i, (classes, truth) in enumerate(frames):
        np.savez(folder / f"f{i:03d}.npz", image=frame_of(classes), mask=truth)
    return folder


def test_accumulated_and_per_frame_dice_by_hand(tmp_path, model):
    # Frame 0: a 10x10 vessel predicted exactly; needle: 20 truth pixels, 10 of them predicted,
    # plus 10 predicted needle pixels that truth calls background.
    c0 = np.zeros((SIZE, SIZE), np.uint8)
    c0[2:12, 2:12] = 1
    c0[20, 0:20] = 2
    t0 = c0.copy()
    t0[20, 10:20] = 0  # predicted needle, truth background: 10 FP
    t0[21, 0:10] = 2  # truth needle, predicted background: 10 FN
    # Frame 1: no needle anywhere; vessel 4 px in truth, predicted 8 px (4 FP).
    c1 = np.zeros((SIZE, SIZE), np.uint8)
    c1[0:2, 0:4] = 1
    t1 = np.zeros_like(c1)
    t1[0:1, 0:4] = 1
    data = _write_npz_folder(tmp_path / "data", [(c0, t0), (c1, t1)])
    report = evaluate_model(model, str(data), frames=10, intra_op_threads=1)
    assert report.frames == 2
    # needle: TP 10, FP 10, FN 10 over all frames
    assert report.dice("needle") == pytest.approx(20 / 40)
    assert report.iou("needle") == pytest.approx(10 / 30)
    # vessel: TP 100 + 4, FP 0 + 4, FN 0
    assert report.dice("vessel") == pytest.approx(2 * 104 / (2 * 104 + 4))
    vessel = report.classes[1]
    assert vessel.dice_per_frame == pytest.approx((1.0 + 8 / 12) / 2)  # the headline differs from the per-frame mean
    assert vessel.frames_present == 2 and report.classes[2].frames_present == 1
    assert report.mean_foreground_dice == pytest.approx((report.dice("vessel") + 0.5) / 2)
    assert report.model_sha256 and len(report.model_sha256) == 64
    doc = json.loads(report.to_json())
    assert doc["classes"][2]["false_positive_px"] == 10 and doc["headline"] == "accumulated"
    table = report.to_table()
    assert "needle" in table and "0.5000" in table and "accumulated" in table


def test_false_alarm_frames_are_counted(tmp_path, model):
    c = np.zeros((SIZE, SIZE), np.uint8)
    c[5, 5:9] = 2  # the model will call these needle; the truth has no needle
    data = _write_npz_folder(tmp_path / "d", [(c, np.zeros_like(c))])
    report = evaluate_model(model, str(data), frames=1, intra_op_threads=1)
    needle = report.classes[2]
    assert needle.frames_present == 0 and needle.frames_false_alarm == 1
    assert needle.dice == 0.0 and needle.dice_per_frame is None


def test_record_and_images_masks_layouts_and_resizing(tmp_path, model):
    """A `medstream record` folder (NNNNNNNN.npy + .truth.npy) at twice the model's size, and images/+masks/."""
    rec = tmp_path / "rec"
    rec.mkdir()
    classes = np.kron(np.random.default_rng(0).integers(0, 3, (8, 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
    for i in range(3):
        np.save(rec / f"{i:08d}.npy", frame_of(classes))
        np.save(rec / f"{i:08d}.truth.npy", classes)
        (rec / f"{i:08d}.json").write_text(json.dumps({"seq": i, "color_order": "gray"}))
    assert len(find_image_mask_pairs(rec)) == 3
    report = evaluate_model(model, str(rec), frames=5, intra_op_threads=1)
    assert report.frames == 3
    assert report.dice("vessel") == pytest.approx(1.0) and report.dice("needle") == pytest.approx(1.0)

    import cv2

    sub = tmp_path / "sub"
    (sub / "images").mkdir(parents=True)
    (sub / "masks").mkdir()
    cv2.imwrite(str(sub / "images" / "a.png"), frame_of(classes))
    cv2.imwrite(str(sub / "masks" / "a.png"), classes)
    report = evaluate_model(model, f"file://{sub}", frames=5, intra_op_threads=1)
    assert report.frames == 1 and report.pixel_accuracy == pytest.approx(1.0)


def test_synthetic_scenes_spread_frames_over_seeds():
    frames = list(iter_frames_with_truth("synthetic://ultrasound?seed=10000&scenes=3&width=64&height=64", 6))
    assert len(frames) == 6
    for k, seed in ((0, 10000), (2, 10001), (5, 10002)):
        image, mask = UltrasoundPhantom(height=64, width=64, seed=seed).render(k % 2)
        np.testing.assert_array_equal(frames[k][0], image)
        np.testing.assert_array_equal(frames[k][1], mask)


def test_iter_eval_batches_uses_the_runtime_preprocessor():
    contract = resolve_contract(None, CONTRACT, "levels.onnx")
    uri = "synthetic://ultrasound?seed=10000&width=64&height=64"
    batches = list(iter_eval_batches(contract, uri, 10, batch=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0][1].shape == (4, SIZE, SIZE) and batches[0][1].dtype == np.uint8
    image, mask = UltrasoundPhantom(height=64, width=64, seed=10000).render(0)
    np.testing.assert_array_equal(batches[0][0][0:1], Preprocessor(contract)(image))
    np.testing.assert_array_equal(batches[0][1][0], truth_at(mask, SIZE, SIZE))


# --------------------------------------------------------------------------------------- no contract
def test_model_without_contract_needs_the_missing_facts(tmp_path):
    path = level_classifier(tmp_path / "bare.onnx", with_contract=False)
    assert read_contract(path) is None
    with pytest.raises(ContractError) as err:
        evaluate_model(path, "synthetic://ultrasound?seed=10000", frames=2)
    for field in ("model_id", "input.name", "input.height", "input.width", "outputs", "classes"):
        assert field in str(err.value)
    partial = {k: v for k, v in CONTRACT.items() if k not in ("classes", "outputs")}
    with pytest.raises(ContractError, match="outputs, classes"):
        resolve_contract(read_contract(path), partial, str(path))


def test_model_without_contract_runs_when_config_gives_the_facts(tmp_path):
    path = level_classifier(tmp_path / "bare.onnx", with_contract=False)
    contract = resolve_contract(read_contract(path), CONTRACT, str(path))
    classes = np.zeros((SIZE, SIZE), np.uint8)
    classes[4:8, 4:8] = 1
    classes[10, :] = 2
    with OnnxRuntimeBackend(str(path), contract, intra_op_threads=1) as backend:
        out = backend.infer({"image": Preprocessor(contract)(frame_of(classes))})
    np.testing.assert_array_equal(out["logits"][0].argmax(0), classes)
    data = _write_npz_folder(tmp_path / "d", [(classes, classes)])
    report = evaluate_model(path, str(data), frames=1, contract_overrides=CONTRACT, intra_op_threads=1)
    assert report.mean_foreground_dice == pytest.approx(1.0)


def test_evaluation_does_not_import_torch():
    import subprocess

    code = ("import sys, medstream.runtime.evaluation, medstream.runtime.models; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
