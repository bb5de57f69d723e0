"""The web view's HTTP and WebSocket server: Starlette on uvicorn (the ``[web]`` extra).

Routes (every one needs the access token, see :class:`TokenGate`):

* ``GET /``: the page (``static/index.html``), ``GET /app.js``, ``GET /style.css``: no build step, no
  CDN, nothing fetched from the internet;
* ``WS /ws``: per page, binary *view* messages (:mod:`medstream.runtime.web.encode`), latest-only
  through a :class:`~medstream.runtime.web.slots.ClientSlot`; JSON text messages both ways:
  ``hello`` and ``health`` (twice a second) from the server, ``ack`` (a view was drawn) and ``ping``
  (clock offset estimate; answered at once with ``pong`` and the server's clock) from the page.

Security (docs/WEB.md): loopback by default; a random token (``secrets.token_urlsafe``, 192 bits) is
printed at start, as Jupyter does, and required on every request and socket (query ``token=``, the
cookie the page sets, or ``Authorization: Bearer``); compared in constant time. A non-loopback bind
needs TLS (``--web-cert``/``--web-key``) or ``--web-allow-unencrypted-remote``. The page is served
with a strict Content-Security-Policy, ``Referrer-Policy: no-referrer`` (the token must not leak in a
Referer) and ``no-store``; a websocket from another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medstream.runtime.errors import ConfigError, require
from medstream.runtime.web.hub import ViewHub
from medstream.runtime.web.slots import ClientSlot

log = logging.getLogger("medstream.web")

STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8")}
HEALTH_INTERVAL_S = 0.5
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


@dataclass
class WebOptions:
    """What ``medstream view --web`` was asked for (see :func:`parse_bind`)."""

    host: str
    port: int
    certfile: str | None = None
    keyfile: str | None = None
    allow_unencrypted_remote: bool = False
    stale_ms: float = 1000.0
    status_stale_ms: float = 3000.0
    max_clients: int = 8
    window: int = 1
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def tls(self) -> bool:
        return bool(self.certfile)

    @property
    def cookie_name(self) -> str:
        # cookies are not port-scoped: two views on one host must not overwrite each other's token
        return f"medstream_web_{self.port}"


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:8080``) into its parts; a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--web {text!r} is not HOST:PORT", "write it as --web 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_web_bind(opts: WebOptions) -> None:
    """Refuse what would put patient images in clear text on a network, before anything binds."""
    if bool(opts.certfile) != bool(opts.keyfile):
        raise ConfigError("TLS needs both --web-cert and --web-key",
                          "give the certificate (PEM) and its private key (PEM), or neither")
    for what, path in (("certificate", opts.certfile), ("private key", opts.keyfile)):
        if path and not Path(path).is_file():
            raise ConfigError(f"TLS {what} file {path} does not exist", "give the path of a PEM file readable by this user")
    if opts.tls or is_loopback_host(opts.host):
        return
    if opts.allow_unencrypted_remote:
        log.warning("the web view binds %s:%d without TLS (--web-allow-unencrypted-remote): patient images and the "
                    "access token cross that network in clear text", opts.host, opts.port)
        return
    raise ConfigError(
        f"refusing to serve the web view on {opts.host}:{opts.port} without TLS: it is reachable from other hosts, "
        "and patient images and the access token would cross the network in clear text",
        "bind a loopback address (--web 127.0.0.1:8080; reach it over an SSH tunnel), or give --web-cert CERT.pem "
        "--web-key KEY.pem, or, on an isolated network only, add --web-allow-unencrypted-remote")


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves: a clear error when the port is taken, and port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind the web view to {host}:{port}: {exc.strerror}",
                          "another program uses this port (stop it or choose another --web HOST:PORT), "
                          "or the address is not one of this machine's") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _static(name: str) -> bytes:
    return resources.files("medstream.runtime.web").joinpath("static", name).read_bytes()


class TokenGate:
    """ASGI middleware: no token, nothing. HTTP gets 401; a websocket is closed before it is accepted
    (the browser sees HTTP 403). The token may come as ``?token=``, the page's cookie or a bearer header."""

    def __init__(self, app: Any, opts: WebOptions) -> None:
        self.app = app
        self.opts = opts

    def _token_of(self, scope: dict[str, Any]) -> str | None:
        from starlette.requests import HTTPConnection

        conn = HTTPConnection(scope)
        if "token" in conn.query_params:
            return conn.query_params["token"]
        auth = conn.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return conn.cookies.get(self.opts.cookie_name)

    def _same_origin(self, scope: dict[str, Any]) -> bool:
        from starlette.requests import HTTPConnection

        conn = HTTPConnection(scope)
        origin = conn.headers.get("origin")
        if origin is None:  # not a browser (tools, tests): the token alone decides
            return True
        return urlsplit(origin).netloc.lower() == conn.headers.get("host", "").lower()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = self._token_of(scope)
        ok = token is not None and hmac.compare_digest(token.encode(), self.opts.token.encode())
        if ok and scope["type"] == "websocket" and not self._same_origin(scope):
            ok = False
        if ok:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        log.warning("refused %s %s from %s: %s", scope["type"], scope.get("path"), client,
                    "missing token" if token is None else "wrong token or origin")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        from starlette.responses import PlainTextResponse

        response = PlainTextResponse("medstream web view: a valid access token is needed (the URL printed at start)\n",
                                     status_code=401, headers=SECURITY_HEADERS)
        await response(scope, receive, send)


