"""Classification and detection metrics against independent references written here, and the truth rules.

The AP references are worked by hand from the COCO definition (101-point interpolated precision, IoU
thresholds 0.50:0.05:0.95), not computed by pycocotools; the confusion matrix is counted in a plain loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from medstream.runtime.errors import ContractError
from medstream.runtime.evaluation_tasks import (
    classification_scores,
    coco_average_precision,
    confusion_from_labels,
    operating_point,
)
from medstream.runtime.task_truth import needle_presence_label, rule_for_model, vessel_needle_boxes

pytest.importorskip("pycocotools")


def _coco_ap(points: list[tuple[float, float]]) -> float:
    """101-point interpolated AP from (recall, precision) after each detection, best score first (by hand)."""
    recall = np.array([r for r, _ in points])
    precision = np.array([p for _, p in points])
    total = 0.0
    for r in np.linspace(0, 1, 101):
        reach = precision[recall >= r - 1e-12]
        total += reach.max() if reach.size else 0.0
    return total / 101


def test_confusion_and_per_class_scores_match_counting_by_hand():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.7, truth, rng.integers(0, 3, 200))
    counted = [[0] * 3 for _ in range(3)]
    for t, p in zip(truth, pred, strict=True):
        counted[t][p] += 1
    conf = confusion_from_labels(truth, pred, 3)
    assert conf.tolist() == counted
    s = classification_scores(conf)
    assert s["accuracy"] == pytest.approx(sum(int(t == p) for t, p in zip(truth, pred, strict=True)) / 200)
    for k in range(3):
        tp = sum(1 for t, p in zip(truth, pred, strict=True) if t == k and p == k)
        fp = sum(1 for t, p in zip(truth, pred, strict=True) if t != k and p == k)
        fn = sum(1 for t, p in zip(truth, pred, strict=True) if t == k and p != k)
        assert s["precision"][k] == pytest.approx(tp / (tp + fp))
        assert s["recall"][k] == pytest.approx(tp / (tp + fn))
        assert s["f1"][k] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_a_class_never_predicted_has_undefined_precision_not_zero_or_one():
    s = classification_scores(confusion_from_labels(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), 2))
    assert s["precision"] == [0.5, None] and s["recall"] == [1.0, 0.0] and s["f1"] == [pytest.approx(2 / 3), 0.0]
    absent = classification_scores(confusion_from_labels(np.array([0, 0]), np.array([0, 0]), 2))
    assert absent["f1"] == [1.0, None] and absent["recall"] == [1.0, None]
    assert s["accuracy"] == 0.5 and s["balanced_accuracy"] == 0.5


def test_ap_on_three_boxes_matches_the_hand_worked_value():
    # Two truth boxes; detections: exact hit (0.9), a false alarm (0.8), exact hit (0.7).
    truth = [np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]], np.float32)]
    dets = [np.array([[0, 0, 10, 10, 0, 0.9], [50, 50, 60, 60, 0, 0.8], [20, 20, 30, 30, 0, 0.7]], np.float32)]
    expected = _coco_ap([(0.5, 1.0), (0.5, 0.5), (1.0, 2 / 3)])
    assert expected == pytest.approx((51 + 50 * 2 / 3) / 101)
    ap = coco_average_precision(truth, dets, 1, [(64, 64)])
    assert ap["ap50"] == pytest.approx(expected, abs=1e-6)
    assert ap["ap50_95"] == pytest.approx(expected, abs=1e-6)  # exact boxes: every IoU threshold matches
    precision, recall = operating_point(ap["eval_images"], 1, 0.75, truth)
    assert precision == [0.5] and recall == [0.5]  # boxes >= 0.75: one hit, one false alarm, one of two found


def test_ap_over_iou_thresholds_counts_a_loose_box_only_where_its_iou_reaches():
    truth = [np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]], np.float32)]
    # Third detection overlaps box 2 with IoU 72/100 = 0.72: a hit at IoU 0.50 .. 0.70 (5 thresholds), not above.
    dets = [np.array([[0, 0, 10, 10, 0, 0.9], [50, 50, 60, 60, 0, 0.8], [20, 20, 30, 27.2, 0, 0.7]], np.float32)]
    loose_hit = _coco_ap([(0.5, 1.0), (0.5, 0.5), (1.0, 2 / 3)])
    loose_miss = _coco_ap([(0.5, 1.0), (0.5, 0.5), (0.5, 1 / 3)])
    ap = coco_average_precision(truth, dets, 1, [(64, 64)])
    assert ap["ap50"] == pytest.approx(loose_hit, abs=1e-6)
    assert ap["ap50_95"] == pytest.approx((5 * loose_hit + 5 * loose_miss) / 10, abs=1e-6)


def test_ap_per_class_and_no_detections():
    truth = [np.array([[0, 0, 10, 10, 0], [30, 30, 40, 50, 1]], np.float32)]
    dets = [np.array([[0, 0, 10, 10, 0, 0.9], [30, 30, 40, 50, 0, 0.8]], np.float32)]  # second box: wrong class
    ap = coco_average_precision(truth, dets, 2, [(64, 64)])
    assert ap["per_class_ap50"] == [pytest.approx(1.0), 0.0]
    assert ap["ap50"] == pytest.approx(0.5)
    none = coco_average_precision(truth, [np.zeros((0, 6), np.float32)], 2, [(64, 64)])
    assert none["ap50"] == 0.0 and none["ap50_95"] == 0.0


def test_truth_rules_from_a_drawn_mask():
    mask = np.zeros((256, 256), np.uint8)
    mask[40:80, 30:70] = 1  # vessel A
    mask[58:61, 30:70] = 2  # needle across vessel A (cuts it in two; the closing rejoins it)
    mask[58:61, 70:120] = 2
    mask[150:190, 150:200] = 1  # vessel B
    mask[0:4, 0:4] = 1  # 16 px: a vessel leaving the view, below the minimum, no box
    assert needle_presence_label(mask) == 1
    boxes = vessel_needle_boxes(mask)
    assert boxes.tolist() == [[30, 40, 70, 80, 0], [150, 150, 200, 190, 0], [30, 58, 120, 61, 1]]
    few = np.zeros((256, 256), np.uint8)
    few[0:3, 0:13] = 2  # 39 needle pixels: below 40/65536 of the frame
    assert needle_presence_label(few) == 0 and vessel_needle_boxes(few).shape == (0, 5)


def test_a_model_with_other_classes_is_refused_for_a_rule():
    with pytest.raises(ContractError, match="needle-presence"):
        rule_for_model("classification", ("a", "b", "c"), "needle-presence")
    with pytest.raises(ContractError, match="--truth-rule"):
        rule_for_model("detection", ("vessel", "needle"), None)
    assert rule_for_model("detection", ("vessel", "needle"), None, "vessel-needle-boxes").name == "vessel-needle-boxes"
