"""The receiver: one thread that owns the source, reads frames, counts them and hands the newest on.

It opens the source (and reopens it after a failure, with exponential backoff), reports a source that
goes quiet as ``stalled`` within ``stall_timeout_s``, counts every frame it receives and every
malformed message it rejects, and puts frames in the one-slot :class:`~medstream.runtime.mailbox.LatestMailbox`.
It never waits on the worker, so a slow model cannot back-pressure the capture.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from medstream.runtime import accounting as acc
from medstream.runtime.accounting import FrameAccounting
from medstream.runtime.errors import SourceEnded, SourceError
from medstream.runtime.frame import Frame
from medstream.runtime.sources.backoff import Backoff
from medstream.runtime.sources.base import Source
from medstream.runtime.stream.status import ENDED, LIVE, RECONNECTING, STALLED, STARTING, STOPPED
from medstream.runtime.wire import WireError

log = logging.getLogger("medstream.receiver")

#: Rejected messages handled per second at most (burst: :data:`REJECT_BURST`); past that the receiver waits
#: ``1 / REJECT_RATE`` s per rejection and the excess waits in (and is dropped by) ZeroMQ's per-peer queue at
#: the sender. Measured (benchmarks/hostile_sender.py, 2 cores): a flood of malformed messages unthrottled
#: took ~2,000 rejections/s and a core, raising a 15 fps stream's p50 latency from 23 to 68 ms.
REJECT_RATE = 500.0
REJECT_BURST = 100.0
#: Drop reason (under ``invalid``) of a frame from another ``source_id`` while the stream's own one is live.
OTHER_SOURCE = "other_source"


class FrameSlot(Protocol):
    """Where the receiver puts frames: a :class:`~medstream.runtime.mailbox.LatestMailbox` or one stream's
    slot of :class:`~medstream.runtime.mailbox.LatestSlots`."""

    def put(self, item: Frame) -> None: ...

    def wake(self) -> None: ...


class Receiver:
    """Reads ``source`` on its own thread until stopped, the source ends or ``max_frames`` were received."""

    def __init__(self, source: Source, mailbox: FrameSlot, accounting: FrameAccounting,
                 stop_event: threading.Event, stall_timeout_s: float = 1.0) -> None:
        self.source = source
        self.mailbox = mailbox
        self.accounting = accounting
        self.stop_event = stop_event
        self.stall_timeout_s = stall_timeout_s
        self.state = STARTING
        self.error: str | None = None
        self.last_frame_mono = time.monotonic()
        self.done = threading.Event()
        self.max_frames: int | None = None
        self.crash: str | None = None  # an unexpected error that ended the receiver (a bug in a source)
        self._thread: threading.Thread | None = None
        #: The stream's source id: frames with another id are dropped while it is live (see :meth:`_accept`).
        self.stream_id: str | None = None
        self._tokens = REJECT_BURST
        self._tokens_at = time.monotonic()

    def start(self, max_frames: int | None = None) -> None:
        self.max_frames = max_frames
        self.done.clear()
        self._thread = threading.Thread(target=self._loop, name="medstream-receiver", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    def seconds_since_frame(self) -> float:
        return time.monotonic() - self.last_frame_mono

    def _loop(self) -> None:
        backoff = Backoff()
        try:
            while not self.stop_event.is_set():
                if self.max_frames is not None and self.accounting.received >= self.max_frames:
                    return
                if not self.source.is_open:
                    try:
                        self.source.open()
                        self.last_frame_mono = time.monotonic()
                        if self.state == RECONNECTING:
                            log.info("source %s reopened", self.source.uri.raw)
                    except SourceError as exc:
                        self._failed(exc, backoff)
                        continue
                try:
                    frame = self.source.read(timeout=0.05)
                except SourceEnded:
                    self.state = ENDED
                    log.info("source %s ended", self.source.uri.raw)
                    return
                except SourceError as exc:
                    self.source.close()
                    self._failed(exc, backoff)
                    continue
                except WireError as exc:
                    self.accounting.on_received()
                    self.accounting.on_dropped(acc.INVALID, exc.reason)
                    self.accounting.on_invalid_message()
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("rejected a malformed frame (%s): %s", exc.reason, exc)
                    self._check_stall()  # a flood of malformed messages is no frame: it must not hide a stall
                    self._pace_rejections()
                    continue
                if frame is None:
                    self._check_stall()
                    continue
                self._accept(frame, backoff)
        except Exception as exc:  # a bug in a source must not leave the worker waiting forever
            log.exception("receiver thread failed on source %s", self.source.uri.raw)
            self.crash = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.error = self.crash
            self.state = STOPPED
        finally:
            self.done.set()
            self.mailbox.wake()

    @property
    def peers_refused(self) -> int:
        """Senders whose security handshake failed since the source was made (CURVE keys not accepted)."""
        return int(getattr(self.source, "peers_refused", 0) or 0)

    def _check_stall(self) -> None:
        """``stalled`` once no valid frame came for ``stall_timeout_s``; say so when a peer was refused.

        Checked after every read that brought no frame (each read waits at most 50 ms), so the state changes
        within ``stall_timeout_s`` + 50 ms; the pipeline publishes a status as soon as the state changes.
        """
        if self.seconds_since_frame() <= self.stall_timeout_s:
            return
        refused = self.peers_refused
        if refused:
            why = getattr(self.source, "last_handshake_error", None) or "security handshake failed"
            self.error = f"unauthenticated peer refused ({refused} handshake(s) failed: {why})"
        if self.state != STALLED:
            self.state = STALLED
            log.warning("source %s stalled: no frame for %.1f s%s", self.source.uri.raw, self.stall_timeout_s,
                        f"; {self.error}" if refused else "")

    def _pace_rejections(self) -> None:
        """Token bucket: at most :data:`REJECT_RATE` rejections a second (a flood must not take a core)."""
        now = time.monotonic()
        self._tokens = min(REJECT_BURST, self._tokens + (now - self._tokens_at) * REJECT_RATE)
        self._tokens_at = now
        self._tokens -= 1.0
        if self._tokens < 0:
            self.stop_event.wait(-self._tokens / REJECT_RATE)

    def _accept(self, frame: Frame, backoff: Backoff) -> None:
        # One stream per pipeline: while frames of the stream's source id keep coming, a frame with another id
        # (a second sender on the same socket, a flood of 1x1 frames) would supersede them in the one-slot
        # mailbox and cost a whole inference; it is dropped here as invalid/other_source instead, at the cost
        # of a decode. After stall_timeout_s without a frame, the next valid frame's id becomes the stream's
        # (a sender restarted under a new name).
        if (self.stream_id is not None and frame.source_id != self.stream_id
                and self.seconds_since_frame() <= self.stall_timeout_s):
            self.accounting.on_received()
            self.accounting.on_dropped(acc.INVALID, OTHER_SOURCE)
            self._pace_rejections()
            return
        self.stream_id = frame.source_id
        frame.t_receive_ns = time.perf_counter_ns()
        self.last_frame_mono = time.monotonic()
        if self.state != LIVE:
            if self.state in (STALLED, RECONNECTING):
                log.info("source %s live again", self.source.uri.raw)
            self.state = LIVE
            self.error = None
            backoff.reset()
        self.accounting.on_received()
        self.accounting.on_sequence(frame.source_id, frame.seq)
        self.mailbox.put(frame)

    def _failed(self, exc: Exception, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        if self.state != RECONNECTING:
            log.error("source %s failed: %s; retrying with backoff", self.source.uri.raw, exc)
        self.state = RECONNECTING
        self.error = str(exc).splitlines()[0]
        self.stop_event.wait(delay)


__all__ = ["Receiver"]
