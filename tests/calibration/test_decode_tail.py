"""A detector's box decoding stays in float without the user listing it (calibration/quantize.py:decode_tail)."""

from medstream.calibration.quantize import decode_tail
from medstream.runtime.models import MODELS_DIR


def test_the_detectors_decoding_tail_is_found_and_nothing_else():
    tail = decode_tail(MODELS_DIR / "ultrasound_detector.onnx", "detections")
    # the 11 nodes after the head's last convolution that the detector's INT8 gate needed in float
    assert set(tail) == {"/Reshape", "/Slice_1", "/Slice_2", "/Slice_3", "/Sigmoid", "/Add", "/Clip", "/Mul", "/Exp",
                         "/Mul_1", "/Concat_1"}


def test_a_segmenter_has_no_tail_its_logits_come_straight_from_a_convolution():
    assert decode_tail(MODELS_DIR / "ultrasound_unet.onnx", "logits") == []
