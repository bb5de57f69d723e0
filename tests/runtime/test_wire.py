"""Wire format: round trips, and each rejection with its counter reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medstream.runtime.frame import Contour, Frame, Overlay
from medstream.runtime.wire import (
    WireError,
    WireLimits,
    decode_frame,
    decode_overlay,
    decode_status,
    encode_frame,
    encode_overlay,
    encode_status,
)


def _frame(**kw) -> Frame:
    base = dict(seq=7, t_capture_ns=1_700_000_000_000_000_000, image=np.arange(12, dtype=np.uint8).reshape(3, 4),
                source_id="us-1")
    base.update(kw)
    return Frame(**base)


def _parts(parts):
    return [bytes(p) for p in parts]


def test_frame_round_trip_keeps_pixels_seq_time_and_truth():
    truth = (np.arange(12, dtype=np.uint8).reshape(3, 4) % 3)
    f = _frame(truth=truth, image=np.random.default_rng(0).integers(0, 255, (3, 4, 3), dtype=np.uint8), color_order="bgr")
    g = decode_frame(_parts(encode_frame(f)))
    assert (g.seq, g.t_capture_ns, g.source_id, g.color_order) == (7, f.t_capture_ns, "us-1", "bgr")
    np.testing.assert_array_equal(g.image, f.image)
    np.testing.assert_array_equal(g.truth, truth)


def test_uint16_frames_travel_little_endian():
    img = np.array([[1, 65535]], dtype="<u2")
    g = decode_frame(_parts(encode_frame(_frame(image=img))))
    assert g.image.dtype.str == "<u2" and g.image[0, 1] == 65535


def _with_header(**changes):
    parts = _parts(encode_frame(_frame()))
    header = json.loads(parts[1])
    for k, v in changes.items():
        if v is ...:
            header.pop(k)
        else:
            header[k] = v
    parts[1] = json.dumps(header).encode()
    return parts


@pytest.mark.parametrize("changes, reason", [
    ({"schema": "medstream.frame/2"}, "bad_schema"),
    ({"seq": -1}, "bad_field"),
    ({"seq": True}, "bad_field"),
    ({"seq": 2**64}, "bad_field"),
    ({"t_capture_ns": "yesterday"}, "bad_field"),
    ({"source_id": "x" * 65}, "bad_field"),
    ({"source_id": "bad id"}, "bad_field"),
    ({"seq": ...}, "bad_field"),
    ({"dtype": "<f8"}, "bad_dtype"),
    ({"dtype": "O"}, "bad_dtype"),
    ({"shape": [3]}, "bad_shape"),
    ({"shape": [3, 4, 2]}, "bad_shape"),
    ({"shape": [3, 4, 1, 1]}, "bad_shape"),
    ({"shape": [3.0, 4]}, "bad_shape"),
    ({"shape": [0, 4]}, "bad_shape"),
    ({"shape": [100_000, 4]}, "too_large"),
    ({"shape": [4, 3]}, None),  # same byte count, different shape: accepted (bytes match)
    ({"shape": [4, 4]}, "size_mismatch"),
    ({"color_order": "cmyk"}, "bad_field"),
])
def test_each_bad_header_field_is_rejected_with_its_reason(changes, reason):
    parts = _with_header(**changes)
    if reason is None:
        decode_frame(parts)
        return
    with pytest.raises(WireError) as exc:
        decode_frame(parts)
    assert exc.value.reason == reason


@pytest.mark.parametrize("parts, reason", [
    ([b"frame", b"{"], "bad_parts"),
    ([b"frame", b"[1,2]", b""], "bad_header"),
    ([b"frame", b"\xff\xfe", b""], "bad_header"),
    ([b"overlay", b"{}", b""], "bad_topic"),
    ([b"frame", b"[" * 100_000 + b"]" * 100_000, b""], "header_too_large"),
    ([b"frame", b"[" * 10_000 + b"]" * 10_000, b""], "bad_header"),
])
def test_structurally_broken_messages(parts, reason):
    with pytest.raises(WireError) as exc:
        decode_frame(parts)
    assert exc.value.reason == reason


def test_limits_are_configurable():
    parts = _parts(encode_frame(_frame()))
    with pytest.raises(WireError) as exc:
        decode_frame(parts, WireLimits(max_width=2))
    assert exc.value.reason == "too_large"


def test_overlay_round_trip_with_contours_and_rgba():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    ov = Overlay(seq=3, t_capture_ns=10, source_id="s", model_id="m", class_names=("bg", "v"),
                 class_colors=((0, 0, 0), (255, 0, 0)), mask=mask, frame_size=(16, 16),
                 contours=[Contour(1, np.array([[1, 2], [3, 4], [5, 6]], np.int32)), Contour(1, np.array([[0, 0]], np.int32))],
                 areas_px={"bg": 55, "v": 9}, stages_ms={"infer": 1.23456}, t_publish_ns=20,
                 rgba=np.zeros((8, 8, 4), np.uint8))
    back = decode_overlay(_parts(encode_overlay(ov)))
    assert (back.seq, back.t_capture_ns, back.t_publish_ns, back.frame_size) == (3, 10, 20, (16, 16))
    assert back.class_names == ("bg", "v") and back.class_colors == ((0, 0, 0), (255, 0, 0))
    np.testing.assert_array_equal(back.mask, mask)
    assert [c.points.tolist() for c in back.contours] == [[[1, 2], [3, 4], [5, 6]], [[0, 0]]]
    assert back.stages_ms == {"infer": 1.2346} and back.rgba.shape == (8, 8, 4)


def test_overlay_without_contours():
    ov = Overlay(seq=0, t_capture_ns=1, source_id="s", model_id="m", class_names=("bg",), class_colors=((0, 0, 0),),
                 mask=np.zeros((4, 4), np.uint8), frame_size=(4, 4))
    assert decode_overlay(_parts(encode_overlay(ov))).contours == []


def test_status_round_trip_and_required_fields():
    parts = encode_status({"source_id": "s", "seq": 1, "t_capture_ns": 5, "counters": {"received": 1}})
    assert decode_status(parts)["counters"] == {"received": 1}
    with pytest.raises(WireError):
        decode_status(encode_status({"source_id": "s", "seq": 1}))
