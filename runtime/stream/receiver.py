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

from medstream.runtime import accounting as acc
from medstream.runtime.accounting import FrameAccounting
from medstream.runtime.errors import SourceEnded, SourceError
from medstream.runtime.frame import Frame
from medstream.runtime.mailbox import LatestMailbox
from medstream.runtime.sources.backoff import Backoff
from medstream.runtime.sources.base import Source
from medstream.runtime.stream.status import ENDED, LIVE, RECONNECTING, STALLED, STARTING, STOPPED
from medstream.runtime.wire import WireError

log = logging.getLogger("medstream.receiver")


class Receiver:
    """Reads ``source`` on its own thread until stopped, the source ends or ``max_frames`` were received."""

    def __init__(self, source: Source, mailbox: LatestMailbox[Frame], accounting: FrameAccounting,
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

    def _accept(self, frame: Frame, backoff: Backoff) -> None:
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
