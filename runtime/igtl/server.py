"""An OpenIGTLink server that sends the newest messages to every client and never waits for one.

3D Slicer's OpenIGTLinkIF connects as a client to a server (PLUS, or medstream's ``igtl://`` sink). This
server accepts any number of clients (up to ``max_clients``); each has its own sender thread and a
one-slot queue. :meth:`IgtlServer.publish` puts a message set (e.g. label map IMAGE + STRING) into every
client's slot and returns at once: a client that has not taken the previous set yet loses it (counted in
its ``dropped``), so a slow or frozen Slicer costs itself old overlays, never the pipeline's time, and
never delays the other clients. A client whose socket accepts nothing for ``send_timeout_s`` is
disconnected (``stalled_disconnects``); it may connect again.

Whatever a client sends (OpenIGTLink queries, STATUS) is read and discarded, so its send buffer never
fills. No authentication and no encryption exist in OpenIGTLink: binding anything but loopback is
refused unless the operator allows it explicitly (:func:`check_igtl_bind`, docs/SECURITY.md).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from typing import Any

from medstream.runtime.errors import ConfigError
from medstream.runtime.security import is_loopback_endpoint

log = logging.getLogger("medstream.igtl")

#: Kernel send buffer per client: a few 1024x768 label maps; beyond it the slot takes over (latest only).
SEND_BUFFER_BYTES = 4 * 2**20


def split_host_port(uri: str, default_port: int = 18944) -> tuple[str, int]:
    """``igtl://HOST:PORT[?...]`` -> ``(host, port)``; a :class:`ConfigError` names a malformed address."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or (parts.port is None and parts.netloc.endswith(":")):
        raise ConfigError(f"{uri!r} is not igtl://HOST:PORT", "write e.g. igtl://127.0.0.1:18944")
    return host, default_port if port is None else port


def check_igtl_bind(host: str, port: int, *, allow_insecure_remote: bool, what: str) -> None:
    """Refuse to listen on a non-loopback address unless allowed: OpenIGTLink has no authentication or encryption."""
    endpoint = f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"
    if is_loopback_endpoint(endpoint):
        return
    if allow_insecure_remote:
        log.warning("%s listens on %s:%d over OpenIGTLink, which has no authentication or encryption "
                    "(--allow-insecure-remote is set): anyone on that network can connect and read patient images",
                    what, host, port)
        return
    raise ConfigError(
        f"refusing to listen with {what} on {host}:{port}: OpenIGTLink has no authentication or encryption, so "
        "anyone on that network could read the images and predictions",
        "listen on 127.0.0.1 and reach it through an SSH or WireGuard tunnel (docs/SECURITY.md, OpenIGTLink), or, on "
        "an isolated network only, pass --allow-insecure-remote (security.allow_insecure_remote: true)")


class _Client:
    """One connected client: its socket, its one-slot queue and its sender thread."""

    def __init__(self, server: IgtlServer, sock: socket.socket, addr: Any) -> None:
        self.server = server
        self.sock = sock
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.cond = threading.Condition()
        self.slot: list[bytes] | None = None
        self.closed = False
        self.busy = False  # sending the set it took from the slot
        self.sent = 0
        self.dropped = 0
        self.connected_at = time.time()
        self.thread = threading.Thread(target=self._loop, name=f"igtl-client-{self.peer}", daemon=True)

    def offer(self, messages: list[bytes]) -> bool:
        """Put ``messages`` in the slot; ``False`` when an unsent older set was replaced (counted)."""
        with self.cond:
            if self.closed:
                return True
            replaced = self.slot is not None
            if replaced:
                self.dropped += 1
            self.slot = messages
            self.cond.notify()
        return not replaced

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _loop(self) -> None:
        reason = "closed"
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.slot is not None or self.closed, timeout=0.2)
                    if self.closed:
                        return
                    messages, self.slot = self.slot, None
                    self.busy = messages is not None
                if messages:
                    for data in messages:
                        self.sock.sendall(data)
                    self.sent += 1
                self.busy = False
                if not self._discard_incoming():
                    reason = "disconnected"
                    return
        except TimeoutError:
            reason = f"accepted nothing for {self.server.send_timeout_s:g} s"
            self.server.stalled_disconnects += 1
        except OSError as exc:
            reason = f"connection failed: {exc.strerror or exc}"
        finally:
            with self.cond:
                if self.slot is not None:  # never sent: lost with the connection
                    self.dropped += 1
                    self.slot = None
                self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()
            self.server._forget(self, reason)

    def _discard_incoming(self) -> bool:
        """Read and drop what the client sent; ``False`` when it closed the connection."""
        while select.select([self.sock], [], [], 0)[0]:  # the socket has a send timeout: never recv without data
            if not self.sock.recv(65536):
                return False
        return True

    def describe(self) -> dict[str, Any]:
        return {"peer": self.peer, "sent": self.sent, "dropped": self.dropped,
                "connected_s": round(time.time() - self.connected_at, 1)}


