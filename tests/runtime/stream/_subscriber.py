"""One test subscriber for the stream tests: every overlay and status on a topic prefix, decoded by runtime.wire."""

from __future__ import annotations

import threading

import zmq

from medstream.runtime.wire import decode_overlay, decode_status


class Subscriber:
    """Collects ``topics`` (raw), ``overlays`` and ``statuses`` on its own thread until :meth:`close`."""

    def __init__(self, endpoint: str, topic: bytes = b"") -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.topics: list[bytes] = []
        self.overlays: list = []
        self.statuses: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                parts = self.sock.recv_multipart()
                self.topics.append(parts[0])
                if parts[0].startswith(b"overlay"):
                    self.overlays.append(decode_overlay(parts))
                else:
                    self.statuses.append(decode_status(parts))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
