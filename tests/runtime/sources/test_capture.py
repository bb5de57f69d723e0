"""CaptureSource. This machine has no capture device (no /dev/video*) and pip's OpenCV has no GStreamer.

So: the error paths are tested for real; the reader thread is tested with a real OpenCV
``VideoCapture`` on a video file standing in for the device (the one substitution, via the
``_make_capture`` seam), plus a wrapper that makes its reads block like a card without signal.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from medstream.runtime.errors import ConfigError, SourceError
from medstream.runtime.sources import open_source, parse_uri
from medstream.runtime.sources.capture import CaptureSource, gstreamer_available


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("capture") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (32, 24))
    for i in range(10):
        writer.write(np.full((24, 32, 3), 20 * i, np.uint8))
    writer.release()
    return path


class SlowCapture:
    """A real file capture whose reads block ``delay`` seconds, like a V4L2 card waiting for signal."""

    def __init__(self, path: Path, delay: float) -> None:
        self.cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        self.delay = delay

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.cap.isOpened()

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self):
        time.sleep(self.delay)
        return self.cap.read()

    def release(self) -> None:
        self.cap.release()


def file_backed(clip: Path, uri: str = "v4l2://0?max_failures=3", delay: float = 0.0) -> CaptureSource:
    """A CaptureSource whose 'device' is the video file (hardware substitute, see module docstring)."""

    class FileBacked(CaptureSource):
        def _make_capture(self):
            if delay:
                return SlowCapture(clip, delay)
            return cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)

    return FileBacked(parse_uri(uri))


def test_missing_device_names_node_and_what_to_check():
    src = open_source("v4l2:///dev/video99")
    with pytest.raises(SourceError) as info:
        src.open()
    message = str(info.value)
    assert "/dev/video99" in message
    assert "v4l2-ctl --list-devices" in message
    assert "DeviceAllow" in message
    assert src.is_open is False


def test_node_that_is_not_a_capture_device():
    with pytest.raises(SourceError, match="/dev/null"):
        open_source("v4l2:///dev/null").open()


def test_v4l2_uri_errors():
    with pytest.raises(ConfigError, match="v4l2-ctl"):
        open_source("v4l2://camera")
    with pytest.raises(ConfigError, match="width"):
        open_source("v4l2:///dev/video0?width=0")
    with pytest.raises(ConfigError, match="height"):
        open_source("v4l2:///dev/video0?height=tall")
    with pytest.raises(ConfigError, match="fourcc"):
        open_source("v4l2:///dev/video0?fourcc=MJPEG")
    src = open_source("v4l2:///dev/video2?width=1920&height=1080&fps=60&fourcc=MJPG")
    assert src.source_id == "v4l2-video2"
    assert src.describe()["device"] == "/dev/video2"


def test_gst_refused_unless_from_config_or_cli():
    with pytest.raises(ConfigError, match="configuration file or command line"):
        open_source("gst://videotestsrc ! appsink")
    with pytest.raises(ConfigError, match="configuration file or command line"):
        CaptureSource(parse_uri("gst://videotestsrc ! appsink"))


def test_gst_pipeline_must_end_in_appsink():
    with pytest.raises(ConfigError, match="appsink"):
        open_source("gst://videotestsrc ! fakesink", allow_pipeline_uris=True)


def test_gst_needs_opencv_with_gstreamer():
    uri = "gst://videotestsrc num-buffers=30 ! videoconvert ! video/x-raw,format=BGR ! appsink"
    if not gstreamer_available():
        with pytest.raises(ConfigError) as info:
            open_source(uri, allow_pipeline_uris=True)
        message = str(info.value)
        assert "GStreamer" in message and "python3-opencv" in message
        return
    with open_source(uri, allow_pipeline_uris=True) as src:
        frame = src.read(5.0)
        assert frame is not None and frame.image.ndim == 3 and frame.color_order == "bgr"


class GatedCapture:
    """A real file capture that hands out its first frame, then blocks until the test opens the gate.

    A file decodes its 10 tiny frames in a few milliseconds, far faster than any card delivers them, so
    without the gate the reader thread may read several frames (or all, and report the device lost)
    before the test's first ``read()``: the one-slot holder then rightly returns the newest frame, not
    ``seq`` 0. The gate paces the "device" the way a real one paces itself, so the test is deterministic.
    """

    def __init__(self, path: Path) -> None:
        self.cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        self.gate = threading.Event()
        self.reads = 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.cap.isOpened()

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self):
        if self.reads >= 1:
            self.gate.wait(10)  # never hangs a failed test for long
        self.reads += 1
        return self.cap.read()

    def release(self) -> None:
        self.cap.release()


def test_reader_thread_delivers_frames_then_reports_lost_device(clip):
    captures: list[GatedCapture] = []

    class FileBacked(CaptureSource):
        def _make_capture(self):
            captures.append(GatedCapture(clip))
            return captures[-1]

    src = FileBacked(parse_uri("v4l2://0?max_failures=3"))
    with src:
        frame = src.read(2.0)
        assert frame is not None and frame.seq == 0
        assert frame.image.shape == (24, 32, 3) and frame.color_order == "bgr"
        captures[-1].gate.set()  # the "device" now delivers the other 9 frames, then nothing
        deadline = time.monotonic() + 10  # the thread reads the rest; the one-slot holder keeps only the newest
        while src.frames_captured < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        newest = src.read(1.0)  # delivered even if the device was already reported lost
        assert newest is not None and newest.seq == 9 and newest.seq > frame.seq + 1
        assert src.frames_replaced > 0
        # end of "stream": 3 empty reads in a row -> SourceError naming the device
        with pytest.raises(SourceError, match="/dev/video0 returned no frame 3 times"):
            src.read(2.0)
        with pytest.raises(SourceError):
            src.read(0.01)  # stays failed until the pipeline reopens it
    with src:  # reopening works (what the pipeline does after backoff)
        again = src.read(2.0)
        assert again is not None and again.seq == 0
        captures[-1].gate.set()
    assert len(captures) == 2


def test_a_reader_outliving_close_leaves_nothing_in_the_next_session(clip):
    """A device read that returns while close() and a reopen happen must not leak into the new session.

    The test holds the holder's lock so the old reader is caught between its read and delivering the
    frame while the source is closed and reopened: the old reader must then drop its frame.
    """
    captures: list = []

    class FileBacked(CaptureSource):
        def _make_capture(self):
            captures.append(SlowCapture(clip, 0.3) if not captures else GatedCapture(clip))
            return captures[-1]

    src = FileBacked(parse_uri("v4l2://0?max_failures=3"))
    src.open()
    try:
        with src._cond:  # the old reader's read returns within 0.3 s and then waits for this lock
            time.sleep(1.0)
            src.close()  # its join gives up after 1 s: the old reader is still waiting
            src.open()  # new session, new capture (one frame, then gated)
        first = src.read(2.0)
        assert first is not None and first.seq == 0
        time.sleep(0.3)
        assert src.read(0.2) is None  # nothing from the old session arrived
        assert src.frames_captured == 1 and src.frames_replaced == 0
    finally:
        captures[-1].gate.set()
        src.close()


def test_read_never_blocks_longer_than_timeout(clip):
    src = file_backed(clip, delay=0.5)
    src.open()
    try:
        for timeout in (0.0, 0.05, 0.1):
            t0 = time.perf_counter()
            assert src.read(timeout) is None
            assert time.perf_counter() - t0 < timeout + 0.1
        frame = src.read(2.0)
        assert frame is not None and frame.seq == 0
        assert src.describe()["running"] is True
    finally:
        t0 = time.perf_counter()
        src.close()
        assert time.perf_counter() - t0 < 1.5  # never hangs on a blocked device read
    with pytest.raises(SourceError, match="not open"):
        src.read(0.01)
