"""Tests for the synthetic B-mode ultrasound phantom.

Each test pins one property other parts of medstream rely on: determinism per (seed,
index), exact mask/image agreement, the imaging physics a segmentation model must learn
(bright needle with a shadow, anechoic vessels), geometry and temporal coherence.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medstream.runtime.phantom import FluoroscopyPhantom, UltrasoundPhantom, make_phantom

SIZE = 128


def _ring(region: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels between ``inner`` and ``outer`` pixels away from a boolean region."""
    r = region.astype(np.uint8)
    big = cv2.dilate(r, np.ones((2 * outer + 1,) * 2, np.uint8)).astype(bool)
    small = cv2.dilate(r, np.ones((2 * inner + 1,) * 2, np.uint8)).astype(bool)
    return big & ~small


def test_shapes_dtypes_and_attributes() -> None:
    p = UltrasoundPhantom(height=96, width=160, seed=4, fps=25.0, probe="linear")
    image, mask = p.render(3)
    assert image.shape == mask.shape == (96, 160)
    assert image.dtype == mask.dtype == np.uint8
    assert (p.height, p.width, p.fps, p.seed) == (96, 160, 25.0, 4)
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert len(p.CLASSES) == len(p.COLORS) == 3


def test_deterministic_and_order_independent() -> None:
    a = UltrasoundPhantom(SIZE, SIZE, seed=11)
    b = UltrasoundPhantom(SIZE, SIZE, seed=11)
    forward = [a.render(i) for i in range(5)]
    backward = [b.render(i) for i in reversed(range(5))][::-1]
    for (ia, ma), (ib, mb) in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(a.render(2)[0], forward[2][0])  # repeated call


def test_render_into_matches_render() -> None:
    p = UltrasoundPhantom(SIZE, SIZE, seed=2)
    image = np.empty((SIZE, SIZE), np.uint8)
    mask = np.empty_like(image)
    p.render_into(9, image, mask)
    ref_image, ref_mask = p.render(9)
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(mask, ref_mask)
    with pytest.raises(ValueError):
        p.render_into(0, np.empty((SIZE, SIZE), np.float32), mask)


def test_seeds_give_different_scenes() -> None:
    masks = [UltrasoundPhantom(SIZE, SIZE, seed=s).render(0)[1] for s in (0, 1, 10_000)]
    images = [UltrasoundPhantom(SIZE, SIZE, seed=s).render(0)[0] for s in (0, 1)]
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[1], masks[2])


def test_speckle_changes_between_frames_of_a_still_scene() -> None:
    p = UltrasoundPhantom(SIZE, SIZE, seed=5)
    a, b = p.render(0)[0].astype(float), p.render(1)[0].astype(float)
    assert np.abs(a - b).mean() > 1.0  # fresh speckle per frame, not a frozen picture


def test_class_proportions_over_many_frames() -> None:
    needle, vessel = 0, 0
    frames = 0
    for seed in range(6):
        p = UltrasoundPhantom(SIZE, SIZE, seed=seed)
        for index in range(0, 600, 60):  # 10 frames spread over 20 s per seed
            mask = p.render(index)[1]
            needle += int((mask == 2).sum() > 10)
            vessel += int((mask == 1).sum() > 10)
            frames += 1
    assert needle / frames >= 0.65
    assert needle < frames  # sometimes withdrawn
    assert vessel / frames >= 0.95


def test_mask_and_image_zero_outside_convex_fan() -> None:
    for seed in range(4):
        p = UltrasoundPhantom(SIZE, SIZE, seed=seed, probe="convex")
        for index in (0, 50, 200):
            image, mask = p.render(index)
            for arr in (image, mask):  # the apex is above the image: top corners are outside
                assert arr[:6, :6].max() == 0 and arr[:6, -6:].max() == 0
            assert image[mask == 0].mean() > 10  # but the fan itself is not black
            assert (image[mask == 2] > 0).all()  # the needle is labelled only where it is seen


def test_temporal_coherence() -> None:
    p = UltrasoundPhantom(SIZE, SIZE, seed=3)
    step = np.mean([(p.render(i)[1] != p.render(i + 1)[1]).mean() for i in range(40, 44)])
    far = np.mean([(p.render(i)[1] != p.render(i + 100)[1]).mean() for i in range(40, 44)])
    assert step < 0.01
    assert far > 3 * step + 0.005


def _needle_frames(n: int = 6) -> list[tuple[np.ndarray, np.ndarray, UltrasoundPhantom]]:
    out = []
    for seed in range(20):
        p = UltrasoundPhantom(SIZE, SIZE, seed=seed)
        for index in (0, 90, 180):
            image, mask = p.render(index)
            if (mask == 2).sum() > 40:
                out.append((image, mask, p))
                break
        if len(out) == n:
            break
    assert len(out) == n
    return out


def test_needle_brighter_than_surrounding_tissue() -> None:
    for image, mask, _ in _needle_frames():
        needle = mask == 2
        ring = _ring(needle, 2, 6) & (mask == 0) & (image > 0)
        assert image[needle].mean() > image[ring].mean() + 40


def test_acoustic_shadow_below_needle() -> None:
    """Tissue below the shaft is darker than the same pixels while the needle is withdrawn.

    The tissue layout is static, so the same pixels with and without the needle differ
    only by speckle, vessel motion and the shadow.
    """
    checked = 0
    for image, mask, p in _needle_frames():
        absent = next(i for i in range(0, 3000, 15) if p.needle_tip(i) is None)
        image_absent, mask_absent = p.render(absent)
        needle = mask == 2
        below = np.zeros_like(needle)
        for dy in range(26, 44):  # past the reverberation copies
            below[dy:] |= needle[:-dy]
        vessels = _ring((mask == 1) | (mask_absent == 1), 0, 10)
        below &= (mask == 0) & (image_absent > 0) & ~vessels & ~_ring(needle, 0, 3)
        if below.sum() < 30:
            continue
        checked += 1
        assert image[below].mean() < image_absent[below].mean() - 8
    assert checked >= 3


def test_vessel_lumen_darker_than_surrounding_tissue() -> None:
    for seed in range(6):
        image, mask = UltrasoundPhantom(SIZE, SIZE, seed=seed).render(7)
        lumen = mask == 1
        around = _ring(lumen, 4, 9) & (mask == 0) & (image > 0)
        assert lumen.sum() > 20
        assert image[lumen].mean() < 0.5 * image[around].mean()


def test_arbitrary_size_and_needle_width_scale() -> None:
    p = UltrasoundPhantom(height=480, width=640, seed=1)
    image, mask = p.render(0)
    assert image.shape == (480, 640)
    assert (mask == 1).any()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="probe"):
        UltrasoundPhantom(probe="phased")
    with pytest.raises(ValueError):
        UltrasoundPhantom(seed=-1)
    with pytest.raises(ValueError):
        UltrasoundPhantom(SIZE, SIZE).render(-1)


def test_make_phantom() -> None:
    assert isinstance(make_phantom("ultrasound", height=64, width=64, seed=1), UltrasoundPhantom)
    assert isinstance(make_phantom("fluoroscopy", height=64, width=64), FluoroscopyPhantom)
    with pytest.raises(ValueError, match="fluoroscopy.*ultrasound|ultrasound.*fluoroscopy"):
        make_phantom("mri")
