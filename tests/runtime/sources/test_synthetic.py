"""SyntheticSource: real phantom rendering, real-time pacing, finite runs, ground truth, URI checks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medstream.runtime.errors import ConfigError, SourceEnded
from medstream.runtime.sources import open_source


def test_frames_n_then_source_ended_with_truth_attached():
    with open_source("synthetic://ultrasound?fps=0&frames=3&width=96&height=80&seed=1") as src:
        assert src.finite is True
        frames = [src.read(1.0) for _ in range(3)]
        with pytest.raises(SourceEnded):
            src.read(1.0)
    assert [f.seq for f in frames] == [0, 1, 2]
    for f in frames:
        assert f.image.shape == (80, 96) and f.image.dtype == np.uint8 and f.color_order == "gray"
        assert f.truth is not None and f.truth.shape == f.image.shape
        assert f.source_id == "synthetic-ultrasound"
    assert any(np.any(f.truth > 0) for f in frames)  # the phantom has a labelled structure
    assert not np.array_equal(frames[0].image, frames[1].image)  # it moves


def test_truth_can_be_turned_off_and_same_seed_repeats():
    with open_source("synthetic://fluoroscopy?fps=0&frames=2&truth=0&width=64&height=64&seed=3") as a:
        fa = a.read(1.0)
    with open_source("synthetic://fluoroscopy?fps=0&frames=2&width=64&height=64&seed=3&id=fluoro-1") as b:
        fb = b.read(1.0)
    assert fa.truth is None and fb.truth is not None
    np.testing.assert_array_equal(fa.image, fb.image)
    assert fb.source_id == "fluoro-1"


def test_pacing_follows_fps():
    with open_source("synthetic://ultrasound?fps=20&width=64&height=64") as src:
        assert src.finite is False
        t0 = time.perf_counter()
        assert src.read(1.0).seq == 0
        t_wait = time.perf_counter()
        assert src.read(0.01) is None  # the next frame is due 50 ms after the first
        assert 0.005 <= time.perf_counter() - t_wait < 0.1
        for i in range(1, 5):
            assert src.read(1.0).seq == i
        assert 0.18 <= time.perf_counter() - t0 < 0.5


def test_default_rates():
    assert open_source("synthetic://ultrasound").fps == 30.0
    assert open_source("synthetic://fluoroscopy").fps == 15.0


@pytest.mark.parametrize(("uri", "name"), [
    ("synthetic://ultrasound?fps=fast", "fps"),
    ("synthetic://ultrasound?fps=-2", "fps"),
    ("synthetic://ultrasound?width=wide", "width"),
    ("synthetic://ultrasound?height=1.5", "height"),
    ("synthetic://ultrasound?frames=many", "frames"),
    ("synthetic://ultrasound?seed=x", "seed"),
])
def test_bad_parameter_is_a_config_error_naming_it(uri, name):
    with pytest.raises(ConfigError, match=name):
        open_source(uri)


def test_unknown_kind_and_scheme():
    with pytest.raises(ConfigError, match="synthetic://ultrasound"):
        open_source("synthetic://mri")
    with pytest.raises(ConfigError, match="zmq\\+tcp"):
        open_source("rtsp://camera/stream")


def test_fluoroscopy_sends_at_any_rate_when_its_motion_clock_is_a_pulse_rate():
    # The phantom only takes pulse rates (a typo guard); a benchmark sends at e.g. 22.4 fps.
    with pytest.raises(ConfigError, match="pulsed fluoroscopy"):
        open_source("synthetic://fluoroscopy?fps=22.4&frames=1").open()
    src = open_source("synthetic://fluoroscopy?fps=22.4&motion_fps=15&frames=2")
    src.open()
    try:
        assert src.read(1.0).image.shape == (256, 256)
        assert src.fps == 22.4
    finally:
        src.close()
    with pytest.raises(ConfigError, match="motion_fps"):
        open_source("synthetic://ultrasound?motion_fps=-1")


def test_preload_renders_every_frame_before_the_first_is_due_then_loops():
    src = open_source("synthetic://ultrasound?fps=0&preload=4&frames=9")
    src.open()
    try:
        # All rendered at open, so none is rendered while a benchmark measures.
        assert sorted(src._cache) == [0, 1, 2, 3]
        frames = [src.read(1.0) for _ in range(9)]
    finally:
        src.close()
    assert [f.seq for f in frames] == list(range(9)), "seq keeps counting while images loop"
    assert np.array_equal(frames[1].image, frames[5].image) and not np.array_equal(frames[1].image, frames[2].image)
    assert frames[8].t_capture_ns > frames[4].t_capture_ns


def test_scenes_spread_frames_over_seeds_and_stride_skips_phantom_frames():
    from medstream.runtime.phantom import FluoroscopyPhantom

    with open_source("synthetic://fluoroscopy?fps=0&frames=5&scenes=2&stride=3&start=1&seed=4&width=48&height=48") as src:
        frames = [src.read(1.0) for _ in range(5)]
        with pytest.raises(SourceEnded):
            src.read(1.0)
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    # 5 frames over 2 scenes: 3 of seed 4, then 2 of seed 5; frame i of a scene is phantom frame 1 + 3*i
    for k, seed, number in ((0, 4, 1), (1, 4, 4), (2, 4, 7), (3, 5, 1), (4, 5, 4)):
        image, mask = FluoroscopyPhantom(height=48, width=48, seed=seed).render(number)
        np.testing.assert_array_equal(frames[k].image, image)
        np.testing.assert_array_equal(frames[k].truth, mask)


def test_scenes_and_stride_are_checked():
    with pytest.raises(ConfigError, match="frames=N"):
        open_source("synthetic://ultrasound?scenes=3")
    with pytest.raises(ConfigError, match="scenes"):
        open_source("synthetic://ultrasound?scenes=0&frames=3")
    with pytest.raises(ConfigError, match="stride"):
        open_source("synthetic://ultrasound?stride=0")
    from medstream.runtime.sources.synthetic import scene_uris

    assert scene_uris("synthetic://ultrasound?seed=7&scenes=3&frames=7&width=64") == [
        "synthetic://ultrasound?seed=7&width=64&frames=3", "synthetic://ultrasound?seed=8&width=64&frames=2",
        "synthetic://ultrasound?seed=9&width=64&frames=2"]
