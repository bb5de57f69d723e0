"""Resize modes and normalisations of contract v2, overlay schema 1.1 on the wire, and drawing every task."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from medstream.runtime.contract import resolve_contract
from medstream.runtime.frame import Contour, Heatmap, Overlay
from medstream.runtime.preprocess import Preprocessor, input_mapping
from medstream.runtime.render import draw_overlay
from medstream.runtime.wire import WireError, decode_overlay, encode_overlay


def _contract(**input_fields):
    inp = {"name": "input", "height": 64, "width": 64, **input_fields}
    return resolve_contract(None, {"model_id": "m", "input": inp, "outputs": [{"name": "y"}],
                                   "classes": [{"name": "bg"}, {"name": "a"}]}, "m")


FRAME = np.random.default_rng(0).integers(0, 256, (64, 96), dtype=np.uint8)  # H 64, W 96


def test_letterbox_keeps_the_aspect_and_pads_with_the_pad_value():
    x = Preprocessor(_contract(resize="letterbox", pad_value=114))(FRAME)[0, 0]
    # by hand: scale 64/96, content 64 x 43 (round(42.67)), top border (64 - 43) // 2 = 10 rows
    np.testing.assert_allclose(x[:10], 114 / 255, rtol=1e-6)
    np.testing.assert_allclose(x[53:], 114 / 255, rtol=1e-6)
    content = cv2.resize(FRAME, (64, 43), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    np.testing.assert_allclose(x[10:53], content, atol=1e-6)
    m = input_mapping(_contract(resize="letterbox").input, (64, 96))
    np.testing.assert_allclose(m.to_frame(np.array([[0.0, 10.0], [64.0, 53.0]])), [[0, 0], [96, 64]])


def test_center_crop_takes_the_middle_of_the_frame():
    x = Preprocessor(_contract(height=32, width=32, resize="center_crop"))(FRAME)[0, 0]
    want = cv2.resize(FRAME[:, 16:80], (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    np.testing.assert_allclose(x, want, atol=1e-6)
    m = input_mapping(_contract(height=32, width=32, resize="center_crop").input, (64, 96), roi=None)
    assert m.region == (16, 0, 64, 64)
    np.testing.assert_allclose(m.to_frame(np.array([[0.0, 0.0], [32.0, 32.0]])), [[16, 0], [80, 64]])


def test_per_image_standardisation_and_value_range():
    frame = cv2.resize(FRAME, (64, 64))
    x = Preprocessor(_contract(normalization={"kind": "per_image"}))(frame)[0, 0].astype(np.float64)
    f = frame.astype(np.float64)
    np.testing.assert_allclose(x, (f - f.mean()) / max(f.std(), 1 / 64), atol=1e-4)
    y = Preprocessor(_contract(normalization={"kind": "range", "value_range": [-1.0, 1.0]}))(frame)[0, 0]
    np.testing.assert_allclose(y, f / 255 * 2 - 1, atol=1e-6)


def _overlay(**fields) -> Overlay:
    base = dict(seq=7, t_capture_ns=1, source_id="s", model_id="m", class_names=("bg", "a", "b"),
                class_colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)), mask=np.zeros((1, 1), np.uint8),
                frame_size=(64, 96))
    return Overlay(**{**base, **fields})


def test_overlay_1_1_fields_round_trip_over_the_wire():
    hm = Heatmap(data=np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, roi=(8, 4, 80, 56), class_id=1, kind="activation")
    ov = _overlay(task="detection", boxes=np.array([[1.5, 2.25, 40.0, 30.0, 2, 0.875]], np.float32),
                  points=np.array([[10.0, 20.0, 1, 0.75]], np.float32), label=1,
                  probabilities=np.array([0.1, 0.7, 0.2], np.float32), top_k=((1, 0.7), (2, 0.2)), heatmap=hm,
                  confidence=0.42, entropy=0.8, low_confidence=True)
    parts = encode_overlay(ov)
    assert len(parts) == 4 and json.loads(parts[1])["schema"] == "medstream.overlay/1"  # a 1.0 consumer decodes it
    got = decode_overlay(parts)
    assert got.task == "detection" and got.low_confidence and got.confidence == 0.42 and got.entropy == 0.8
    np.testing.assert_allclose(got.boxes, ov.boxes)
    np.testing.assert_allclose(got.points, ov.points)
    np.testing.assert_allclose(got.probabilities, ov.probabilities, atol=1e-6)
    assert got.label == 1 and got.top_k == ((1, 0.7), (2, 0.2))
    np.testing.assert_array_equal(got.heatmap.data, hm.data)
    assert got.heatmap.roi == hm.roi and got.heatmap.kind == "activation"


def test_a_1_0_overlay_decodes_with_segmentation_defaults():
    parts = encode_overlay(_overlay(mask=np.ones((4, 4), np.uint8), contours=[Contour(1, np.zeros((3, 2), np.int32))]))
    header = json.loads(parts[1])
    for key in ("schema_minor", "task", "low_confidence"):
        header.pop(key)
    got = decode_overlay([parts[0], json.dumps(header).encode(), *parts[2:]])
    assert got.task == "segmentation" and got.confidence is None and got.boxes is None and not got.low_confidence


@pytest.mark.parametrize("field, value", [
    ("boxes", [[0, 0, 10, 10, 3, 0.5]]),          # class id not in classes
    ("boxes", [[0, 0, 500, 10, 1, 0.5]]),         # outside the frame
    ("points", [[1, 2, 1]]),                      # a row too short
    ("probabilities", [0.5, 0.5]),                # not one per class
    ("confidence", 1.5),
    ("task", "segmentation-ish"),
    ("heatmap", {"png": "not base64!", "shape": [2, 2], "roi": [0, 0, 4, 4]}),
])
def test_malformed_1_1_fields_are_rejected_with_bad_field(field, value):
    parts = encode_overlay(_overlay())
    header = json.loads(parts[1])
    header[field] = value
    with pytest.raises(WireError) as exc:
        decode_overlay([parts[0], json.dumps(header).encode(), *parts[2:]])
    assert exc.value.reason == "bad_field"


def test_a_heatmap_png_larger_than_its_stated_shape_is_refused_before_decoding():
    hm = Heatmap(data=np.zeros((200, 200), np.uint8), roi=(0, 0, 96, 64))
    parts = encode_overlay(_overlay(heatmap=hm))
    header = json.loads(parts[1])
    header["heatmap"]["shape"] = [2, 2]
    with pytest.raises(WireError, match="stated shape"):
        decode_overlay([parts[0], json.dumps(header).encode(), *parts[2:]])


def test_drawing_boxes_label_heatmap_points_and_the_low_confidence_banner():
    black = np.zeros((64, 96), np.uint8)
    plain = draw_overlay(black, _overlay())
    box = draw_overlay(black, _overlay(boxes=np.array([[20, 20, 60, 50, 1, 0.9]], np.float32)))
    assert (box[20, 30:50] != plain[20, 30:50]).any() and (box[35, 35] == plain[35, 35]).all()  # an outline
    hm = draw_overlay(black, _overlay(heatmap=Heatmap(np.full((4, 4), 255, np.uint8), (48, 0, 48, 64))))
    assert hm[40, 70].any() and not hm[40, 10].any()  # only the heatmap's region is coloured
    low = draw_overlay(black, _overlay(low_confidence=True, confidence=0.3))
    assert low[-3, 90, 2] == 200 and low[-3, 90, 0] == 0  # red band along the bottom (BGR)
    label = draw_overlay(black, _overlay(label=2, probabilities=np.array([0.1, 0.2, 0.7], np.float32)))
    assert (label[22:40, :60] != plain[22:40, :60]).any()
    pts = draw_overlay(black, _overlay(points=np.array([[50, 30, 1, 0.8]], np.float32)))
    assert pts[30, 50].any()
