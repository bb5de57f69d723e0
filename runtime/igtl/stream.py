"""Cut an OpenIGTLink TCP byte stream into messages without ever blocking.

:class:`MessageReader` keeps the state of a message that is still arriving (a 1024x768 RGB IMAGE is 2.3 MB,
many TCP segments), so a caller can poll a non-blocking socket with a short timeout and go on with
other work. The header is checked before the body is allocated (:func:`~.messages.parse_header`): a body
larger than the limit is never allocated, and after a header that cannot be trusted the reader is
``broken``: the connection must be closed, because where the next message starts is unknown.
"""

from __future__ import annotations

import socket

from medstream.runtime.igtl.messages import DEFAULT_MAX_BODY_BYTES, HEADER_SIZE, Header, parse_header
from medstream.runtime.wire import WireError


class PeerClosed(Exception):  # noqa: N818 - a signal, not a failure
    """The peer closed the connection (an orderly end of the byte stream)."""


class MessageReader:
    """Reassembles messages from one connection; one reader per connection."""

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.max_body_bytes = max_body_bytes
        self._head = bytearray(HEADER_SIZE)
        self._head_got = 0
        self._header: Header | None = None
        self._body: bytearray | None = None
        self._body_got = 0
        self.broken = False
        self.bytes_received = 0

    @property
    def mid_message(self) -> bool:
        """Whether part of a message has arrived and the rest has not."""
        return self._head_got > 0

    def poll(self, sock: socket.socket) -> tuple[Header, bytearray] | None:
        """Read what the non-blocking ``sock`` has; a whole ``(header, body)`` or ``None`` when more must come.

        Raises :class:`PeerClosed` at the end of the stream, ``OSError`` when the connection failed, and
        :class:`WireError` for a header that cannot be trusted (the reader is then ``broken``).
        """
        if self.broken:
            raise WireError("bad_header", "the stream is out of step after a bad header; reconnect")
        while True:
            if self._header is None:
                view = memoryview(self._head)[self._head_got:]
                n = self._recv_into(sock, view)
                if n is None:
                    return None
                self._head_got += n
                if self._head_got < HEADER_SIZE:
                    continue
                try:
                    self._header = parse_header(self._head, self.max_body_bytes)
                except WireError:
                    self.broken = True
                    raise
                self._body = bytearray(self._header.body_size)
                self._body_got = 0
            assert self._body is not None
            if self._body_got < len(self._body):
                n = self._recv_into(sock, memoryview(self._body)[self._body_got:])
                if n is None:
                    return None
                self._body_got += n
                if self._body_got < len(self._body):
                    continue
            header, body = self._header, self._body
            self._header, self._body, self._head_got, self._body_got = None, None, 0, 0
            return header, body

    def _recv_into(self, sock: socket.socket, view: memoryview) -> int | None:
        try:
            n = sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return None
        except TimeoutError:
            return None
        if n == 0:
            raise PeerClosed()
        self.bytes_received += n
        return n


def read_message(sock: socket.socket, reader: MessageReader, timeout: float) -> tuple[Header, bytearray] | None:
    """One whole message from a non-blocking ``sock`` within ``timeout`` seconds, else ``None`` (helpers, tests)."""
    import select
    import time

    deadline = time.monotonic() + timeout
    while True:
        got = reader.poll(sock)
        if got is not None:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        select.select([sock], [], [], left)


__all__ = ["MessageReader", "PeerClosed", "read_message"]
