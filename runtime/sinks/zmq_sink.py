"""The ZeroMQ overlay sink: one PUB socket for overlays and status, used only by the worker thread.

PUB never blocks the pipeline: a subscriber that is slow or gone has its queue capped at ``send_hwm``
messages and loses the oldest overlays, not the pipeline's time. (A stale overlay is worse than none.)
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from medstream.runtime.errors import ConfigError
from medstream.runtime.frame import Overlay
from medstream.runtime.sinks.base import OverlaySink
from medstream.runtime.wire import OVERLAY_TOPIC, STATUS_TOPIC, encode_overlay, encode_status, stream_topic

log = logging.getLogger("medstream.publisher")

SCHEMES = ("tcp", "ipc", "inproc")


class Publisher(OverlaySink):
    """Binds a PUB socket and sends overlays and status messages.

    Parameters
    ----------
    endpoint
        Where to bind, e.g. ``tcp://127.0.0.1:5556``.
    send_hwm
        Messages queued per subscriber before the oldest are dropped by ZeroMQ.
    context
        A ``zmq.Context`` to share (tests); default the process-wide instance.
    security
        Optional hook object with ``apply_server(socket)`` (CURVE, issue 8).
    """

    def __init__(self, endpoint: str, send_hwm: int = 4, context: zmq.Context | None = None,
                 security: Any = None) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        self._sock.setsockopt(zmq.LINGER, 200)
        if security is not None:
            security.apply_server(self._sock)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            hint = ("another process (another medstream?) already uses it: stop it or choose another --publish port"
                    if exc.errno == zmq.EADDRINUSE else "check the address; to listen on all interfaces see docs/SECURITY.md")
            raise ConfigError(f"cannot bind the overlay publisher to {endpoint}: {exc.strerror}", hint) from None
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.failed = 0

    def _send(self, parts: list[Any]) -> bool:
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.failed += 1
            return False
        except zmq.ZMQError as exc:
            self.failed += 1
            log.error("publishing on %s failed: %s", self.bound_endpoint, exc)
            return False
        self.sent += 1
        return True

    def send_overlay(self, overlay: Overlay) -> bool:
        parts = encode_overlay(overlay)
        if self.topic_per_stream:
            parts[0] = stream_topic(OVERLAY_TOPIC, overlay.source_id)
        return self._send(parts)

    def send_status(self, status: dict[str, Any]) -> bool:
        parts = encode_status(status)
        if self.topic_per_stream:
            parts[0] = stream_topic(STATUS_TOPIC, str(status.get("source_id", "default")))
        return self._send(parts)

    def close(self) -> None:
        self._sock.close()
