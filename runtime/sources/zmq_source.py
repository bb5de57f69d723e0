"""``zmq+tcp://HOST:PORT`` and ``zmq+ipc://PATH``: frames published by another process.

The sender (a scanner bridge, ``medstream simulate``) binds a PUB socket and publishes wire-format
frame messages (:mod:`medstream.runtime.wire`, topic ``b"frame"``); this source is a SUB socket that
connects to it. Query parameters:

``bind=1``
    Bind instead of connect, for a sender that connects (``zmq+tcp://*:5555?bind=1``; port ``*`` or
    ``0`` picks a free one, see :attr:`ZmqSource.endpoint`).
``hwm=N``
    Receive queue length in messages (default 4). The pipeline keeps only the newest frame, so a long
    queue would only hold stale frames; when it is full ZeroMQ drops new frames at the sender, and the
    gap shows in ``seq``.
``heartbeat=S``
    Seconds between ZMTP heartbeats (default 1.0; ``0`` turns them off). A peer that does not answer
    for three intervals is disconnected and reconnected, so a pulled cable or a frozen sender host is
    noticed even when TCP would wait for minutes.
``id=NAME``
    Source id for logs and status (frames keep the ``source_id`` their sender put in them).
``max_width=N``, ``max_height=N``, ``max_bytes=N``
    Lower the wire limits for a known device (defaults: :class:`~medstream.runtime.wire.WireLimits`,
    sides 8192, 64 MiB of pixels per part); a value above the default is refused. ``max_bytes`` is also
    the socket's ``MAXMSGSIZE``.

Memory bounds (issue 14). libzmq hands a multipart message over only once *all* its parts have arrived,
and ``MAXMSGSIZE`` bounds each part, not the message or its part count, so a socket option alone cannot
bound what one message costs. Three layers do:

* ``MAXMSGSIZE`` = the largest part the limits allow: a larger part makes libzmq drop the peer before
  it allocates the part (the sender is then reported, see below);
* messages are received part by part: after ``max_parts`` parts the rest is received and released one
  part at a time, so this process never holds more than ``max_parts`` parts of a message;
* a memory guard: while this source waits, its resident memory may grow by at most
  ``(hwm + 1) x (2 x max_bytes + header) + 2 x max_bytes + 16 MiB`` (:attr:`ZmqSource.memory_budget_bytes`:
  the receive queue full of the largest valid frames, one frame's preprocessing temporaries, slack;
  784 MiB with the defaults); beyond that the socket is closed, which frees the
  message libzmq was assembling, and opened again (counted in ``oversized_messages``; logged). Measured
  figures: docs/SECURITY.md.

Connection loss is not an error here: ZeroMQ reconnects by itself, so :meth:`ZmqSource.read` keeps
returning ``None`` while the sender is gone and frames resume when it is back, without reopening. The
pipeline reports a stalled or lost sender from :attr:`ZmqSource.last_message_age_s` and
:attr:`ZmqSource.connected` (both also in :meth:`ZmqSource.describe`). The one exception: after a
protocol error (a message over the size limit, CURVE on one side only) libzmq drops the peer and never
reconnects, so :meth:`ZmqSource.read` then raises :class:`~medstream.runtime.errors.SourceError` and
the pipeline reopens the source with backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from medstream.runtime.errors import ConfigError, SourceError
from medstream.runtime.frame import Frame
from medstream.runtime.security import apply_curve_client
from medstream.runtime.sources.base import Source, SourceURI
from medstream.runtime.wire import DEFAULT_LIMITS, FRAME_TOPIC, WireError, WireLimits, decode_frame

log = logging.getLogger("medstream.source.zmq")

_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the security handshake failed (wrong CURVE server key?)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the peer uses another security mechanism or protocol (CURVE on one side only?)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the peer refused our CURVE keys",
}
_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED
                   | zmq.EVENT_CONNECT_RETRIED | sum(_HANDSHAKE_FAILURES))
#: After a disconnect ZeroMQ schedules a reconnect within ``reconnect_ivl`` (100 ms). If none is
#: scheduled within this many seconds, libzmq gave up on the peer for good: it does that after a
#: protocol error (a message over MAXMSGSIZE, a security mechanism mismatch).
_NO_RETRY_GRACE_S = 1.0
#: How often (seconds) the memory guard reads this process's resident memory while the source waits.
#: A hostile message arriving over loopback at ~2 GB/s can add ~40 MB between two looks.
_GUARD_PERIOD_S = 0.02
#: Growth allowed on top of a full receive queue: the worker's temporaries for one frame (preprocessing a
#: frame allocates about 2x its size, freed after) plus this much allocator slack.
_GUARD_SLACK_BYTES = 16 * 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    """This process's resident memory: /proc/self/statm where there is one (about 10 us), else psutil."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def _limits_from_uri(uri: SourceURI, limits: WireLimits) -> WireLimits:
    """``limits`` lowered by the URI's ``max_width=``/``max_height=``/``max_bytes=`` (never raised)."""
    changes = {}
    for param, field in (("max_width", "max_width"), ("max_height", "max_height"), ("max_bytes", "max_payload_bytes")):
        if param not in uri.params:
            continue
        value, ceiling = uri.param(param, 0, int), getattr(limits, field)
        if not 1 <= value <= ceiling:
            raise ConfigError(f"source {uri.raw!r}: {param}={value} is outside 1..{ceiling}",
                              f"{param}= can only lower the wire limit (at most {ceiling}); see docs/WIRE.md")
        changes[field] = value
    return dataclasses.replace(limits, **changes) if changes else limits


