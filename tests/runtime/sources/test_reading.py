"""The offline readers: read_frames / read_labelled_frames on every folder layout, built here on real files.

Each layout is checked against what the test wrote (pixels and masks compared array by array), not
against the reader's own helpers.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from medstream.runtime.errors import ConfigError
from medstream.runtime.phantom import UltrasoundPhantom
from medstream.runtime.sources import open_source, read_frames, read_labelled_frames
from medstream.runtime.sources.reading import find_image_mask_pairs, offline_uri
from medstream.runtime.sources.synthetic import scene_uris


def _pair(i: int, shape=(12, 16)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    return image, (image // 100).astype(np.uint8)


def _check(frames, expected) -> None:
    assert len(frames) == len(expected)
    for frame, (image, mask) in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(frame.image, image)
        np.testing.assert_array_equal(frame.truth, mask)
        assert frame.truth.dtype == np.uint8


def test_recorded_folder(tmp_path):
    pairs = [_pair(i) for i in range(3)]
    for i, (image, mask) in enumerate(pairs):
        np.save(tmp_path / f"{i:08d}.npy", image)
        np.save(tmp_path / f"{i:08d}.truth.npy", mask)
        (tmp_path / f"{i:08d}.json").write_text(json.dumps({"seq": 7 + i, "color_order": "gray", "source_id": "s"}))
    frames = list(read_labelled_frames(str(tmp_path), 10))
    _check(frames, pairs)
    assert [f.source_id for f in frames] == ["s"] * 3


def test_images_and_masks_subfolders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    pairs = [_pair(i) for i in range(3)]
    for name, (image, mask) in zip("abc", pairs, strict=True):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), image)
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask)
    cv2.imwrite(str(tmp_path / "images" / "d.png"), _pair(9)[0])  # no mask: not a labelled frame
    _check(list(read_labelled_frames(f"file://{tmp_path}", 10)), pairs)
    assert len(list(read_frames(f"file://{tmp_path}", 10))) == 4  # plain reading keeps it


@pytest.mark.parametrize("tag, ext", [("_mask", ".png"), (".mask", ".npy"), ("-mask", ".png"), ("_mask", ".npy")])
def test_name_beside_name_mask(tmp_path, tag, ext):
    pairs = [_pair(i) for i in range(2)]
    for i, (image, mask) in enumerate(pairs):
        np.save(tmp_path / f"f{i}.npy", image)
        if ext == ".npy":
            np.save(tmp_path / f"f{i}{tag}.npy", mask)
        else:
            cv2.imwrite(str(tmp_path / f"f{i}{tag}{ext}"), mask)
    _check(list(read_labelled_frames(str(tmp_path), 5)), pairs)
    assert [p[0].name for p in find_image_mask_pairs(tmp_path)] == ["f0.npy", "f1.npy"]


def test_npz_pairs_and_colour(tmp_path):
    grey, mask = _pair(1)
    rgb = np.stack([grey, grey // 2, grey // 3], axis=-1)
    np.savez(tmp_path / "a.npz", image=grey, mask=mask)
    np.savez(tmp_path / "b.npz", image=rgb, truth=mask)
    frames = list(read_labelled_frames(str(tmp_path), 5))
    _check(frames, [(grey, mask), (rgb, mask)])
    assert [f.color_order for f in frames] == ["gray", "rgb"]


def test_mask_files_are_never_replayed_as_frames(tmp_path):
    for i in range(2):
        image, mask = _pair(i)
        cv2.imwrite(str(tmp_path / f"f{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"f{i}_mask.png"), mask)
        np.save(tmp_path / f"r{i}.npy", image)
        np.save(tmp_path / f"r{i}.truth.npy", mask)
    with open_source(f"file://{tmp_path}?fps=0") as src:
        assert sorted(p.name for p in src.items) == ["f0.png", "f1.png", "r0.npy", "r1.npy"]
    frames = list(read_frames(str(tmp_path), 100))
    assert len(frames) == 4 and all(f.truth is not None for f in frames)


def test_broken_or_missing_truth_is_an_error_for_labelled_reading_only(tmp_path):
    image, mask = _pair(0)
    np.save(tmp_path / "a.npy", image)
    np.save(tmp_path / "a_mask.npy", mask[:5])  # wrong size
    with pytest.raises(ConfigError, match="a_mask.npy"):
        list(read_labelled_frames(str(tmp_path), 5))
    frames = list(read_frames(str(tmp_path), 5))  # the runtime's lenient reading: the frame, without truth
    assert len(frames) == 1 and frames[0].truth is None
    empty = tmp_path / "plain"
    empty.mkdir()
    np.save(empty / "a.npy", image)
    with pytest.raises(ConfigError, match="no frame/mask pairs"):
        list(read_labelled_frames(str(empty), 5))


def test_synthetic_scenes_and_stride_through_the_reader():
    uri = "synthetic://ultrasound?seed=10000&scenes=3&stride=2&width=64&height=64"
    frames = list(read_labelled_frames(uri, 7))  # split 3, 2, 2
    assert len(frames) == 7
    for k, seed, number in ((0, 10000, 0), (2, 10000, 4), (3, 10001, 0), (4, 10001, 2), (6, 10002, 2)):
        image, mask = UltrasoundPhantom(height=64, width=64, seed=seed).render(number)
        np.testing.assert_array_equal(frames[k].image, image)
        np.testing.assert_array_equal(frames[k].truth, mask)
    # the single-scene URIs read in turn give the same frames
    singles = [f for u, n in zip(scene_uris(uri), (3, 2, 2), strict=True) for f in read_labelled_frames(u, n)]
    for a, b in zip(frames, singles, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_frames_without_truth_are_refused():
    with pytest.raises(ConfigError, match="without ground truth"):
        list(read_labelled_frames("synthetic://ultrasound?truth=0&width=32&height=32", 2))


def test_offline_uri():
    assert offline_uri("synthetic://ultrasound?seed=3") == "synthetic://ultrasound?seed=3&fps=0"
    assert offline_uri("synthetic://ultrasound?fps=5") == "synthetic://ultrasound?fps=5"
    assert offline_uri("zmq+tcp://127.0.0.1:5555") == "zmq+tcp://127.0.0.1:5555"
