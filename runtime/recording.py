"""Record a live frame stream to disk, so calibration and evaluation can use what the scanner really sends.

``medstream record --connect tcp://HOST:PORT --frames N --out DIR`` reads frames from a publisher in
the wire format (``medstream simulate --publish``, a scanner bridge) through the ZeroMQ frame source
(:class:`medstream.runtime.sources.zmq_source.ZmqSource`, the one reader of frames off a socket) and
writes, per frame, in the folder format of :mod:`medstream.runtime.sources.folder_format`:

* ``NNNNNNNN.npy``: the pixels exactly as received (``uint8``/``uint16``, ``HxW`` or ``HxWxC``);
* ``NNNNNNNN.json``: its header: ``seq``, ``t_capture_ns``, ``source_id``, ``color_order``, ``shape``, ``dtype``;
* ``NNNNNNNN.truth.npy``: the ground-truth class map, when the message carries one (synthetic sources).

``NNNNNNNN`` counts recorded frames from 0, so names sort in arrival order; the sender's ``seq`` is
in the header (gaps there are frames lost before we saw them). The folder replays with
``--source file://DIR`` and calibrates with ``medstream calibrate --data DIR``.

Each file is written to a temporary name in the same folder and renamed into place, the image last,
so a crash or a full disk never leaves a half-written frame: on ``ENOSPC`` the frame's files are
removed and :class:`RecordingError` says how many complete frames are on disk. Malformed messages
(refused by the source with :class:`~medstream.runtime.wire.WireError`) are counted by reason and skipped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.errors import ConfigError, MedstreamError, SourceError
from medstream.runtime.files import atomic_file
from medstream.runtime.frame import Frame
from medstream.runtime.sources import folder_format as fmt
from medstream.runtime.sources import open_source
from medstream.runtime.wire import DEFAULT_LIMITS, WireError, WireLimits

log = logging.getLogger("medstream.record")

#: Recording keeps every frame it can: a deep receive queue, no conflation.
_RECEIVE_QUEUE = 1000


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: mkstemp makes 0600 files; recorded frames get the mode a plain open() would give (read once at import)
_FILE_MODE = _default_mode()


class RecordingError(MedstreamError):
    """The recording could not continue (disk full, folder not writable)."""


@dataclass
class RecordingSummary:
    """What a recording did: frames written, messages refused (by reason), where, how long."""

    out_dir: str
    endpoint: str
    frames: int = 0
    with_truth: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    first_seq: int | None = None
    last_seq: int | None = None
    seq_gaps: int = 0
    seconds: float = 0.0
    bytes_written: int = 0

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "endpoint": self.endpoint, "frames": self.frames, "with_truth": self.with_truth,
                "malformed": dict(self.malformed), "malformed_total": self.malformed_total,
                "first_seq": self.first_seq, "last_seq": self.last_seq, "seq_gaps": self.seq_gaps,
                "seconds": round(self.seconds, 3), "bytes_written": self.bytes_written}


def zmq_endpoint(text: str) -> str:
    """``tcp://h:p``/``ipc://p`` as given; ``zmq+tcp://``/``zmq+ipc://`` (source URI form) stripped to that."""
    if text.startswith("zmq+"):
        text = text[4:]
    if not text.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"--connect {text!r} is not a ZeroMQ endpoint",
                          "give the publisher's endpoint, e.g. --connect tcp://127.0.0.1:5555")
    return text


def frame_header(frame: Frame) -> dict[str, Any]:
    """The ``NNNNNNNN.json`` content for a frame."""
    header: dict[str, Any] = {"seq": frame.seq, "t_capture_ns": frame.t_capture_ns, "source_id": frame.source_id,
                              "color_order": frame.color_order, "shape": list(frame.image.shape),
                              "dtype": frame.image.dtype.str}
    if frame.truth is not None:
        header["truth"] = {"shape": list(frame.truth.shape), "dtype": frame.truth.dtype.str}
    return header