class ZmqSource(Source):
    """A SUB socket receiving wire-format frames.

    Parameters
    ----------
    uri
        ``zmq+tcp://HOST:PORT`` or ``zmq+ipc://PATH`` with the query parameters in the module docstring.
    source_id
        Overrides ``id=``.
    curve
        Optional CURVE client keys (see :func:`medstream.runtime.security.apply_curve_client`).
    limits
        Wire limits applied to every message (the URI's ``max_*=`` lower them further); their largest
        part size also becomes the socket's ``MAXMSGSIZE``, so an oversized part is refused by ZeroMQ
        before it is allocated.
    """

    def __init__(self, uri: SourceURI, source_id: str | None = None, *,
                 curve: Mapping[str, Any] | None = None, limits: WireLimits = DEFAULT_LIMITS) -> None:
        # The scheme ("zmq+tcp") is not a valid wire source id ('+'), so the default is "zmq".
        super().__init__(uri, source_id or uri.params.get("id") or "zmq")
        transport = uri.scheme.split("+", 1)[1]
        location = f"{uri.netloc}{uri.path}"
        if transport == "tcp":
            host, _, port = uri.netloc.rpartition(":")
            if not host or not (port.isdigit() or port == "*"):
                raise ConfigError(f"source {uri.raw!r} has no HOST:PORT",
                                  "write it as zmq+tcp://HOST:PORT, e.g. zmq+tcp://127.0.0.1:5555")
        elif not location:
            raise ConfigError(f"source {uri.raw!r} has no socket path",
                              "write it as zmq+ipc:///run/medstream/frames.sock")
        self.configured_endpoint = f"{transport}://{location}"
        self.bind = uri.param("bind", False, bool)
        self.hwm = uri.param("hwm", 4, int)
        self.heartbeat_s = uri.param("heartbeat", 1.0, float)
        if self.hwm < 1:
            raise ConfigError(f"source {uri.raw!r}: hwm must be >= 1", "use hwm=2..8 (messages)")
        if self.heartbeat_s < 0:
            raise ConfigError(f"source {uri.raw!r}: heartbeat must be >= 0 seconds", "use heartbeat=1 (0 = off)")
        self.curve = curve
        self.limits = _limits_from_uri(uri, limits)
        #: Growth of resident memory allowed while waiting: a receive queue full of the largest valid frames.
        payload = self.limits.max_payload_bytes
        self.memory_budget_bytes = ((self.hwm + 1) * (2 * payload + self.limits.max_header_bytes)
                                    + 2 * payload + _GUARD_SLACK_BYTES)
        self._rss_base = 0
        self._next_guard = 0.0
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller: zmq.Poller | None = None
        self._last_message: float | None = None
        self._opened_at: float | None = None
        self._peers = 0
        self._failed_handshakes = 0
        self._dropped_at: float | None = None
        self.last_handshake_error: str | None = None
        self.messages_received = 0
        self.invalid_messages = 0
        self.disconnects = 0
        #: Messages refused for their size: over ``max_parts`` parts, or cut off by the memory guard.
        self.oversized_messages = 0
        #: Connections whose security handshake failed (a sender with other CURVE keys, none, or refusing ours).
        self.peers_refused = 0

    # ------------------------------------------------------------------------------------ lifecycle
    def listen_endpoint(self) -> str | None:
        return self.configured_endpoint if self.bind else None

    def _open(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        try:
            sock.linger = 0
            sock.rcvhwm = self.hwm
            sock.maxmsgsize = self.limits.max_part_bytes
            sock.reconnect_ivl = 100
            sock.reconnect_ivl_max = 2000
            if self.heartbeat_s > 0:
                ivl = max(1, int(self.heartbeat_s * 1000))
                sock.heartbeat_ivl = ivl
                sock.heartbeat_timeout = 3 * ivl
                sock.heartbeat_ttl = 3 * ivl
            apply_curve_client(sock, self.curve)
            sock.setsockopt(zmq.SUBSCRIBE, FRAME_TOPIC)
            monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            if self.bind:
                sock.bind(self.configured_endpoint)
            else:
                sock.connect(self.configured_endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            verb = "bind" if self.bind else "connect"
            hint = ("another process may already use this address; pick another port or stop it"
                    if self.bind else "check the address; a sender must bind it (e.g. medstream simulate)")
            raise SourceError(f"cannot {verb} SUB socket to {self.configured_endpoint}: {exc}", hint) from None
        self._socket = sock
        self._monitor = monitor
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)
        self._opened_at = time.perf_counter()
        self._last_message = None
        self._peers = self._failed_handshakes = 0
        self._dropped_at = None
        self._rss_base = _rss_bytes()
        self._next_guard = 0.0

    def _close(self) -> None:
        sock, monitor = self._socket, self._monitor
        self._socket = self._monitor = self._poller = None
        if sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            sock.close(linger=0)
        if monitor is not None:
            monitor.close(linger=0)
        self._peers = 0

    # ----------------------------------------------------------------------------------------- read
    def read(self, timeout: float) -> Frame | None:
        """The next frame, or ``None`` after ``timeout`` seconds without one.

        Raises
        ------
        WireError
            The message was malformed (the reason is its counter key); the next read goes on.
        SourceError
            The source is not open or its socket failed.
        """
        if self._socket is None or self._poller is None:
            raise SourceError(f"source {self.uri.raw!r} is not open", "call open() first")
        deadline = time.perf_counter() + max(timeout, 0.0)
        while True:
            now = time.perf_counter()
            if now >= self._next_guard:
                self._guard_memory(now)
            remaining_ms = max(0, math.ceil((deadline - now) * 1000))
            try:  # in slices, so the memory guard looks while a large message is still arriving
                ready = dict(self._poller.poll(min(remaining_ms, math.ceil(_GUARD_PERIOD_S * 1000))))
            except zmq.ZMQError as exc:
                raise SourceError(f"polling {self.configured_endpoint} failed: {exc}", "reopen the source") from None
            if self._monitor in ready:
                self._drain_monitor()
            if self._socket in ready:
                try:
                    parts = self._receive_parts()
                except zmq.Again:
                    continue
                except zmq.ZMQError as exc:
                    raise SourceError(f"receiving from {self.configured_endpoint} failed: {exc}",
                                      "reopen the source") from None
                t_receive_ns = time.perf_counter_ns()
                self._last_message = time.perf_counter()
                self.messages_received += 1
                try:
                    frame = decode_frame(parts, self.limits)
                except WireError:
                    self.invalid_messages += 1
                    raise
                frame.t_receive_ns = t_receive_ns
                return frame
            if not ready and remaining_ms == 0:
                self._check_given_up()
                return None

    def _receive_parts(self) -> list[Any]:
        """One message, part by part: parts past ``max_parts`` are received and released at once, never held.

        Raises ``zmq.Again`` when no message waits, and :class:`WireError` (``bad_parts``, after the whole
        message was taken off the socket) when it had too many parts.
        """
        assert self._socket is not None
        sock, max_parts = self._socket, self.limits.max_parts
        part = sock.recv(zmq.NOBLOCK, copy=False)
        parts = [part]
        extra = 0
        while part.more:  # libzmq delivers a message whole: the remaining parts are already here
            part = sock.recv(copy=False)
            if len(parts) < max_parts:
                parts.append(part)
            else:
                extra += 1
        if extra:
            parts.clear()
            self._last_message = time.perf_counter()
            self.messages_received += 1
            self.invalid_messages += 1
            self.oversized_messages += 1
            raise WireError("bad_parts", f"a frame message has 3 or 4 parts [topic, header, pixels, truth?], got "
                                         f"{max_parts + extra} (the parts past {max_parts} were discarded unread)")
        return parts

    def _guard_memory(self, now: float) -> None:
        """Close and reopen the socket if resident memory grew past :attr:`memory_budget_bytes` since it opened.

        libzmq assembles a multipart message in memory before handing over any part, and nothing in
        libzmq bounds the number of parts: closing the socket is the only way to free a message that is
        still arriving. A valid stream stays far below the budget (the queue holds at most ``hwm`` frames).
        """
        self._next_guard = now + _GUARD_PERIOD_S
        rss = _rss_bytes()
        self._rss_base = min(self._rss_base, rss)  # follows memory given back (e.g. after the last trip)
        grown = rss - self._rss_base
        if grown <= self.memory_budget_bytes:
            return
        self.oversized_messages += 1
        log.warning("frame source %s: memory grew by %d MiB while waiting (budget %d MiB): a sender is streaming a "
                    "message larger than any valid frame; closing and reopening the socket to free it",
                    self.configured_endpoint, grown >> 20, self.memory_budget_bytes >> 20)
        self._close()
        # libzmq frees the socket's pipes (and the half-received message) on its I/O thread, soon after close;
        # the new socket measures its base after that. Memory the allocator keeps stays in the base: it is
        # reused before resident memory grows again.
        time.sleep(0.05)
        for attempt in range(50):  # a bound port is released asynchronously after close
            try:
                self._open()
                return
            except SourceError:
                if attempt == 49:
                    raise  # the receiver reopens with backoff
                time.sleep(0.01)

    def _check_given_up(self) -> None:
        """Raise :class:`SourceError` if libzmq dropped the sender and will not reconnect by itself."""
        if self._dropped_at is not None and time.perf_counter() - self._dropped_at > _NO_RETRY_GRACE_S:
            self._dropped_at = None
            why = self.last_handshake_error or "the sender broke the wire protocol (e.g. a message larger than the limit)"
            raise SourceError(f"the connection to {self.configured_endpoint} was dropped and ZeroMQ will not retry: {why}",
                              "check the sender's settings (keys, frame size limits); the pipeline reopens the source")

    def _drain_monitor(self) -> None:
        """Track connected peers from socket events (handshake done, disconnected)."""
        assert self._monitor is not None
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peers += 1
                self._dropped_at = None
                self.last_handshake_error = None
            elif kind in _HANDSHAKE_FAILURES:
                self._failed_handshakes += 1
                self.peers_refused += 1
                self.last_handshake_error = _HANDSHAKE_FAILURES[kind]
            elif kind == zmq.EVENT_DISCONNECTED:
                if self._failed_handshakes:  # the end of a connection that never completed its handshake
                    self._failed_handshakes -= 1
                else:
                    self._peers = max(0, self._peers - 1)
                    self.disconnects += 1
                if not self.bind:
                    self._dropped_at = time.perf_counter()
            elif kind in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECTED):
                self._dropped_at = None

    # --------------------------------------------------------------------------------------- health
    @property
    def endpoint(self) -> str:
        """The address in use: with ``bind=1`` and port ``*``/``0``, the port the OS picked."""
        if self._socket is not None and self.bind:
            last = self._socket.last_endpoint
            return last.decode() if isinstance(last, bytes) else str(last)
        return self.configured_endpoint

    @property
    def last_message_age_s(self) -> float | None:
        """Seconds since the last message (valid or not) arrived; ``None`` if none since :meth:`open`.

        The pipeline compares this with a few frame intervals to report a stalled sender; use
        :attr:`seconds_open` to tell "never received" from "just opened".
        """
        if self._last_message is None:
            return None
        return time.perf_counter() - self._last_message

    @property
    def seconds_open(self) -> float | None:
        """Seconds since :meth:`open`, ``None`` when closed."""
        return None if self._opened_at is None or not self.is_open else time.perf_counter() - self._opened_at

    @property
    def peer_count(self) -> int:
        """Peers with a completed handshake, as last seen by :meth:`read` (safe to read from any thread:
        unlike :attr:`connected` it does not touch the socket, which belongs to the reading thread)."""
        return self._peers

    @property
    def connected(self) -> bool:
        """Whether at least one peer has completed the ZMTP handshake and not disconnected since.

        Updated while :meth:`read` runs (socket events are read there). With heartbeats on, a silent
        dead peer turns this ``False`` after about three heartbeat intervals. A CURVE key mismatch keeps
        it ``False`` (the handshake never succeeds).
        """
        if self._monitor is not None:
            self._drain_monitor()
        return self._peers > 0

    def describe(self) -> dict[str, Any]:
        age = self.last_message_age_s
        return {
            **super().describe(),
            "endpoint": self.endpoint,
            "mode": "bind" if self.bind else "connect",
            "connected": self.connected if self.is_open else False,
            "last_message_age_s": None if age is None else round(age, 3),
            "messages_received": self.messages_received,
            "invalid_messages": self.invalid_messages,
            "disconnects": self.disconnects,
            "oversized_messages": self.oversized_messages,
            "peers_refused": self.peers_refused,
            "last_handshake_error": self.last_handshake_error,
            "limits": {"max_width": self.limits.max_width, "max_height": self.limits.max_height,
                       "max_bytes": self.limits.max_payload_bytes, "max_parts": self.limits.max_parts},
            "memory_budget_mib": round(self.memory_budget_bytes / 2**20, 1),
            "hwm": self.hwm,
            "heartbeat_s": self.heartbeat_s,
            "curve": self.curve is not None,
        }


__all__ = ["ZmqSource"]
