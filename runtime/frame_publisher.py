"""Publish frames over ZeroMQ in the wire format, like a scanner bridge does (or over OpenIGTLink, like a PLUS
server: :class:`IgtlFramePublisher`): the one frame sender.

``medstream simulate`` and anything else that plays the scanner (benchmarks, tests) send frames with
:class:`FramePublisher` and :func:`publish_source`, so the socket settings and the frame loop exist
once. Reading frames is :mod:`medstream.runtime.sources`' job; this module only writes them.

The socket is an XPUB: like a PUB it fans frames out to every subscriber, and it also reports
subscriptions, so a sender can wait until its consumers have joined before the first frame
(``wait_for_subscribers``) and none is lost to a late joiner. Frames are encoded by
:func:`medstream.runtime.wire.encode_frame`; the send queue is short (8 frames) because a scanner
does not hold old frames for a slow receiver either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import zmq

from medstream.runtime.errors import ConfigError, SourceEnded, SourceError
from medstream.runtime.frame import Frame, ImageGeometry
from medstream.runtime.security import CurveServer, check_bind_allowed
from medstream.runtime.sources.base import Source
from medstream.runtime.wire import encode_frame

log = logging.getLogger("medstream.frame_publisher")

#: Frames queued per subscriber before ZeroMQ drops new ones for it (a live sender never blocks).
SEND_QUEUE = 8
#: How long close() lets queued frames drain to subscribers.
LINGER_MS = 2000


class FramePublisher:
    """An XPUB socket bound to ``endpoint`` that sends wire-format frames.

    Parameters
    ----------
    endpoint
        Where to bind (``tcp://127.0.0.1:5555``; port ``*`` picks one, see :attr:`endpoint`).
    security
        CURVE server keys; without them a non-loopback address is refused unless
        ``allow_insecure_remote`` (see :func:`medstream.runtime.security.check_bind_allowed`).
    what
        How the bind check names this socket in its error.
    """

    def __init__(self, endpoint: str, *, security: CurveServer | None = None, allow_insecure_remote: bool = False,
                 what: str = "the frame publisher") -> None:
        check_bind_allowed(endpoint, encrypted=security is not None, allow_insecure_remote=allow_insecure_remote,
                           what=what)
        self.configured_endpoint = endpoint
        self.security = security
        self.sent = 0
        self.subscribers_joined = 0
        self._sock: zmq.Socket | None = None

    def open(self) -> FramePublisher:
        sock = zmq.Context.instance().socket(zmq.XPUB)  # XPUB: we can see subscriptions arrive
        sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscriber, even with the same topic
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        if self.security is not None:
            self.security.apply_server(sock)
        try:
            sock.bind(self.configured_endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ConfigError(f"cannot bind {self.configured_endpoint}: {exc.strerror}",
                              "another process uses this port: stop it or pick another --publish") from None
        self._sock = sock
        return self

    def close(self) -> None:
        """Close the socket (queued frames get ``LINGER_MS`` to leave) and the CURVE server."""
        sock, self._sock = self._sock, None
        if sock is not None:
            time.sleep(0.05)  # let the last frame reach the socket's I/O thread
            sock.close()
        if self.security is not None:
            self.security.close()

    def __enter__(self) -> FramePublisher:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """The bound address (with the port the OS picked for ``*``)."""
        return self._socket().getsockopt_string(zmq.LAST_ENDPOINT)

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            raise SourceError(f"frame publisher {self.configured_endpoint} is not open", "call open() first")
        return self._sock

    def send(self, frame: Frame) -> None:
        """Send one frame (never blocks: a full subscriber queue drops it for that subscriber)."""
        sock = self._socket()
        sock.send_multipart(encode_frame(frame), copy=False)
        self.sent += 1
        self.drain_subscriptions()

    def drain_subscriptions(self) -> int:
        """Read pending (un)subscription notices; returns how many subscribers joined."""
        sock, joined = self._socket(), 0
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg[:1] == b"\x01":
                joined += 1
        self.subscribers_joined += joined
        return joined

    def wait_for_subscribers(self, n: int, timeout: float) -> None:
        """Block until ``n`` subscribers have joined; :class:`SourceError` after ``timeout`` seconds."""
        if n <= 0:
            return
        sock = self._socket()
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while self.subscribers_joined < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError(f"only {self.subscribers_joined} of {n} subscribers joined within {timeout:.0f} s",
                                  "start the consumer (medstream run --source zmq+tcp://...) or lower --wait-subscribers")
            if poller.poll(int(left * 1000)):
                self.drain_subscriptions()


def publish_source(source: Source, publisher: FramePublisher | IgtlFramePublisher, stop: Callable[[], bool] = lambda: False) -> int:
    """Send every frame ``source`` gives until it ends or ``stop()`` is true; returns frames sent.

    The source paces the stream (its ``fps``); the source is opened and closed here.
    """
    sent = 0
    with source:
        while not stop():
            try:
                frame = source.read(timeout=0.2)
            except SourceEnded:
                break
            if frame is None:
                continue
            publisher.send(frame)
            sent += 1
    return sent


# ------------------------------------------------------------------------------------------ OpenIGTLink
#: The phantom's placement in patient space when simulate plays a PLUS server: mm per pixel, and the image
#: plane as a tracked ultrasound probe would put it (i to the patient's right-to-left, j downwards into the
#: body, the plane's normal anterior, 40 mm above the origin): a matrix that is neither identity nor
#: axis-aligned in scale, so a receiver that ignores it, or swaps rows and columns, draws in the wrong place.
DEFAULT_SPACING_MM = 0.2


def phantom_geometry(width: int, height: int, spacing_mm: float = DEFAULT_SPACING_MM) -> ImageGeometry:
    """Where the simulated image lies (see :data:`DEFAULT_SPACING_MM`); ``spacing_mm`` along i, 1.5x along j."""
    si, sj, sk = spacing_mm, spacing_mm * 1.5, 1.0
    matrix = ((-si, 0.0, 0.0, si * (width - 1) / 2.0),
              (0.0, 0.0, sk, 0.0),
              (0.0, -sj, 0.0, 40.0),
              (0.0, 0.0, 0.0, 1.0))
    return ImageGeometry(spacing=(si, sj, sk), ijk_to_ras=matrix)


class IgtlFramePublisher:
    """A PLUS-like OpenIGTLink server sending each frame as an IMAGE (``medstream simulate --publish igtl://``).

    Clients (``medstream run --source igtl://...``, 3D Slicer) connect to it; each gets the newest frame,
    never a backlog (:class:`~medstream.runtime.igtl.server.IgtlServer`). Frames keep their capture time as
    the message timestamp and carry ``geometry`` (their own, or the one given here) as spacing and matrix.

    Parameters
    ----------
    endpoint
        ``igtl://HOST:PORT`` (``device=NAME`` sets the device name, default ``Image_Reference`` as PLUS names it).
    geometry
        Placement for frames that have none (default: none, identity matrix).
    allow_insecure_remote
        Allow a non-loopback address (OpenIGTLink has no authentication or encryption).
    """

    def __init__(self, endpoint: str, *, geometry: ImageGeometry | None = None, allow_insecure_remote: bool = False,
                 what: str = "the OpenIGTLink frame sender") -> None:
        from urllib.parse import parse_qsl, urlsplit

        from medstream.runtime.igtl import messages as igtl
        from medstream.runtime.igtl.server import split_host_port

        igtl.pyigtl()
        params = dict(parse_qsl(urlsplit(endpoint).query))
        try:
            self.device = igtl.check_device_name(params.get("device", "Image_Reference"), "device")
        except ValueError as exc:
            raise ConfigError(f"{endpoint!r}: {exc}", "use e.g. device=Image_Reference") from None
        self.configured_endpoint = endpoint
        self.host, self.port = split_host_port(endpoint)
        self.geometry = geometry
        self.allow_insecure_remote = allow_insecure_remote
        self.what = what
        self.sent = 0
        self._server = None

    def open(self) -> IgtlFramePublisher:
        from medstream.runtime.igtl.server import IgtlServer

        self._server = IgtlServer(self.host, self.port, what=self.what, allow_insecure_remote=self.allow_insecure_remote)
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.flush(timeout=1.0)  # let the last frame leave
            server.close()

    def __enter__(self) -> IgtlFramePublisher:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def server(self):
        if self._server is None:
            raise SourceError(f"frame publisher {self.configured_endpoint} is not open", "call open() first")
        return self._server

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def dropped(self) -> int:
        return self.server.dropped

    def send(self, frame: Frame) -> None:
        """Send one frame as an IMAGE to every connected client (never blocks; newest only per client)."""
        import cv2

        from medstream.runtime.igtl import messages as igtl

        image = frame.image
        if image.ndim == 3 and frame.color_order in ("bgr", "bgra"):
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = np.ascontiguousarray(image[:, :, :3])
        self.server.publish([igtl.image_message(image, frame.geometry or self.geometry, self.device, frame.t_capture_ns)])
        self.sent += 1

    def wait_for_subscribers(self, n: int, timeout: float) -> None:
        """Block until ``n`` clients are connected; :class:`SourceError` after ``timeout`` seconds."""
        if n > 0 and not self.server.wait_for_clients(n, timeout):
            raise SourceError(f"only {self.server.client_count} of {n} OpenIGTLink clients connected within "
                              f"{timeout:.0f} s", "start the receiver (medstream run --source igtl://...) or lower "
                              "--wait-subscribers")


def open_frame_publisher(endpoint: str, *, security: CurveServer | None = None, allow_insecure_remote: bool = False,
                         geometry: ImageGeometry | None = None, what: str = "the frame publisher"):
    """The frame sender for ``endpoint``: OpenIGTLink for ``igtl://``, else ZeroMQ (not yet opened)."""
    if endpoint.startswith("igtl://"):
        if security is not None:
            raise ConfigError("OpenIGTLink has no encryption: CURVE keys cannot be used with an igtl:// endpoint",
                              "drop --curve-secret/--curve-allow, or tunnel the connection (docs/SECURITY.md)")
        return IgtlFramePublisher(endpoint, geometry=geometry, allow_insecure_remote=allow_insecure_remote, what=what)
    return FramePublisher(endpoint, security=security, allow_insecure_remote=allow_insecure_remote, what=what)


__all__ = ["DEFAULT_SPACING_MM", "FramePublisher", "IgtlFramePublisher", "open_frame_publisher", "phantom_geometry",
           "publish_source"]
