"""``igtl://HOST:PORT``: live images from an OpenIGTLink server (a PLUS server, ``medstream simulate``).

medstream connects as a client, as 3D Slicer does to PLUS (``bind=1`` listens instead, for a sender that
connects). It takes IMAGE messages (uint8, int8, uint16, int16, float32; 1 or 3 components; 2-D or a
single-slice volume) and makes each a :class:`~medstream.runtime.frame.Frame`:

* ``t_capture_ns`` is the message's timestamp: PLUS stamps the acquisition time (UNIX epoch) there, so
  ages and ``max_age_ms`` measure from the moment the scanner captured the image. That needs the PLUS
  host's clock in step with this one (same host, or NTP/PTP); ``timestamp=receive`` uses the arrival time
  instead, for a sender whose clock cannot be trusted;
* ``geometry`` holds the spacing (mm per pixel) and the IJK-to-RAS matrix, so the label map sent back over
  OpenIGTLink lands exactly on its image in 3D Slicer and areas can be given in mm^2;
* ``seq`` counts IMAGE messages of the device since the source was made (OpenIGTLink carries none);
  ``color_order`` is ``rgb`` for 3 components (VTK order).

Query parameters:

``device=NAME``
    Take IMAGE messages of this device only (PLUS names them like ``Image_Reference``); other devices and
    message types (TRANSFORM, STATUS, ...) are skipped and counted in ``other_messages``. Default: any IMAGE.
``bind=1``
    Listen on HOST:PORT instead of connecting; a non-loopback address needs ``--allow-insecure-remote``
    (OpenIGTLink has no authentication or encryption, docs/SECURITY.md). The newest connection wins.
``timestamp=message|receive``
    Capture time from the message (default) or the arrival here.
``window=LOW,HIGH``
    float32 pixels are mapped from this range to 0..255 (default ``0,255``); clipped frames are counted.
``max_bytes=N``, ``max_width=N``, ``max_height=N``
    Lower the limits (default 64 MiB body, sides 8192): a message announcing a larger body is refused
    before anything is allocated, and the connection is reset.
``connect_timeout=S``
    Seconds to wait for the server to accept (default 2).
``id=NAME``
    Source id for logs, status and overlays (default ``igtl``).

Malformed messages are counted as received and dropped ``invalid`` by reason, like the ZeroMQ source
(:mod:`medstream.runtime.igtl.messages` lists the reasons). After a header that cannot be trusted (its
body size may lie) the connection is reset: in client mode the next read reconnects at once; when the
server is gone the read raises :class:`~medstream.runtime.errors.SourceError` and the pipeline's receiver
reconnects with backoff and reports the stream ``reconnecting``; a server that is connected but silent
shows as ``stalled``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from typing import Any

from medstream.runtime.errors import ConfigError, SourceError
from medstream.runtime.frame import Frame
from medstream.runtime.igtl import messages as igtl
from medstream.runtime.igtl.server import split_host_port
from medstream.runtime.igtl.stream import MessageReader, PeerClosed
from medstream.runtime.sources.base import Source, SourceURI
from medstream.runtime.wire import WireError

log = logging.getLogger("medstream.source.igtl")

#: Kernel receive buffer: a few 1024x768 RGB frames, so a burst from PLUS never waits on this process.
RECEIVE_BUFFER_BYTES = 8 * 2**20


class IgtlSource(Source):
    """IMAGE messages from an OpenIGTLink connection as frames (query parameters in the module docstring)."""

    def __init__(self, uri: SourceURI, source_id: str | None = None) -> None:
        super().__init__(uri, source_id or uri.params.get("id") or "igtl")
        igtl.pyigtl()  # refuse before the stream starts when the [igtl] extra is missing
        if not igtl.crc_is_native():
            log.warning("crcmod runs without its C extension: checking the CRC of a 1024x768 image takes about "
                        "135 ms instead of 2 ms; reinstall crcmod where a C compiler is available")
        self.host, self.port = split_host_port(uri.raw)
        self.bind = uri.param("bind", False, bool)
        self.device = uri.params.get("device") or None
        self.use_message_time = uri.param("timestamp", "message") != "receive"
        if uri.param("timestamp", "message") not in ("message", "receive"):
            raise ConfigError(f"source {uri.raw!r}: timestamp= must be 'message' or 'receive'",
                              "use timestamp=message (PLUS's acquisition time) or timestamp=receive")
        self.window = self._window(uri)
        self.max_body_bytes = self._limit(uri, "max_bytes", igtl.DEFAULT_MAX_BODY_BYTES)
        self.max_width = self._limit(uri, "max_width", 8192)
        self.max_height = self._limit(uri, "max_height", 8192)
        self.connect_timeout_s = uri.param("connect_timeout", 2.0, float)
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._reader = MessageReader(self.max_body_bytes)
        self._peer: str | None = None
        self._last_message: float | None = None
        self._opened_at: float | None = None
        self._seq = 0
        self.messages_received = 0
        self.invalid_messages = 0
        self.other_messages = 0
        self.connections = 0
        self.disconnects = 0
        self.resets = 0
        self.clipped_frames = 0
        self.last_error: str | None = None

    @staticmethod
    def _limit(uri: SourceURI, key: str, ceiling: int) -> int:
        value = uri.param(key, ceiling, int)
        if not 1 <= value <= ceiling:
            raise ConfigError(f"source {uri.raw!r}: {key}={value} is outside 1..{ceiling}",
                              f"{key}= can only lower the limit (at most {ceiling})")
        return value

    @staticmethod
    def _window(uri: SourceURI) -> tuple[float, float]:
        text = uri.params.get("window", "0,255")
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"source {uri.raw!r}: window={text!r} is not LOW,HIGH",
                              "write e.g. window=0,1 for float images in 0..1") from None
        if not hi > lo:
            raise ConfigError(f"source {uri.raw!r}: window={text!r} needs LOW < HIGH", "write e.g. window=0,255")
        return lo, hi

    # ------------------------------------------------------------------------------------ lifecycle
    def listen_endpoint(self) -> str | None:
        """``tcp://HOST:PORT`` when listening: assembly checks it against the non-loopback rule."""
        if not self.bind:
            return None
        return f"tcp://[{self.host}]:{self.port}" if ":" in self.host else f"tcp://{self.host}:{self.port}"

    def _open(self) -> None:
        self._opened_at = time.perf_counter()
        self._last_message = None
        if self.bind:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.host, self.port))
                listener.listen(4)
            except OSError as exc:
                listener.close()
                raise SourceError(f"cannot listen for OpenIGTLink on {self.host}:{self.port}: {exc.strerror or exc}",
                                  "another program uses this port: stop it or choose another") from None
            listener.setblocking(False)
            self._listener = listener
        else:
            self._connect()

    def _connect(self) -> None:
        try:
            conn = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            self.last_error = f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            raise SourceError(f"cannot connect to the OpenIGTLink server {self.host}:{self.port}: {exc.strerror or exc}",
                              "start the PLUS server (or medstream simulate --publish igtl://...), check host and "
                              "port; medstream keeps retrying") from None
        self._adopt(conn, f"{self.host}:{self.port}")

    def _adopt(self, conn: socket.socket, peer: str) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self._conn, self._peer = conn, peer
        self._reader = MessageReader(self.max_body_bytes)
        self.connections += 1
        self.last_error = None
        log.info("OpenIGTLink source connected to %s", peer)

    def _drop_connection(self, why: str) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
            self.disconnects += 1
            self.last_error = why
            log.warning("OpenIGTLink connection %s closed: %s", self._peer, why)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None

    # ----------------------------------------------------------------------------------------- read
    def read(self, timeout: float) -> Frame | None:
        """The next IMAGE of the device as a frame, or ``None`` after ``timeout`` seconds without one.

        Raises :class:`WireError` for a malformed message (the reason is its counter key) and
        :class:`SourceError` when the connection to the server is lost (client mode).
        """
        if not self.is_open:
            raise SourceError(f"source {self.uri.raw!r} is not open", "call open() first")
        deadline = time.perf_counter() + max(timeout, 0.0)
        while True:
            if self._conn is None and not self.bind:
                self._connect()  # after a reset; a server that is gone raises SourceError: the receiver backs off
            waiting = [s for s in (self._conn, self._listener) if s is not None]
            remaining = max(0.0, deadline - time.perf_counter())
            ready = select.select(waiting, [], [], remaining)[0] if waiting else []
            if self._listener is not None and self._listener in ready:
                self._accept()
            if self._conn is not None and self._conn in ready:
                frame = self._take()
                if frame is not None:
                    return frame
                continue
            if time.perf_counter() >= deadline:
                return None

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._conn is not None:
            self._drop_connection(f"a new sender connected from {addr[0]}:{addr[1]}")
        self._adopt(conn, f"{addr[0]}:{addr[1]}")

    def _take(self) -> Frame | None:
        """Read from the connection; a frame when an IMAGE of the device completed, else ``None``."""
        assert self._conn is not None
        try:
            got = self._reader.poll(self._conn)
        except PeerClosed:
            return self._lost("the server closed the connection")
        except OSError as exc:
            return self._lost(f"receiving failed: {exc.strerror or exc}")
        except WireError:
            self._last_message = time.perf_counter()
            self.messages_received += 1
            self.invalid_messages += 1
            self.resets += 1
            self._drop_connection("a header that cannot be trusted: the stream is out of step")
            raise
        if got is None:
            return None
        header, body = got
        t_receive_ns = time.perf_counter_ns()
        self._last_message = time.perf_counter()
        self.messages_received += 1
        try:
            igtl.check_body(header, body)
            if header.type != "IMAGE" or (self.device is not None and header.device != self.device):
                self.other_messages += 1
                return None
            image = igtl.decode_image(header, body, max_width=self.max_width, max_height=self.max_height)
            pixels, clipped = igtl.model_pixels(image.pixels, self.window)
        except WireError:
            self.invalid_messages += 1
            raise
        self.clipped_frames += int(clipped)
        t_capture = header.t_ns if self.use_message_time else time.time_ns()
        frame = Frame(seq=self._seq, t_capture_ns=t_capture, image=pixels, source_id=self.source_id,
                      color_order="rgb" if pixels.ndim == 3 else "gray", geometry=image.geometry)
        frame.t_receive_ns = t_receive_ns
        self._seq += 1
        return frame

    def _lost(self, why: str) -> None:
        mid = self._reader.mid_message
        self._drop_connection(why + (" in the middle of a message" if mid else ""))
        if not self.bind:
            raise SourceError(f"OpenIGTLink server {self.host}:{self.port}: {why}",
                              "medstream reconnects with backoff; check that the PLUS server is running")
        return None

    # --------------------------------------------------------------------------------------- health
    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def last_message_age_s(self) -> float | None:
        return None if self._last_message is None else time.perf_counter() - self._last_message

    @property
    def endpoint(self) -> str:
        """The address in use (with ``bind=1`` and port 0, the port the OS picked)."""
        if self._listener is not None:
            host, port = self._listener.getsockname()[:2]
            return f"igtl://{host}:{port}"
        return f"igtl://{self.host}:{self.port}"

    def describe(self) -> dict[str, Any]:
        age = self.last_message_age_s
        return {
            **super().describe(),
            "endpoint": self.endpoint,
            "mode": "bind" if self.bind else "connect",
            "device": self.device,
            "connected": self.connected,
            "peer": self._peer if self.connected else None,
            "last_message_age_s": None if age is None else round(age, 3),
            "messages_received": self.messages_received,
            "invalid_messages": self.invalid_messages,
            "other_messages": self.other_messages,
            "connections": self.connections,
            "disconnects": self.disconnects,
            "resets": self.resets,
            "clipped_frames": self.clipped_frames,
            "timestamp": "message" if self.use_message_time else "receive",
            "last_error": self.last_error,
        }


__all__ = ["IgtlSource"]