class FrameWriter:
    """Writes frames as ``NNNNNNNN.npy`` + ``.json`` (+ ``.truth.npy``) into a folder, atomically per file."""

    def __init__(self, out_dir: str | Path, start_index: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.index = start_index
        self.bytes_written = 0

    def path(self, index: int, suffix: str) -> Path:
        return self.out_dir / fmt.recorded_name(index, suffix)

    def write(self, frame: Frame) -> Path:
        """Write one frame; returns the image path. Raises :class:`RecordingError` on a full disk."""
        done: list[Path] = []
        image_path = self.path(self.index, fmt.ARRAY_SUFFIX)
        try:
            if frame.truth is not None:
                done.append(self._atomic(self.path(self.index, fmt.TRUTH_SUFFIX), lambda f: np.save(f, frame.truth)))
            header = json.dumps(frame_header(frame), indent=1).encode("utf-8")
            done.append(self._atomic(fmt.header_path(image_path), lambda f: f.write(header)))
            done.append(self._atomic(image_path, lambda f: np.save(f, np.ascontiguousarray(frame.image))))
        except OSError as exc:
            for p in done:
                p.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) or self._disk_nearly_full(frame):
                raise RecordingError(
                    f"disk full while writing {image_path.name} in {self.out_dir} "
                    f"({self.index} complete frames are on disk; the incomplete one was removed)",
                    "free space on that disk or record to another folder with --out; "
                    "the frames already written are usable as they are",
                ) from None
            raise RecordingError(f"cannot write {image_path} ({exc.strerror or exc})",
                                 "check that the --out folder is writable") from None
        self.index += 1
        return image_path

    def _disk_nearly_full(self, frame: Frame) -> bool:
        """True when the folder's filesystem has no room for another frame.

        numpy reports a short write on a full disk as a bare ``OSError`` ("N requested and M
        written") without ``errno``, so the free space itself is the evidence.
        """
        try:
            free = shutil.disk_usage(self.out_dir).free
        except OSError:
            return False
        needed = frame.image.nbytes + (frame.truth.nbytes if frame.truth is not None else 0) + 4096
        return free < needed

    def _atomic(self, path: Path, write: Callable[[Any], Any]) -> Path:
        with atomic_file(path) as f:  # runtime/files.py owns atomic writes (normal permissions, no torn file)
            write(f)
            f.flush()
            self.bytes_written += f.tell()
        return path


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir``; refuse one that already holds a recording (frames would be mixed up)."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a folder", "choose a new folder for the recording")
    path.mkdir(parents=True, exist_ok=True)
    if any(p.suffix == fmt.ARRAY_SUFFIX for p in path.iterdir()):
        raise ConfigError(f"--out {path} already holds recorded frames",
                          "record into an empty or new folder (or delete the old recording)")
    return path


def record(endpoint: str, frames: int, out_dir: str | Path, timeout_s: float = 10.0,
           limits: WireLimits = DEFAULT_LIMITS, on_frame: Callable[[int], None] | None = None,
           stop: Callable[[], bool] | None = None, curve: Mapping[str, Any] | None = None) -> RecordingSummary:
    """Subscribe to ``endpoint`` and write ``frames`` frames into ``out_dir``.

    Parameters
    ----------
    endpoint
        The publisher's ZeroMQ endpoint (``tcp://127.0.0.1:5555``); we connect, it binds.
    frames
        How many good frames to write.
    out_dir
        Destination folder (created; must not already hold a recording).
    timeout_s
        Give up with :class:`~medstream.runtime.errors.SourceError` when nothing arrives for this long.
    on_frame
        Called with the number of frames written after each one (progress bars).
    stop
        Polled between messages; return True to end early (Ctrl-C handling, tests).
    """
    if frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {frames}", "pass --frames N")
    endpoint = zmq_endpoint(endpoint)
    out = prepare_out_dir(out_dir)
    writer = FrameWriter(out)
    summary = RecordingSummary(out_dir=str(out), endpoint=endpoint)
    source = open_source(f"zmq+{endpoint}?hwm={_RECEIVE_QUEUE}", source_id="record", curve=curve, limits=limits)
    t0 = time.monotonic()
    try:
        source.open()
    except SourceError as exc:
        raise ConfigError(f"cannot connect to {endpoint}: {exc}", "check the endpoint (tcp://HOST:PORT)") from None
    last = time.monotonic()
    try:
        while summary.frames < frames:
            if stop is not None and stop():
                break
            try:
                frame = source.read(timeout=0.1)
            except WireError as exc:
                last = time.monotonic()
                summary.malformed[exc.reason] = summary.malformed.get(exc.reason, 0) + 1
                log.warning("skipped a malformed frame from %s (%s: %s)", endpoint, exc.reason, exc)
                continue
            if frame is None:
                if time.monotonic() - last > timeout_s:
                    raise SourceError(
                        f"no frame from {endpoint} for {timeout_s:.0f} s ({summary.frames} of {frames} recorded)",
                        "check that the publisher is running and bound to that endpoint "
                        "(e.g. medstream simulate --publish tcp://127.0.0.1:5555)")
                continue
            last = time.monotonic()
            writer.write(frame)
            if summary.first_seq is None:
                summary.first_seq = frame.seq
            elif summary.last_seq is not None and frame.seq != summary.last_seq + 1:
                summary.seq_gaps += 1
            summary.last_seq = frame.seq
            summary.frames += 1
            summary.with_truth += frame.truth is not None
            if on_frame is not None:
                on_frame(summary.frames)
    finally:
        source.close()
        summary.seconds = time.monotonic() - t0
        summary.bytes_written = writer.bytes_written
    return summary


__all__ = ["FrameWriter", "RecordingError", "RecordingSummary", "frame_header", "prepare_out_dir", "record",
           "zmq_endpoint"]