class IgtlServer:
    """Listens on ``host:port`` and fans message sets out to every connected client, newest only.

    Parameters
    ----------
    host, port
        Where to listen (port 0: the OS picks one, see :attr:`port`).
    what
        How errors and logs name this server ("the OpenIGTLink overlay sink").
    allow_insecure_remote
        Allow a non-loopback address (see :func:`check_igtl_bind`).
    max_clients
        Clients served at once; more are refused (counted) so a connection flood cannot start unbounded threads.
    send_timeout_s
        A client that accepts no byte for this long is disconnected.
    """

    def __init__(self, host: str, port: int, *, what: str, allow_insecure_remote: bool = False, max_clients: int = 8,
                 send_timeout_s: float = 5.0) -> None:
        check_igtl_bind(host, port, allow_insecure_remote=allow_insecure_remote, what=what)
        self.what = what
        self.max_clients = max_clients
        self.send_timeout_s = send_timeout_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(max_clients)
        except OSError as exc:
            listener.close()
            raise ConfigError(f"cannot listen with {what} on {host}:{port}: {exc.strerror or exc}",
                              "another program (a PLUS server, another medstream?) uses this port: stop it or choose "
                              "another port") from None
        listener.settimeout(0.2)
        self._listener = listener
        self.host = host
        self.port = listener.getsockname()[1]
        self._lock = threading.Lock()
        self._clients: list[_Client] = []
        self._gone: list[dict[str, Any]] = []  # recently disconnected clients' counts (the last 16)
        self._stop = threading.Event()
        self.published = 0
        self.without_client = 0
        self.clients_total = 0
        self.refused_clients = 0
        self.stalled_disconnects = 0
        self.dropped_disconnected = 0
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"igtl-accept-{self.port}", daemon=True)
        self._accept_thread.start()

    @property
    def endpoint(self) -> str:
        return f"igtl://{self.host}:{self.port}"

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    @property
    def dropped(self) -> int:
        """Message sets lost by some client: replaced before it took them, or pending when it disconnected."""
        with self._lock:
            return sum(c.dropped for c in self._clients) + self.dropped_disconnected

    def publish(self, messages: list[bytes]) -> bool:
        """Hand ``messages`` to every client's slot (never waits); ``False`` when some client lost an older set."""
        with self._lock:
            clients = list(self._clients)
        self.published += 1
        if not clients:
            self.without_client += 1
            return True
        ok = True
        for c in clients:
            ok = c.offer(messages) and ok
        return ok

    def wait_for_clients(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` clients are connected; ``False`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.client_count < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until every client has taken its slot (before closing: the last frame should leave)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [c for c in self._clients if (c.slot is not None or c.busy) and not c.closed]
            if not pending:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            with self._lock:
                full = len(self._clients) >= self.max_clients
            if full:
                self.refused_clients += 1
                log.warning("%s: refused a client from %s: %d clients already connected", self.what, addr,
                            self.max_clients)
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            sock.settimeout(self.send_timeout_s)
            client = _Client(self, sock, addr)
            with self._lock:
                self._clients.append(client)
                self.clients_total += 1
            log.info("%s: client %s connected", self.what, client.peer)
            client.thread.start()

    def _forget(self, client: _Client, reason: str) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
            self.dropped_disconnected += client.dropped
            self._gone.append({**client.describe(), "reason": reason})
            del self._gone[:-16]
        if not self._stop.is_set():
            log.info("%s: client %s left (%s) after %d sent, %d dropped", self.what, client.peer, reason, client.sent,
                     client.dropped)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            clients = [c.describe() for c in self._clients]
            gone = list(self._gone)
        return {"listen": f"{self.host}:{self.port}", "clients": clients, "clients_total": self.clients_total,
                "recently_disconnected": gone, "published": self.published, "without_client": self.without_client,
                "dropped": self.dropped, "stalled_disconnects": self.stalled_disconnects,
                "refused_clients": self.refused_clients}

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            c.close()
        self._accept_thread.join(timeout=2)
        for c in clients:
            c.thread.join(timeout=2)

    def __enter__(self) -> IgtlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["IgtlServer", "check_igtl_bind", "split_host_port"]
