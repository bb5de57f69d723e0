"""Every output layout of issue 13 through the real stream and the wire, against a reference decode written here.

The detectors' heads are fixed tensors (see ``models.py``), so the reference below decodes the same numbers
with plain Python (its own NMS, its own letterbox inversion) and compares with what a ZeroMQ subscriber got.
"""

from __future__ import annotations

import numpy as np
import pytest

from medstream.runtime.sources import read_frames
from tests.runtime.decoders import models as M

SEG_URI = "synthetic://ultrasound?fps=20&frames=5&width=64&height=64&seed=1"
DET_URI = "synthetic://ultrasound?fps=20&frames=3&width=96&height=64&seed=1"  # wider than the 64x64 model


def _frames(uri: str, n: int) -> dict[int, np.ndarray]:
    return {f.seq: f.image for f in read_frames(uri.replace("fps=20", "fps=0&motion_fps=20"), n)}


# ------------------------------------------------------------------------------------ reference decode
def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def plain_nms(boxes, scores, classes, score_thr=0.25, iou_thr=0.45):
    """Greedy per-class NMS, best score first (the test's own, not OpenCV's)."""
    order = sorted((i for i in range(len(scores)) if scores[i] > score_thr), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if all(classes[j] != classes[i] or iou(boxes[i], boxes[j]) <= iou_thr for j in kept):
            kept.append(i)
    return kept


def letterbox_to_frame(xyxy, frame_w=96, frame_h=64, size=64):
    """Undo a letterbox of a frame_w x frame_h frame into size x size, by hand."""
    r = min(size / frame_w, size / frame_h)
    nw, nh = round(frame_w * r), round(frame_h * r)
    px, py = (size - nw) // 2, (size - nh) // 2
    x0, y0, x1, y1 = xyxy
    out = [(x0 - px) * frame_w / nw, (y0 - py) * frame_h / nh, (x1 - px) * frame_w / nw, (y1 - py) * frame_h / nh]
    return [min(max(out[0], 0), frame_w), min(max(out[1], 0), frame_h),
            min(max(out[2], 0), frame_w), min(max(out[3], 0), frame_h)]


def reference_detections(cxcywh, scores):
    boxes = [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h in cxcywh.tolist()]
    best = [int(np.argmax(s)) for s in scores]
    top = [float(s[c]) for s, c in zip(scores, best, strict=True)]
    return [[*letterbox_to_frame(boxes[i]), best[i], top[i]] for i in plain_nms(boxes, top, best)]


def assert_same_boxes(got, want) -> None:
    assert got is not None and len(got) == len(want) > 0
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), atol=0.011)


# ------------------------------------------------------------------------------------ segmentation
def test_multilabel_sigmoid_masks_overlaps_areas_and_heatmap(tmp_path):
    model, contract = M.multilabel_segmenter()
    overlays, summary = M.run_stream(M.save(model, tmp_path / "multi.onnx"), SEG_URI, contract)
    frames = _frames(SEG_URI, 5)
    assert summary["accounting_ok"] and len(overlays) >= 3
    names = ["background", "tissue", "fluid", "wall"]
    for ov in overlays:
        x = frames[ov.seq].astype(np.float32) / np.float32(255)
        logits = np.stack([np.float32(w) * x + np.float32(b) for w, b in zip(M.MULTI_W, M.MULTI_B, strict=True)])
        p = 1 / (1 + np.exp(-logits.astype(np.float64)))
        on = p > np.array(M.MULTI_T)[:, None, None]
        assert (on[0] & on[2]).any(), "the test model must have overlapping classes"
        scored = np.where(on, logits, -np.inf)
        expected = np.where(on.any(axis=0), np.argmax(scored, axis=0) + 1, 0)
        np.testing.assert_array_equal(ov.mask, expected)
        want_areas = {names[k + 1]: int(on[k].sum()) for k in range(3)}
        want_areas["background"] = int((~on.any(axis=0)).sum())
        assert ov.areas_px == want_areas  # overlapped pixels counted in both classes
        assert {c.class_id for c in ov.contours} == {k + 1 for k in range(3) if on[k].any()}
        assert ov.heatmap is not None and ov.heatmap.data.shape == (64, 64)
        np.testing.assert_allclose(ov.heatmap.data, np.rint(p.max(axis=0) * 255), atol=1)


def test_softmax_segmentation_is_unchanged_and_carries_confidence(tiny_model):
    from tests.fixtures.models import tiny_contract

    overlays, summary = M.run_stream(tiny_model, SEG_URI, None)
    frames = _frames(SEG_URI, 5)
    assert summary["accounting_ok"] and overlays and tiny_contract().task == "segmentation"
    for ov in overlays:
        x = frames[ov.seq].astype(np.float32) / np.float32(255)
        logits = np.stack([0 * x, 3 * x - 1, 6 * x - 3]).astype(np.float64)
        expected = np.argmax(logits, axis=0)
        np.testing.assert_array_equal(ov.mask, expected)
        p = np.exp(logits - logits.max(axis=0))
        p /= p.sum(axis=0)
        fg = expected > 0
        assert ov.confidence == pytest.approx(p.max(axis=0)[fg].mean(), abs=1e-4)


