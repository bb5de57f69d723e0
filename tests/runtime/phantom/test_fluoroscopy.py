"""Tests for the synthetic X-ray fluoroscopy phantom.

They pin determinism, the pulsed-rate validation, X-ray contrast (the device attenuates,
so it is darker than its surroundings), dose-dependent quantum noise, the collimator and
temporal coherence of the device motion.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medstream.runtime.phantom import FluoroscopyPhantom

SIZE = 128


def _ring(region: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels between ``inner`` and ``outer`` pixels away from a boolean region."""
    r = region.astype(np.uint8)
    big = cv2.dilate(r, np.ones((2 * outer + 1,) * 2, np.uint8)).astype(bool)
    small = cv2.dilate(r, np.ones((2 * inner + 1,) * 2, np.uint8)).astype(bool)
    return big & ~small


def test_shapes_dtypes_and_attributes() -> None:
    p = FluoroscopyPhantom(height=96, width=160, seed=4, fps=30)
    image, mask = p.render(2)
    assert image.shape == mask.shape == (96, 160)
    assert image.dtype == mask.dtype == np.uint8
    assert (p.height, p.width, p.fps, p.seed) == (96, 160, 30.0, 4)
    assert set(np.unique(mask)) <= {0, 1}
    assert p.CLASSES == ("background", "wire")


@pytest.mark.parametrize("fps", [7.5, 15, 30.0])
def test_allowed_pulse_rates(fps: float) -> None:
    assert FluoroscopyPhantom(64, 64, fps=fps).fps == float(fps)


@pytest.mark.parametrize("fps", [25.0, 60, 0])
def test_fps_validation_names_allowed_rates(fps: float) -> None:
    with pytest.raises(ValueError, match=r"7\.5, 15, 30"):
        FluoroscopyPhantom(64, 64, fps=fps)


def test_deterministic_and_order_independent() -> None:
    a = FluoroscopyPhantom(SIZE, SIZE, seed=8)
    b = FluoroscopyPhantom(SIZE, SIZE, seed=8)
    forward = [a.render(i) for i in range(4)]
    backward = [b.render(i) for i in (3, 2, 1, 0)][::-1]
    for (ia, ma), (ib, mb) in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    other = FluoroscopyPhantom(SIZE, SIZE, seed=9).render(0)
    assert not np.array_equal(other[0], forward[0][0])
    assert not np.array_equal(other[1], forward[0][1])


def test_wire_present_and_darker_than_neighbourhood() -> None:
    for seed in range(8):
        p = FluoroscopyPhantom(SIZE, SIZE, seed=seed)
        for index in (0, 37):
            image, mask = p.render(index)
            wire = mask == 1
            assert wire.sum() > 30
            around = _ring(wire, 3, 7) & ~wire & (image > 40)
            assert image[wire].mean() < image[around].mean() - 5


def test_lower_dose_means_more_noise() -> None:
    def noise(dose: float) -> float:
        image = FluoroscopyPhantom(SIZE, SIZE, seed=1, dose=dose).render(5)[0].astype(np.float32)
        highpass = image - cv2.GaussianBlur(image, (5, 5), 0)
        centre = slice(SIZE // 4, 3 * SIZE // 4)
        return float(highpass[centre, centre].std())

    assert noise(0.1) > 1.5 * noise(1.0) > noise(10.0)


def test_dose_does_not_change_brightness_or_mask() -> None:
    low = FluoroscopyPhantom(SIZE, SIZE, seed=1, dose=0.3).render(5)
    high = FluoroscopyPhantom(SIZE, SIZE, seed=1, dose=3.0).render(5)
    np.testing.assert_array_equal(low[1], high[1])
    assert abs(float(low[0].mean()) - float(high[0].mean())) < 6


def test_collimator_is_dark_and_unlabelled() -> None:
    for seed in range(4):
        image, mask = FluoroscopyPhantom(SIZE, SIZE, seed=seed).render(0)
        for corner in (image[:5, :5], image[-5:, -5:]):
            assert corner.max() < 30
        assert mask[:5, :5].max() == 0 and mask[-5:, -5:].max() == 0
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        disc = np.hypot(yy - SIZE / 2, xx - SIZE / 2) < SIZE / 3
        assert image[disc].mean() > 60


def test_temporal_coherence() -> None:
    p = FluoroscopyPhantom(SIZE, SIZE, seed=2, fps=30)
    step = np.mean([(p.render(i)[1] != p.render(i + 1)[1]).mean() for i in range(10, 14)])
    far = np.mean([(p.render(i)[1] != p.render(i + 100)[1]).mean() for i in range(10, 14)])
    assert step < 0.01
    assert far > 2 * step


def test_anatomy_moves_with_breathing() -> None:
    p = FluoroscopyPhantom(SIZE, SIZE, seed=6, fps=7.5, dose=1000.0)  # nearly noise-free
    renders = [p.render(i) for i in range(0, 16, 2)]  # about 2 s: a good part of a breath
    wire = np.zeros((SIZE, SIZE), bool)
    for _, mask in renders:
        wire |= _ring(mask == 1, 0, 4)
    first = renders[0][0].astype(np.float32)
    diffs = [np.abs(img.astype(np.float32) - first)[~wire].mean() for img, _ in renders[1:]]
    assert max(diffs) > 1.0


def test_invalid_dose() -> None:
    with pytest.raises(ValueError, match="dose"):
        FluoroscopyPhantom(dose=0.0)