def build_app(hub: ViewHub, opts: WebOptions, info: dict[str, Any]) -> Any:
    """The Starlette application, wrapped in the token gate."""
    require("starlette", "web", "medstream view --web")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    files = {path: (_static(name), mime) for path, (name, mime) in STATIC_FILES.items()}

    async def static(request: Request) -> Response:
        body, mime = files[request.url.path]
        response = Response(body, media_type=mime, headers=SECURITY_HEADERS)
        if request.url.path == "/" and "token" in request.query_params:
            response.set_cookie(opts.cookie_name, opts.token, httponly=True, samesite="strict", secure=opts.tls, path="/")
        return response

    async def ws_endpoint(websocket: WebSocket) -> None:
        if hub.client_count >= opts.max_clients:
            log.warning("refused a page: %d already connected (--web-max-clients)", opts.max_clients)
            await websocket.close(code=1013)
            return
        await websocket.accept()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        slot: ClientSlot[bytes] = ClientSlot(window=opts.window, notify=lambda: loop.call_soon_threadsafe(wake.set))
        client_id = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
        send_lock = asyncio.Lock()

        async def send_text(obj: dict[str, Any]) -> None:
            async with send_lock:
                await websocket.send_text(json.dumps(obj, separators=(",", ":")))

        async def receiver() -> None:
            while True:
                msg = await websocket.receive_text()
                try:
                    data = json.loads(msg)
                except ValueError:
                    continue
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "ack":
                    slot.ack()
                    wake.set()
                elif kind == "ping":
                    await send_text({"type": "pong", "t0": data.get("t0"), "server_ms": time.time() * 1e3})

        async def sender() -> None:
            next_health = 0.0
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=HEALTH_INTERVAL_S / 2)
                wake.clear()
                item = slot.take()
                if item is not None:
                    async with send_lock:
                        await websocket.send_bytes(item)
                if time.monotonic() >= next_health:
                    next_health = time.monotonic() + HEALTH_INTERVAL_S
                    await send_text({"type": "health", "server_ms": time.time() * 1e3, **hub.health(),
                                     "client": slot.counters()})

        hub.add_client(slot)
        log.info("page connected from %s (%d connected)", client_id, hub.client_count)
        try:
            await send_text({"type": "hello", "server_ms": time.time() * 1e3, "stale_ms": opts.stale_ms,
                             "status_stale_ms": opts.status_stale_ms, **info})
            tasks = [asyncio.create_task(receiver()), asyncio.create_task(sender())]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            for t in done:
                exc = t.exception()
                if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                    log.warning("page %s: %s", client_id, exc)
        except WebSocketDisconnect:
            pass
        finally:
            hub.remove_client(slot)
            c = slot.counters()
            log.info("page %s left: %d views sent, %d dropped for it (%s)", client_id, c["sent"], c["dropped_total"],
                     c["dropped"])

    routes = [Route(path, static) for path in STATIC_FILES] + [WebSocketRoute("/ws", ws_endpoint)]
    return TokenGate(Starlette(routes=routes), opts)


def serve(hub: ViewHub, opts: WebOptions, info: dict[str, Any], *, on_ready: Any = None) -> None:
    """Run the server until SIGINT/SIGTERM. ``on_ready(url_with_token)`` is called once it listens."""
    require("uvicorn", "web", "medstream view --web")
    require("websockets", "web", "medstream view --web (WebSocket support for uvicorn)")
    import uvicorn

    check_web_bind(opts)
    sock = bind_socket(opts.host, opts.port)
    opts.port = sock.getsockname()[1]
    app = build_app(hub, opts, info)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="websockets-sansio",
                            ws_per_message_deflate=False,  # JPEG and PNG do not compress further; deflate only costs
                            ws_max_size=64 * 1024,  # pages send small JSON only
                            ssl_certfile=opts.certfile, ssl_keyfile=opts.keyfile, timeout_graceful_shutdown=2,
                            server_header=False)
    server = uvicorn.Server(config)
    scheme = "https" if opts.tls else "http"
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    url = f"{scheme}://{host}:{opts.port}/?token={opts.token}"

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            on_ready(url)
        await task

    try:
        asyncio.run(main())
    finally:
        sock.close()