# ------------------------------------------------------------------------------------ detection
@pytest.mark.parametrize("transposed", [False, True], ids=["NCA", "NAC"])
def test_yolov8_head_letterboxed_matches_plain_nms_in_source_pixels(tmp_path, transposed):
    model, contract, boxes, scores = M.yolov8_detector(transposed=transposed)
    overlays, summary = M.run_stream(M.save(model, tmp_path / "v8.onnx"), DET_URI, contract)
    assert summary["accounting_ok"] and overlays
    want = reference_detections(boxes, scores)
    assert len(want) < int((scores.max(axis=1) > 0.25).sum()), "NMS must have suppressed something"
    for ov in overlays:
        assert ov.task == "detection" and ov.frame_size == (64, 96)
        assert_same_boxes(ov.boxes, want)
        assert ov.confidence == pytest.approx(np.mean([w[5] for w in want]), abs=1e-4)


def test_yolov5_head_with_objectness_matches_plain_nms(tmp_path):
    model, contract, head = M.yolov5_detector()
    overlays, summary = M.run_stream(M.save(model, tmp_path / "v5.onnx"), DET_URI, contract)
    assert summary["accounting_ok"] and overlays
    want = reference_detections(head[:, :4], head[:, 5:] * head[:, 4:5])
    for ov in overlays:
        assert_same_boxes(ov.boxes, want)


def test_end_to_end_detector_keeps_scored_rows_and_maps_them_to_the_frame(tmp_path):
    model, contract, boxes, scores, labels = M.end_to_end_detector()
    overlays, summary = M.run_stream(M.save(model, tmp_path / "e2e.onnx"), DET_URI, contract)
    assert summary["accounting_ok"] and overlays
    # stretch resize: x * 96 / 64, y * 64 / 64; padding rows (score 0) dropped; best first
    want = [[b[0] * 1.5, b[1], b[2] * 1.5, b[3], int(lab), float(s)]
            for b, s, lab in sorted(zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True), key=lambda r: -r[1])
            if s > 0.25]
    for ov in overlays:
        assert_same_boxes(ov.boxes, want)


def test_end_to_end_label_outside_the_classes_drops_the_frame_never_publishes_it(tmp_path):
    model, contract, *_ = M.end_to_end_detector()
    contract["classes"] = contract["classes"][:1]  # labels 0..2 in the model, one class in the contract
    overlays, summary = M.run_stream(M.save(model, tmp_path / "e2e.onnx"), DET_URI, contract)
    c = summary["counters"]
    assert not overlays and c["dropped"].get("postprocess_error") == c["received"] > 0 and summary["accounting_ok"]


# ------------------------------------------------------------------------------------ keypoints
def test_keypoint_heatmap_argmax_becomes_points_in_frame_pixels(tmp_path):
    model, contract = M.keypoint_model()
    uri = "synthetic://ultrasound?fps=20&frames=3&width=128&height=96&seed=1"  # stretched 2x, 1.5x into 64x64
    overlays, summary = M.run_stream(M.save(model, tmp_path / "kp.onnx"), uri, contract)
    assert summary["accounting_ok"] and overlays
    import cv2

    from medstream.runtime.contract import resolve_contract
    from medstream.runtime.preprocess import Preprocessor

    pre = Preprocessor(resolve_contract(None, contract, "kp"))
    frames = _frames(uri, 3)
    for ov in overlays:
        x = pre(frames[ov.seq])[0, 0]
        pooled = cv2.resize(x, (16, 16), interpolation=cv2.INTER_AREA) * 20 - 3  # 4x4 means
        fixed = np.full((16, 16), -6.0)
        fixed[11, 4] = 2.5
        want = []
        for cls, hm in enumerate((pooled, fixed)):
            i, j = np.unravel_index(np.argmax(hm), hm.shape)
            prob = 1 / (1 + np.exp(-hm[i, j]))
            if prob >= 0.5:
                want.append([(j + 0.5) * 4 * 128 / 64, (i + 0.5) * 4 * 96 / 64, cls, prob])
        got = ov.points
        assert got is not None and len(got) == len(want) >= 1
        np.testing.assert_allclose(got, np.array(want), atol=2e-3)


# ------------------------------------------------------------------------------------ confidence in status
def test_low_confidence_frames_are_flagged_and_counted_in_the_status(tmp_path):
    model, contract = M.classifier(with_cam=False)
    uri = "synthetic://ultrasound?fps=20&frames=4&width=64&height=48&seed=1"
    path = M.save(model, tmp_path / "c.onnx")
    flagged, summary = M.run_stream(path, uri, contract, low_confidence_below=0.5)  # top class ~0.19
    c = summary["counters"]
    assert flagged and all(o.low_confidence for o in flagged) and c["low_confidence"] == c["processed"] > 0
    calm, summary = M.run_stream(path, uri, contract, low_confidence_below=0.05)
    assert calm and not any(o.low_confidence for o in calm) and summary["counters"]["low_confidence"] == 0
