"""Preprocessing and postprocessing against hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from medstream.runtime.contract import ModelContract
from medstream.runtime.postprocess import Postprocessor
from medstream.runtime.preprocess import FrameMismatch, Preprocessor
from tests.fixtures.models import tiny_contract


def _contract(**inp) -> ModelContract:
    data = tiny_contract().model_dump()
    data["input"].update(inp)
    return ModelContract.model_validate(data)


def test_grey_frame_is_scaled_to_unit_range_nchw():
    pre = Preprocessor(_contract(height=4, width=4))
    x = pre(np.full((4, 4), 255, np.uint8))
    assert x.shape == (1, 1, 4, 4) and x.dtype == np.float32 and np.allclose(x, 1.0)


def test_resize_colour_and_imagenet_normalisation_nhwc():
    c = _contract(height=2, width=2, channels=3, color_order="rgb", layout="NHWC",
                  normalization={"kind": "scale_mean_std", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]})
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 255  # red in BGR
    x = Preprocessor(c)(bgr, "bgr")
    assert x.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(x[0, 0, 0], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, (0 - 0.5) / 1.0], atol=1e-6)


def test_window_normalisation_clips():
    c = _contract(height=1, width=3, normalization={"kind": "window", "low": 50, "high": 150})
    x = Preprocessor(c)(np.array([[0, 100, 255]], np.uint8))
    np.testing.assert_allclose(x.ravel(), [0.0, 0.5, 1.0])


def test_roi_crops_before_resizing_and_bad_roi_is_a_mismatch():
    img = np.zeros((10, 10), np.uint8)
    img[2:4, 2:4] = 255
    pre = Preprocessor(_contract(height=2, width=2), roi=(2, 2, 2, 2))
    assert np.allclose(pre(img), 1.0)
    with pytest.raises(FrameMismatch, match="roi"):
        Preprocessor(_contract(height=2, width=2), roi=(8, 8, 5, 5))(img)


def test_buffers_are_reused_between_frames():
    pre = Preprocessor(_contract(height=8, width=8))
    a = pre(np.zeros((16, 16), np.uint8))
    b = pre(np.zeros((16, 16), np.uint8))
    assert a is b


def test_unsupported_frames_are_a_mismatch():
    with pytest.raises(FrameMismatch):
        Preprocessor(_contract())(np.zeros((4, 4), np.float64))


def test_argmax_contours_scaled_to_frame_and_areas():
    post = Postprocessor(_contract(height=8, width=8))
    logits = np.zeros((1, 3, 8, 8), np.float32)
    logits[0, 1, 2:6, 2:6] = 5.0  # a 4x4 square of class 1
    mask = post.class_map({"logits": logits})
    assert mask.dtype == np.uint8 and mask.sum() == 16
    contours = post.contours(mask, frame_size=(16, 16))
    assert len(contours) == 1 and contours[0].class_id == 1
    xs, ys = contours[0].points[:, 0], contours[0].points[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (4, 10, 4, 10)  # doubled from model to frame pixels
    assert post.areas(mask) == {"background": 48, "mid": 16, "bright": 0}


@pytest.mark.parametrize("n_classes, layout", [(2, "NCHW"), (3, "NCHW"), (5, "NHWC")])
def test_class_map_equals_numpy_argmax_including_ties(n_classes, layout):
    data = tiny_contract().model_dump()
    data["classes"] = [{"name": f"c{i}"} for i in range(n_classes)]
    data["outputs"] = [{"name": "logits", "layout": layout}]
    data["input"].update(height=32, width=32)
    post = Postprocessor(ModelContract.model_validate(data))
    rng = np.random.default_rng(1)
    logits = rng.integers(0, 3, (1, n_classes, 32, 32)).astype(np.float32)  # many ties
    feed = logits if layout == "NCHW" else logits.transpose(0, 2, 3, 1).copy()
    np.testing.assert_array_equal(post.class_map({"logits": feed}), np.argmax(logits[0], axis=0))
