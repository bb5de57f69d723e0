"""FileSource on real files: scanner screen grabs (data/), .npy recordings, and a video written by OpenCV."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from medstream.runtime.errors import ConfigError, SourceEnded
from medstream.runtime.sources import open_source
from medstream.runtime.wire import WireError

DATA = Path(__file__).parent / "data"
SCREENS = sorted(DATA.glob("*.png"))


def read_all(src, limit: int = 100) -> list:
    """Frames until SourceEnded (WireErrors recorded as their reason)."""
    out = []
    for _ in range(limit):
        try:
            frame = src.read(2.0)
        except SourceEnded:
            return out
        except WireError as exc:
            out.append(exc.reason)
            continue
        assert frame is not None
        out.append(frame)
    raise AssertionError("source did not end")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A 10-frame 64x48 MJPG .avi at 25 fps; frame i is a flat grey of 20*i (readable through MJPG)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_folder_of_scanner_screens_is_replayed_in_name_order():
    assert len(SCREENS) >= 2, "fixture PNGs missing"
    with open_source(f"file://{DATA}?fps=0") as src:
        frames = read_all(src)
    assert len(frames) == len(SCREENS)  # README.md in the folder is skipped
    for i, (frame, png) in enumerate(zip(frames, SCREENS, strict=True)):
        assert frame.seq == i
        assert frame.image.shape == (735, 975, 3) and frame.image.dtype == np.uint8
        assert frame.color_order == "bgr"
        np.testing.assert_array_equal(frame.image, cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
        assert frame.source_id == "data"
        assert frame.t_capture_ns > 0


def test_bare_path_and_url_quoted_path(tmp_path):
    folder = tmp_path / "my screens"
    folder.mkdir()
    shutil.copy(SCREENS[0], folder / "a.png")
    with open_source(str(folder)) as src:
        assert src.read(2.0).image.shape == (735, 975, 3)
    with open_source(f"file://{str(folder).replace(' ', '%20')}?fps=0&id=screen-1") as src:
        frame = src.read(2.0)
        assert frame.source_id == "screen-1"


def test_grey_and_16_bit_images_keep_their_format(tmp_path):
    grey = cv2.cvtColor(cv2.imread(str(SCREENS[0])), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "a_grey.png"), grey)
    deep = (grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "b_deep.png"), deep)
    cv2.imwrite(str(tmp_path / "c_grey_as_bgr.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    with open_source(f"file://{tmp_path}?fps=0") as src:
        a, b, c = read_all(src)
    assert a.color_order == "gray" and a.image.ndim == 2
    np.testing.assert_array_equal(a.image, grey)
    assert b.image.dtype == np.uint16 and b.color_order == "gray"
    np.testing.assert_array_equal(b.image, deep)
    assert c.image.shape == (735, 975, 3) and c.color_order == "bgr"  # delivered as stored


def test_pacing_follows_fps(tmp_path):
    for i in range(5):
        np.save(tmp_path / f"{i:08d}.npy", np.full((8, 8), i, np.uint8))
    with open_source(f"file://{tmp_path}?fps=20") as src:
        t0 = time.perf_counter()
        first = src.read(1.0)
        assert first is not None and time.perf_counter() - t0 < 0.1
        t_wait = time.perf_counter()
        assert src.read(0.01) is None  # next frame is due 50 ms later
        assert 0.005 <= time.perf_counter() - t_wait < 0.1
        for i in range(1, 5):
            assert src.read(1.0).seq == i
        elapsed = time.perf_counter() - t0
        assert 0.18 <= elapsed < 0.5
        with pytest.raises(SourceEnded):
            src.read(1.0)


def test_loop_restarts_and_keeps_counting(tmp_path):
    for i in range(2):
        np.save(tmp_path / f"{i:08d}.npy", np.full((4, 4), 10 + i, np.uint8))
    with open_source(f"file://{tmp_path}?fps=0&loop=1") as src:
        assert src.finite is False
        frames = [src.read(1.0) for _ in range(5)]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.image[0, 0]) for f in frames] == [10, 11, 10, 11, 10]


def test_corrupt_files_raise_decode_failed_and_replay_moves_on(tmp_path):
    shutil.copy(SCREENS[0], tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    (tmp_path / "c.png").write_bytes(SCREENS[1].read_bytes()[:2000])  # truncated
    np.save(tmp_path / "d.npy", np.zeros((4, 4), np.float32))  # wrong dtype
    (tmp_path / "e.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 2), np.uint8))  # 2 channels
    shutil.copy(SCREENS[1], tmp_path / "g.png")
    with open_source(f"file://{tmp_path}?fps=0") as src:
        out = read_all(src)
    assert out[0].seq == 0
    assert out[1:6] == ["decode_failed"] * 5
    assert out[6].seq == 6  # failures used their seq: the gap shows what was lost


def test_recorded_folder_uses_json_headers(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200
    np.save(tmp_path / "00000000.npy", rgb)
    (tmp_path / "00000000.json").write_text(json.dumps(
        {"seq": 500, "t_capture_ns": 123, "source_id": "cart-2", "color_order": "rgb"}))
    np.save(tmp_path / "00000001.npy", rgb)  # no header: source defaults
    np.save(tmp_path / "00000002.npy", np.full((6, 8), 4000, np.uint16))
    (tmp_path / "00000002.json").write_text(json.dumps({"seq": 502, "source_id": "cart-2", "color_order": "gray"}))
    np.save(tmp_path / "00000003.npy", rgb)
    (tmp_path / "00000003.json").write_text(json.dumps({"source_id": "bad id!", "color_order": "rgb"}))
    np.save(tmp_path / "00000004.npy", rgb)
    (tmp_path / "00000004.json").write_text("{broken")
    with open_source(f"file://{tmp_path}?fps=0") as src:
        out = read_all(src)
    assert (out[0].seq, out[0].source_id, out[0].color_order) == (0, "cart-2", "rgb")
    np.testing.assert_array_equal(out[0].image, rgb)
    assert out[0].t_capture_ns > 10**18  # replay time, not the recorded one
    assert (out[1].source_id, out[1].color_order) == (tmp_path.name, "bgr")
    assert out[2].image.dtype == np.uint16 and out[2].color_order == "gray" and out[2].seq == 2
    assert out[3:] == ["bad_field", "bad_header"]
    # an explicit id wins over the recorded one
    with open_source(f"file://{tmp_path}?fps=0&id=replay&color=rgb") as src:
        first, second = src.read(1.0), src.read(1.0)
    assert first.source_id == "replay" and second.color_order == "rgb"


def test_video_is_decoded_in_order_and_ends(video):
    with open_source(f"file://{video}?fps=0") as src:
        assert src.describe()["mode"] == "video"
        frames = read_all(src)
    assert len(frames) == 10
    for i, frame in enumerate(frames):
        assert frame.seq == i
        assert frame.image.shape == (48, 64, 3) and frame.color_order == "bgr"
        assert abs(float(frame.image.mean()) - 20 * i) < 6


def test_video_native_fps_pacing_and_loop(video):
    with open_source(f"file://{video}?loop=1") as src:
        assert src.fps == pytest.approx(25.0)
        t0 = time.perf_counter()
        frames = [src.read(1.0) for _ in range(13)]
        elapsed = time.perf_counter() - t0
    assert 12 / 25 - 0.02 <= elapsed < 12 / 25 + 0.3
    assert [f.seq for f in frames] == list(range(13))
    assert abs(float(frames[10].image.mean()) - float(frames[0].image.mean())) < 3  # looped to the start


def test_missing_empty_and_undecodable_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        open_source(f"file://{tmp_path}/nope.mp4")
    assert "nope.mp4" in str(info.value) and "video file" in str(info.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no .png"):
        open_source(str(tmp_path / "empty"))
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"\0" * 1000)
    with pytest.raises(ConfigError, match="bogus.mp4"):
        open_source(str(bogus)).open()
    with pytest.raises(ConfigError, match="fps"):
        open_source(f"file://{DATA}?fps=fast")
    with pytest.raises(ConfigError, match="fps"):
        open_source(f"file://{DATA}?fps=-1")
    with pytest.raises(ConfigError, match="color"):
        open_source(f"file://{DATA}?color=cmyk")


def test_recorded_truth_masks_ride_along_and_are_not_frames(tmp_path):
    import numpy as np

    from medstream.runtime.sources import open_source

    for i in range(3):
        np.save(tmp_path / f"{i:08d}.npy", np.full((8, 8), i, np.uint8))
        np.save(tmp_path / f"{i:08d}.truth.npy", np.full((8, 8), i % 2, np.uint8))
    src = open_source(f"file://{tmp_path}?fps=0")
    src.open()
    frames = [src.read(1.0) for _ in range(3)]
    assert len(src.items) == 3
    assert [int(f.image[0, 0]) for f in frames] == [0, 1, 2]
    assert [int(f.truth[0, 0]) for f in frames] == [0, 1, 0]
