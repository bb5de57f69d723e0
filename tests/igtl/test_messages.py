"""OpenIGTLink message decoding and packing against the reference decoder written in the test (from the spec)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pyigtl = pytest.importorskip("pyigtl")

from medstream.runtime.frame import ImageGeometry, Overlay  # noqa: E402
from medstream.runtime.igtl import messages as igtl  # noqa: E402
from medstream.runtime.sinks.igtl_sink import label_map, overlay_json  # noqa: E402
from medstream.runtime.wire import WireError  # noqa: E402
from tests.igtl._helpers import build_message, image_body, ref_crc64, ref_decode, tilted_geometry  # noqa: E402

DTYPES = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16, "float32": np.float32}


def _split(raw: bytes):
    header = igtl.parse_header(raw[:58])
    body = bytearray(raw[58:])
    igtl.check_body(header, body)
    return header, body


def test_reference_crc_matches_the_spec_check_value():
    # CRC-64/ECMA-182 of "123456789" is 0x6C40DF5F0B497347 (the catalogue's check value)
    assert ref_crc64(b"123456789") == 0x6C40DF5F0B497347
    assert igtl.crc64(b"123456789") == 0x6C40DF5F0B497347


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("comps", [1, 3])
def test_decode_image_equals_the_reference(name, comps):
    rng = np.random.default_rng(3)
    shape = (37, 53, comps) if comps == 3 else (37, 53)
    if name == "float32":
        pixels = rng.uniform(-5, 300, shape).astype(np.float32)
    else:
        info = np.iinfo(DTYPES[name])
        pixels = rng.integers(info.min, info.max, shape, endpoint=True).astype(DTYPES[name])
    m = tilted_geometry()
    t_ns = 1_712_345_678_123_456_789
    raw = igtl.pack(pyigtl.ImageMessage(pixels[np.newaxis], ijk_to_world_matrix=m, device_name="Image_Reference"), t_ns)
    ref = ref_decode(raw)
    header, body = _split(raw)
    got = igtl.decode_image(header, body)
    assert ref.crc_ok and ref.type == "IMAGE" and ref.device == "Image_Reference"
    assert header.t_ns == ref.t_ns == t_ns
    assert got.pixels.dtype == np.dtype(DTYPES[name]) and got.pixels.dtype.isnative
    np.testing.assert_array_equal(got.pixels, ref.image)
    np.testing.assert_array_equal(got.pixels, pixels)
    np.testing.assert_allclose(np.asarray(got.geometry.ijk_to_ras), ref.ijk_to_ras, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.geometry.ijk_to_ras), m, atol=1e-5)
    np.testing.assert_allclose(got.geometry.spacing, (0.23, 0.31, 1.0), rtol=1e-6)


def test_model_pixels_keep_order_and_map_float_through_the_window():
    i8 = np.array([[-128, -1, 0, 127]], np.int8)
    assert igtl.model_pixels(i8)[0].tolist() == [[0, 127, 128, 255]]
    i16 = np.array([[-32768, 0, 32767]], np.int16)
    assert igtl.model_pixels(i16)[0].tolist() == [[0, 32768, 65535]]
    f = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    out, clipped = igtl.model_pixels(f, (0.0, 1.0))
    assert out.tolist() == [[0, 128, 255, 255]] and clipped
    with pytest.raises(WireError) as e:
        igtl.model_pixels(np.array([[np.nan]], np.float32))
    assert e.value.reason == "bad_pixels"


def test_timestamps_round_trip_to_the_nanosecond():
    for t in (0, 1, 999_999_999, 1_712_345_678_000_000_000, 1_712_345_678_999_999_999, 4_000_000_000_123_456_789):
        assert igtl.igtl_to_ns(*igtl.ns_to_igtl(t)) == t


def _image(pixels, scalar, **kw):
    return build_message(b"IMAGE", b"Image_Reference", image_body(pixels, scalar, **kw))


@pytest.mark.parametrize("case,reason", [
    ("bad_crc", "bad_crc"),
    ("unknown_type", "unknown_message_type"),
    ("pixels_short", "body_size_mismatch"),
    ("size_lies", "body_size_mismatch"),
    ("scalar_int32", "unsupported_scalar_type"),
    ("scalar_unknown", "unsupported_scalar_type"),
    ("three_slices", "unsupported_image"),
    ("four_components", "unsupported_image"),
    ("subvolume", "unsupported_image"),
    ("zero_size", "bad_header"),
    ("zero_spacing", "bad_header"),
    ("endian_code", "bad_header"),
])
def test_malformed_bodies_are_rejected_by_reason(case, reason):
    px = np.zeros((8, 10), np.uint8)
    raw = {
        "bad_crc": build_message(b"IMAGE", b"Image", image_body(px, 3), crc=12345),
        "unknown_type": build_message(b"FOOBAR", b"Image", b"xyz"),
        "pixels_short": build_message(b"IMAGE", b"Image", image_body(px, 3)[:-1]),
        "size_lies": _image(px, 3, size=(10, 9, 1)),
        "scalar_int32": _image(px, 6),
        "scalar_unknown": _image(px, 42),
        "three_slices": _image(np.zeros((24, 10), np.uint8), 3, size=(10, 8, 3)),
        "four_components": _image(np.zeros((8, 40), np.uint8), 3, comps=4),
        "subvolume": _image(px, 3, subvolume=(0, 0, 0, 5, 8, 1)),
        "zero_size": _image(px, 3, size=(0, 8, 1)),
        "zero_spacing": _image(px, 3, cols=np.diag([1.0, 0.0, 1.0])),
        "endian_code": build_message(b"IMAGE", b"Image", image_body(px, 3)[:4] + b"\x07" + image_body(px, 3)[5:]),
    }[case]
    with pytest.raises(WireError) as e:
        header, body = _split(raw)
        igtl.decode_image(header, body)
    assert e.value.reason == reason, str(e.value)


@pytest.mark.parametrize("case", ["version", "type_bytes", "device_bytes", "too_large"])
def test_headers_that_lie_are_refused_before_the_body(case):
    body = image_body(np.zeros((4, 4), np.uint8), 3)
    raw = {
        "version": build_message(b"IMAGE", b"Image", body, version=7),
        "type_bytes": build_message(b"IMA\x01GE", b"Image", body),
        "device_bytes": build_message(b"IMAGE", b"Im\xffage", body),
        "too_large": build_message(b"IMAGE", b"Image", body, body_size=2**40),
    }[case]
    with pytest.raises(WireError) as e:
        igtl.parse_header(raw[:58])
    assert e.value.reason == ("too_large" if case == "too_large" else "bad_header")


def _overlay(mask, frame_size, roi=None, geometry=None, areas=None):
    return Overlay(seq=7, t_capture_ns=123, source_id="igtl", model_id="m", class_names=("bg", "a", "b"),
                   class_colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)), mask=mask, frame_size=frame_size,
                   areas_px=areas or {}, mask_roi=roi, geometry=geometry)


def test_label_map_places_the_mask_in_its_roi_at_frame_size():
    mask = np.array([[1, 2], [0, 1]], np.uint8)
    out = label_map(_overlay(mask, (6, 8), roi=(2, 1, 4, 4)))
    expected = np.zeros((6, 8), np.uint8)
    expected[1:5, 2:6] = np.kron(mask, np.ones((2, 2), np.uint8))  # nearest neighbour, 2x each way
    np.testing.assert_array_equal(out, expected)


def test_overlay_json_gives_areas_in_mm2_from_the_geometry():
    m = tilted_geometry()
    geo = ImageGeometry(spacing=(0.23, 0.31, 1.0), ijk_to_ras=tuple(tuple(r) for r in m))
    mask = np.zeros((64, 64), np.uint8)
    doc = overlay_json(_overlay(mask, (128, 256), geometry=geo, areas={"a": 100}), {"label_map": "Prediction"})
    # each mask pixel covers 4 x 2 source pixels of 0.23 x 0.31 mm
    assert doc["areas_mm2"]["a"] == pytest.approx(100 * 8 * 0.23 * 0.31, rel=1e-6)
    assert doc["seq"] == 7 and doc["t_capture_ns"] == 123 and doc["classes"][1]["name"] == "a"
    assert "areas_mm2" not in overlay_json(_overlay(mask, (64, 64), areas={"a": 1}), {})
    json.dumps(doc)
