"""The reader threads of the web view: frames, overlays and status into the :class:`ViewHub`.

Frames are read through the runtime's source layer (:func:`medstream.runtime.sources.open_source`
with a ``zmq+tcp://`` URI, i.e. the ZmqSource), never through a socket of our own: the source owns
the frame SUB socket, its limits, heartbeats and CURVE handshake reporting. Overlays and status come
from one plain SUB socket on the runtime's publisher, decoded by :mod:`medstream.runtime.wire`.

Both threads poll with a short timeout and stop within 0.2 s of :meth:`Feed.stop`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from medstream.runtime.errors import ConfigError, SourceEnded, SourceError
from medstream.runtime.web.hub import ViewHub

log = logging.getLogger("medstream.web")

POLL_S = 0.2


def frame_source_uri(endpoint: str) -> str:
    """``tcp://HOST:PORT`` (as ``--frames-from`` takes it) as a source URI; ``zmq+...`` URIs pass as they are."""
    if endpoint.startswith("zmq+"):
        return endpoint
    if endpoint.startswith(("tcp://", "ipc://")):
        return f"zmq+{endpoint}"
    raise ConfigError(f"--frames-from {endpoint!r} is not a ZeroMQ endpoint",
                      "give the frame sender's endpoint, e.g. tcp://127.0.0.1:5555 (or zmq+tcp://127.0.0.1:5555)")


class Feed(threading.Thread):
    """A daemon thread with a stop flag; ``error`` holds what ended it early, if anything."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop_event.set()


class FrameFeed(Feed):
    """Frames from the sender, through the source layer; a lost source is reopened with backoff."""

    def __init__(self, hub: ViewHub, endpoint: str, curve: Mapping[str, Any] | None = None) -> None:
        super().__init__("medstream-web-frames")
        from medstream.runtime.sources import open_source

        self.hub = hub
        self.uri = frame_source_uri(endpoint)
        self.source = open_source(self.uri, source_id="web-view", curve=curve)

    def run(self) -> None:
        from medstream.runtime.wire import WireError

        backoff = 0.2
        while not self._stop_event.is_set():
            try:
                self.source.open()
                backoff = 0.2
                while not self._stop_event.is_set():
                    try:
                        frame = self.source.read(POLL_S)
                    except WireError as exc:
                        self.hub.on_invalid(f"frame_{exc.reason}")
                        continue
                    if frame is not None:
                        self.hub.on_frame(frame)
            except SourceEnded:
                log.info("frame source %s ended", self.uri)
                return
            except SourceError as exc:
                log.warning("frame source %s failed, reopening in %.1f s: %s", self.uri, backoff, exc)
                self.hub.on_invalid("frame_source_error")
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:  # a bug: report it, do not spin
                log.exception("frame reader stopped")
                self.error = exc
                return
            finally:
                self.source.close()


class OverlayFeed(Feed):
    """Overlays and status from ``medstream run``'s publisher on one SUB socket."""

    def __init__(self, hub: ViewHub, endpoint: str, curve: Mapping[str, Any] | None = None) -> None:
        super().__init__("medstream-web-overlays")
        import zmq

        from medstream.runtime.security import apply_curve_client
        from medstream.runtime.wire import OVERLAY_TOPIC, STATUS_TOPIC

        self.hub = hub
        self.endpoint = endpoint
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        try:
            self.sock.setsockopt(zmq.SUBSCRIBE, OVERLAY_TOPIC)
            self.sock.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC)
            self.sock.setsockopt(zmq.RCVHWM, 8)
            self.sock.setsockopt(zmq.LINGER, 0)
            apply_curve_client(self.sock, curve)
            self.sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.sock.close(0)
            raise ConfigError(f"cannot connect to the overlay publisher {endpoint}: {exc}",
                              "give medstream run's --publish endpoint, e.g. --connect tcp://127.0.0.1:5556") from None
        except BaseException:
            self.sock.close(0)
            raise

    def run(self) -> None:
        import zmq

        from medstream.runtime.wire import OVERLAY_TOPIC, WireError, decode_overlay, decode_status

        try:
            while not self._stop_event.is_set():
                if not self.sock.poll(int(POLL_S * 1000)):
                    continue
                parts = self.sock.recv_multipart()
                try:
                    if parts[0] == OVERLAY_TOPIC:
                        overlay = decode_overlay(parts)
                        # decode_overlay validated the header; read it again for the optional keys it
                        # does not model yet (label, boxes, confidence, low_confidence).
                        self.hub.on_overlay(overlay, json.loads(parts[1]))
                    else:
                        self.hub.on_status(decode_status(parts))
                except WireError as exc:
                    self.hub.on_invalid(exc.reason)
        except zmq.ZMQError as exc:
            if not self._stop_event.is_set():
                log.error("overlay subscriber on %s failed: %s", self.endpoint, exc)
                self.error = exc
        except Exception as exc:
            log.exception("overlay reader stopped")
            self.error = exc
        finally:
            self.sock.close(0)


def wait_stopped(feeds: list[Feed], timeout: float = 2.0) -> None:
    """Stop the feeds and wait for their threads (each notices within :data:`POLL_S`)."""
    for f in feeds:
        f.stop()
    deadline = time.monotonic() + timeout
    for f in feeds:
        f.join(max(0.0, deadline - time.monotonic()))
