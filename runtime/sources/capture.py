"""``v4l2:///dev/videoN`` and ``gst://PIPELINE``: live capture through OpenCV.

``v4l2:///dev/video0`` (or ``v4l2://0``) opens a capture card or camera with OpenCV's V4L2 backend.
Query parameters: ``width``, ``height``, ``fps``, ``fourcc`` (e.g. ``MJPG``, ``YUYV``), ``max_failures``
(consecutive empty reads before the device counts as lost, default 10), ``id``.

``gst://PIPELINE`` opens a GStreamer pipeline with OpenCV's GStreamer backend; everything after
``gst://`` is the pipeline, which must end in an ``appsink``, e.g.
``gst://v4l2src device=/dev/video0 ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1``.
Pass the source id with ``open_source(..., source_id=...)`` (a pipeline has no query string).

Security: a GStreamer pipeline string can name any element, including ones that read or write files,
open network connections or run programs, so ``gst://`` is accepted only from the operator's own
configuration file or command line. :class:`CaptureSource` refuses it unless it is constructed with
``allow_pipeline_uris=True``, which only those trusted callers pass (through
:func:`medstream.runtime.sources.open_source`). No network message can reach ``open_source`` today;
any future remote-control path must keep the default ``False``.

``cap.read()`` blocks (up to about 10 s inside OpenCV's V4L2 backend when a card has no signal), so it
runs in the source's own reader thread, which keeps only the newest frame in a one-slot holder:
:meth:`CaptureSource.read` never waits longer than its timeout, frames the consumer did not take in
time are replaced (the gap shows in ``seq``), and after ``max_failures`` consecutive empty reads the
next :meth:`CaptureSource.read` raises :class:`~medstream.runtime.errors.SourceError`, so the
pipeline closes the source and reopens it with backoff. A frame still in the holder is delivered
before that error (the last good picture is not thrown away).

So the first frame a consumer reads is the newest one, not necessarily ``seq`` 0: a device (or a file
standing in for one) can deliver several frames between :meth:`CaptureSource.open` and the first
:meth:`CaptureSource.read`. A reader thread whose blocked ``cap.read()`` outlives :meth:`close`
(the join gives up after 1 s) checks its stop flag under the holder's lock, which close sets under the
same lock, so it can never put a stale frame or error into the next session after a reopen.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from typing import Any

import cv2
import numpy as np

from medstream.runtime.errors import ConfigError, SourceError
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.sources.base import Source, SourceURI

_RETRY_PAUSE_S = 0.05
_GST_FIX = ("this OpenCV was built without GStreamer (pip's opencv-python wheels never have it): on a Jetson, "
            "use JetPack's system OpenCV (apt install python3-opencv, and a venv made with "
            "--system-site-packages, after `pip uninstall opencv-python-headless`); elsewhere build OpenCV "
            "with -DWITH_GSTREAMER=ON, or use v4l2:///dev/videoN for a plain capture device")


@functools.cache
def gstreamer_available() -> bool:
    """Whether this OpenCV build has the GStreamer video I/O backend (read from its build report)."""
    return re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.MULTILINE) is not None


def _color_for(image: np.ndarray) -> str:
    if image.ndim == 2 or image.shape[2] == 1:
        return "gray"
    return "bgra" if image.shape[2] == 4 else "bgr"


class CaptureSource(Source):
    """A V4L2 device or GStreamer pipeline read by a background thread.

    Parameters
    ----------
    uri
        ``v4l2:///dev/videoN``, ``v4l2://N`` or ``gst://PIPELINE ! appsink``.
    source_id
        Overrides ``id=`` (and the default ``v4l2-videoN`` / ``gst``).
    allow_pipeline_uris
        Must be ``True`` for ``gst://``; only callers reading the operator's own config or command line
        may pass it (see the module docstring).
    """

    def __init__(self, uri: SourceURI, source_id: str | None = None, *, allow_pipeline_uris: bool = False) -> None:
        self.max_failures = 10
        self._settings: dict[int, float] = {}
        self._fourcc: str | None = None
        if uri.scheme == "gst":
            if not allow_pipeline_uris:
                raise ConfigError(
                    f"source {uri.raw[:120]!r}: gst:// pipelines are accepted only from the configuration file "
                    "or command line (a pipeline can run arbitrary GStreamer elements)",
                    "put the gst:// source in the service's config file or --source argument")
            super().__init__(uri, source_id or "gst")
            self.target: int | str = uri.raw.split("://", 1)[1].strip()
            self.api = cv2.CAP_GSTREAMER
            self.device = "GStreamer pipeline"
            last = self.target.rsplit("!", 1)[-1].split()
            if not last or not last[0].startswith("appsink"):
                raise ConfigError(f"GStreamer pipeline {self.target!r} does not end in an appsink",
                                  "end it with '! videoconvert ! video/x-raw,format=BGR ! appsink drop=true "
                                  "max-buffers=1' so OpenCV can take the frames")
            if not gstreamer_available():
                raise ConfigError(f"source {uri.raw[:120]!r} needs OpenCV with GStreamer, and "
                                  f"this OpenCV {cv2.__version__} has none", _GST_FIX)
            self._init_state()
            return
        node = f"{uri.netloc}{uri.path}"
        if node.isdigit():
            self.target, self.device = int(node), f"/dev/video{node}"
        elif node.startswith("/dev/"):
            self.target, self.device = node, node
        else:
            raise ConfigError(f"source {uri.raw!r} names no video device",
                              "write it as v4l2:///dev/video0 (or v4l2://0); list devices with `v4l2-ctl --list-devices`")
        super().__init__(uri, source_id or uri.params.get("id") or f"v4l2-{os.path.basename(self.device)}")
        self.api = cv2.CAP_V4L2
        for key, prop in (("width", cv2.CAP_PROP_FRAME_WIDTH), ("height", cv2.CAP_PROP_FRAME_HEIGHT),
                          ("fps", cv2.CAP_PROP_FPS)):
            value = uri.param(key, None, float)
            if value is not None:
                if value <= 0:
                    raise ConfigError(f"source {uri.raw!r}: {key} must be > 0", f"fix '{key}=' in the source URI")
                self._settings[prop] = value
        fourcc = uri.param("fourcc", None, str)
        if fourcc is not None and len(fourcc) != 4:
            raise ConfigError(f"source {uri.raw!r}: fourcc={fourcc!r} must be 4 characters",
                              "use e.g. fourcc=MJPG or fourcc=YUYV (see `v4l2-ctl --list-formats-ext`)")
        self._fourcc = fourcc
        self.max_failures = uri.param("max_failures", 10, int)
        if self.max_failures < 1:
            raise ConfigError(f"source {uri.raw!r}: max_failures must be >= 1", "fix 'max_failures=' in the source URI")
        self._init_state()

    def _init_state(self) -> None:
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._error: SourceError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_frame: float | None = None
        self.frames_captured = 0
        self.frames_replaced = 0
        self.consecutive_failures = 0

    # ------------------------------------------------------------------------------------ lifecycle
    def _make_capture(self) -> cv2.VideoCapture:
        """The OpenCV capture object (a seam: tests without a capture device substitute a video file)."""
        return cv2.VideoCapture(self.target, self.api)

    def _open(self) -> None:
        if self.api == cv2.CAP_V4L2 and isinstance(self.target, str):
            if not os.path.exists(self.target):
                raise SourceError(
                    f"video device {self.target} does not exist (source {self.uri.raw!r})",
                    "check the card is plugged in and which node it got with `v4l2-ctl --list-devices`; "
                    "under systemd, also check the service's DeviceAllow= and PrivateDevices= settings")
            if not os.access(self.target, os.R_OK | os.W_OK):
                raise SourceError(f"no permission to open video device {self.target}",
                                  "add the service user to the 'video' group, and allow the node with DeviceAllow=")
        cap = self._make_capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"OpenCV could not open {self.device} (source {self.uri.raw[:120]!r})",
                              "the device may be busy (another program has it) or not a capture device; "
                              "check `v4l2-ctl --list-devices` and the service's DeviceAllow=")
        if self._fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self._fourcc))
        for prop, value in self._settings.items():
            cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fewer driver buffers: fresher frames
        self._slot, self._error, self._last_frame = None, None, None
        self.consecutive_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reader, args=(cap, self._stop),
                                        name=f"capture-{self.source_id}", daemon=True)
        self._thread.start()

    def _close(self) -> None:
        with self._cond:  # under the lock: once released, the old reader writes no frame and no error
            self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # A read blocked inside OpenCV cannot be interrupted; the thread releases the device itself
            # as soon as that read returns, so closing never hangs the caller.
            thread.join(timeout=1.0)
        with self._cond:
            self._slot = None
            self._cond.notify_all()

    # ------------------------------------------------------------------------------- reader thread
    def _reader(self, cap: cv2.VideoCapture, stop: threading.Event) -> None:
        seq, failures, detail = 0, 0, ""
        try:
            while not stop.is_set():
                try:
                    ok, image = cap.read()
                except cv2.error as exc:
                    ok, image, detail = False, None, f": {exc}"
                if stop.is_set():
                    break
                if ok and image is not None and image.size:
                    failures = 0
                    frame = Frame(seq=seq, t_capture_ns=now_ns(), image=image, source_id=self.source_id,
                                  color_order=_color_for(image))
                    seq += 1
                    with self._cond:
                        if stop.is_set():  # closed while this frame was read: it belongs to no session
                            break
                        if self._slot is not None:
                            self.frames_replaced += 1
                        self._slot = frame
                        self._last_frame = time.perf_counter()
                        self.frames_captured += 1
                        self.consecutive_failures = 0
                        self._cond.notify_all()
                    continue
                failures += 1
                with self._cond:
                    if stop.is_set():
                        break
                    self.consecutive_failures = failures
                    if failures >= self.max_failures:
                        self._error = SourceError(
                            f"{self.device} returned no frame {failures} times in a row{detail}",
                            "check the cable and the signal source; the pipeline reopens the device with backoff")
                        self._cond.notify_all()
                        return
                stop.wait(_RETRY_PAUSE_S)
        finally:
            cap.release()

    # ----------------------------------------------------------------------------------------- read
    def read(self, timeout: float) -> Frame | None:
        """The newest captured frame not yet returned, or ``None`` if none came within ``timeout``.

        Raises
        ------
        SourceError
            The device stopped delivering frames (``max_failures`` empty reads in a row), or the
            source is not open.
        """
        if not self.is_open:
            raise SourceError(f"source {self.uri.raw[:120]!r} is not open", "call open() first")
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self._error is not None, max(timeout, 0.0))
            if self._slot is not None:
                frame, self._slot = self._slot, None
                frame.t_receive_ns = time.perf_counter_ns()
                return frame
            if self._error is not None:
                raise self._error
            return None

    @property
    def last_frame_age_s(self) -> float | None:
        """Seconds since the reader thread last got a frame; ``None`` if none since :meth:`open`."""
        return None if self._last_frame is None else time.perf_counter() - self._last_frame

    def describe(self) -> dict[str, Any]:
        age = self.last_frame_age_s
        return {
            **super().describe(),
            "device": self.device,
            "backend": "gstreamer" if self.api == cv2.CAP_GSTREAMER else "v4l2",
            "running": self._thread is not None and self._thread.is_alive(),
            "frames_captured": self.frames_captured,
            "frames_replaced": self.frames_replaced,
            "consecutive_failures": self.consecutive_failures,
            "last_frame_age_s": None if age is None else round(age, 3),
        }


__all__ = ["CaptureSource", "gstreamer_available"]
