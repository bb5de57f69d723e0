"""Transport security seams: ZeroMQ CURVE encryption and authentication.

CURVE (ZeroMQ's Curve25519 handshake) encrypts a connection and proves that the server holds the secret
key that matches the public key the client was configured with. A frame stream on a hospital network
carries patient images, so anything that leaves the host should use it.

What is here:

* :func:`apply_curve_client` applies a client key pair and the server's public key to a socket;
* :func:`generate_keypair` / :func:`load_keypair` / :func:`load_public_key` write and read the key files
  that ``medstream keys generate`` makes (pyzmq's certificate format, ``NAME.key`` public and
  ``NAME.key_secret`` secret, the latter readable by its owner only);
* :class:`CurveServer` makes a socket a CURVE server and authenticates every client against an
  allow-list of public keys with a ZAP handler (pyzmq's ``ThreadAuthenticator``, one per context);
  a client whose key is not on the list completes no handshake, so it can neither receive nor send;
* :func:`is_loopback_endpoint` / :func:`check_bind_allowed`: medstream binds loopback addresses by
  default and refuses to bind anything else without CURVE unless told so explicitly.

See docs/SECURITY.md for the set-up, step by step.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medstream.runtime.errors import ConfigError

log = logging.getLogger("medstream.security")

#: The keys of the ``curve`` mapping :func:`apply_curve_client` expects.
CURVE_CLIENT_KEYS = ("server_public_key", "public_key", "secret_key")


def _key_bytes(value: Any, name: str) -> bytes:
    """A CURVE key as the 40-character Z85 text pyzmq wants (32 raw bytes are converted)."""
    from zmq.utils import z85

    if isinstance(value, str):
        value = value.strip().encode("ascii", errors="replace")
    if not isinstance(value, bytes | bytearray):
        raise ConfigError(f"CURVE key '{name}' must be Z85 text or 32 raw bytes, got {type(value).__name__}",
                          "give keys as printed by `python -c 'import zmq; print(zmq.curve_keypair())'`")
    value = bytes(value)
    if len(value) == 32:
        return z85.encode(value)
    if len(value) != 40:
        raise ConfigError(f"CURVE key '{name}' has {len(value)} characters; a Z85 key has 40 (or 32 raw bytes)",
                          "copy the whole key (public keys and secret keys are both 40 Z85 characters)")
    try:
        z85.decode(value)
    except (ValueError, KeyError, IndexError):
        raise ConfigError(f"CURVE key '{name}' is not valid Z85 text", "copy the key again without changes") from None
    return value


def apply_curve_client(socket: Any, curve: Mapping[str, Any] | None) -> bool:
    """Make ``socket`` a CURVE client of a server whose public key is known.

    Must be called before the socket binds or connects. The CURVE role is independent of the
    direction: a SUB that binds can still be the client.

    Parameters
    ----------
    socket
        A ``zmq.Socket`` (any type).
    curve
        ``None`` (no encryption: nothing is changed) or a mapping with ``server_public_key`` (the
        publisher's public key), ``public_key`` and ``secret_key`` (this client's key pair), each as Z85
        text (40 characters) or 32 raw bytes.

    Returns
    -------
    bool
        Whether CURVE was applied.

    Raises
    ------
    ConfigError
        A key is missing or malformed, or this libzmq was built without CURVE support.
    """
    if curve is None:
        return False
    import zmq

    missing = [k for k in CURVE_CLIENT_KEYS if not curve.get(k)]
    if missing:
        raise ConfigError(f"CURVE settings lack {', '.join(missing)}",
                          f"give all of {', '.join(CURVE_CLIENT_KEYS)} (or no CURVE settings at all)")
    if not zmq.has("curve"):
        raise ConfigError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE encryption",
                          "install pyzmq from PyPI (its wheels bundle a libzmq with CURVE) or a libzmq built with libsodium")
    socket.curve_serverkey = _key_bytes(curve["server_public_key"], "server_public_key")
    socket.curve_publickey = _key_bytes(curve["public_key"], "public_key")
    socket.curve_secretkey = _key_bytes(curve["secret_key"], "secret_key")
    return True


# ------------------------------------------------------------------------------------------ key files
def generate_keypair(out_dir: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new CURVE key pair: ``out_dir/NAME.key`` (public) and ``out_dir/NAME.key_secret``.

    The secret file is made readable by its owner only (0600). Existing files are never replaced
    unless ``overwrite`` is true: replacing a deployed key locks every peer out.
    """
    import zmq.auth

    if not name or not all(ch.isalnum() or ch in "-_." for ch in name) or name.startswith("."):
        raise ConfigError(f"key name {name!r} is not a plain file name",
                          "use letters, digits, '-', '_' and '.', e.g. --name overlay-server")
    out = Path(out_dir)
    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise ConfigError(f"key files for {name!r} already exist in {out}",
                          "choose another --name, or remove the old files first if you really mean to replace them")
    out.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        pub, sec = zmq.auth.create_certificates(out, name)
    finally:
        os.umask(old_umask)
    os.chmod(sec, stat.S_IRUSR | stat.S_IWUSR)
    os.chmod(pub, 0o644)
    return Path(pub), Path(sec)


def _is_file(p: Path, what: str) -> bool:
    """``p.is_file()``, but a path the OS refuses (a 300-character name: errno 36) is a ConfigError naming it."""
    try:
        return p.is_file()
    except OSError as exc:
        raise ConfigError(f"{what} path {str(p)[:80]}... cannot be used: {exc.strerror} ({len(p.name)} characters)",
                          "check the key option: it should name a NAME.key or NAME.key_secret file") from None


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a ``.key_secret`` file; a clear error names the file otherwise."""
    import zmq.auth

    p = Path(path)
    if not _is_file(p, "CURVE secret key file"):
        raise ConfigError(f"CURVE secret key file {p} does not exist",
                          "create one with: medstream keys generate --out DIR --name NAME (use the NAME.key_secret file)")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except Exception as exc:
        raise ConfigError(f"CURVE key file {p} cannot be read: {exc}",
                          "give the NAME.key_secret file written by medstream keys generate") from None
    if not secret:
        raise ConfigError(f"CURVE key file {p} holds only a public key",
                          "give the NAME.key_secret file (the NAME.key file is the public half, for peers)")
    return public, secret


def load_public_key(value: str | Path) -> bytes:
    """A peer's public key from a ``.key``/``.key_secret`` file, or given directly as 40 Z85 characters."""
    import zmq.auth

    text = str(value).strip()
    p = Path(text)
    if len(text) == 40 and not _is_file(p, "CURVE public key"):
        return _key_bytes(text, "public key")
    if not _is_file(p, "CURVE public key"):
        raise ConfigError(f"CURVE public key {text!r} is neither a key file nor 40 Z85 characters",
                          "give the peer's NAME.key file (written by medstream keys generate)")
    try:
        public, _ = zmq.auth.load_certificate(p)
    except Exception as exc:
        raise ConfigError(f"CURVE public key file {p} cannot be read: {exc}",
                          "give the NAME.key file written by medstream keys generate") from None
    return public


def load_allowed_keys(directory: str | Path | None = None, keys: Iterable[str | Path] = ()) -> set[bytes]:
    """The allow-list: every public key in ``directory/*.key`` plus each of ``keys`` (files or Z85)."""
    import zmq.auth

    allowed: set[bytes] = set()
    if directory is not None:
        d = Path(directory)
        if not d.is_dir():
            raise ConfigError(f"allowed-clients directory {d} does not exist",
                              "create it and copy each permitted client's NAME.key (public) file into it")
        for f in sorted(d.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(f)
            except Exception as exc:
                raise ConfigError(f"public key file {f} in the allowed-clients directory cannot be read: {exc}",
                                  "remove it or replace it with a NAME.key file from medstream keys generate") from None
            allowed.add(bytes(public))
    for k in keys:
        allowed.add(load_public_key(k))
    return allowed


# ----------------------------------------------------------------------------------------- server side
def _counting_authenticator() -> Any:
    """pyzmq's ``ThreadAuthenticator`` that also counts, per ZAP domain, the CURVE clients it refused.

    A refused peer completes no handshake and so never shows as a message; without this count an
    unauthenticated peer is invisible (issue 14: it showed only as ``stalled``).
    """
    from zmq.auth.thread import ThreadAuthenticator

    class CountingAuthenticator(ThreadAuthenticator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.refused: dict[str, int] = {}

        def _authenticate_curve(self, domain: str, client_key: bytes) -> Any:
            # pyzmq >= 26 made this a coroutine (its caller awaits it); older pyzmq returns the tuple.
            result = super()._authenticate_curve(domain, client_key)
            if inspect.isawaitable(result):
                async def counted() -> tuple[bool, bytes]:
                    return self._count(domain, await result)
                return counted()
            return self._count(domain, result)

        def _count(self, domain: str, result: tuple[bool, bytes]) -> tuple[bool, bytes]:
            allowed, reason = result
            if not allowed:  # runs on the authenticator's thread; an int update under the GIL
                n = self.refused[domain] = self.refused.get(domain, 0) + 1
                if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th...: a peer retrying every 100 ms must not flood the log
                    log.warning("refused an unauthenticated CURVE peer on %s (%d so far): %s", domain, n,
                                reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason)
            return allowed, reason

    return CountingAuthenticator


class _ZapRegistry:
    """One ZAP handler (``ThreadAuthenticator``) per ZeroMQ context; each server socket has a domain."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._auth: dict[int, Any] = {}
        self._domains: dict[int, set[str]] = {}

    def refused(self, context: Any, domain: str) -> int:
        """CURVE clients refused in ``domain`` on ``context`` since its handler started."""
        auth = self._auth.get(id(context))
        return 0 if auth is None else int(getattr(auth, "refused", {}).get(domain, 0))

    def add(self, context: Any, domain: str, allowed: set[bytes]) -> None:
        with self._lock:
            key = id(context)
            auth = self._auth.get(key)
            if auth is None:
                auth = _start_authenticator(context, _counting_authenticator())
                self._auth[key] = auth
                self._domains[key] = set()
            # Authenticator.certs maps domain -> {public key: True}; configure_curve would read a directory.
            auth.certs[domain] = {k: True for k in allowed}
            self._domains[key].add(domain)

    def remove(self, context: Any, domain: str) -> None:
        with self._lock:
            key = id(context)
            auth = self._auth.get(key)
            if auth is None:
                return
            auth.certs.pop(domain, None)
            self._domains[key].discard(domain)
            if not self._domains[key]:
                auth.stop()
                del self._auth[key], self._domains[key]


def _start_authenticator(context: Any, factory: Any) -> Any:
    """Start a ZAP handler, retrying briefly while a just-stopped one still holds the ZAP endpoint
    (``inproc://zeromq.zap.01`` is released asynchronously when a handler stops)."""
    import time

    import zmq

    for attempt in range(50):
        auth = factory(context, log=logging.getLogger("medstream.security.zap"))
        try:
            auth.start()
            return auth
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or attempt == 49:
                raise
            time.sleep(0.02)
    raise AssertionError("unreachable")


_ZAP = _ZapRegistry()


class CurveServer:
    """Makes sockets CURVE servers that admit only allow-listed clients (``Publisher(security=...)``).

    Parameters
    ----------
    public_key, secret_key
        This server's key pair (Z85), e.g. from :func:`load_keypair`.
    allowed_clients
        Public keys (Z85) of the clients that may connect. Required: CURVE without an allow-list
        encrypts but lets anyone with any key pair subscribe to patient images.
    domain
        ZAP domain of this server's sockets (one allow-list per domain).
    """

    def __init__(self, public_key: bytes, secret_key: bytes, allowed_clients: set[bytes], *,
                 domain: str = "medstream") -> None:
        if not allowed_clients:
            raise ConfigError("CURVE is on but no client public key is allowed",
                              "put each permitted client's NAME.key file in the allowed-clients directory "
                              "(security.allowed_clients_dir / --curve-allow DIR)")
        self.public_key = _key_bytes(public_key, "server public key")
        self.secret_key = _key_bytes(secret_key, "server secret key")
        self.allowed = {_key_bytes(k, "allowed client key") for k in allowed_clients}
        self.domain = domain
        self._contexts: list[Any] = []

    @classmethod
    def from_files(cls, secret_file: str | Path, allowed_dir: str | Path | None = None,
                   allowed_keys: Iterable[str | Path] = (), *, domain: str = "medstream") -> CurveServer:
        public, secret = load_keypair(secret_file)
        return cls(public, secret, load_allowed_keys(allowed_dir, allowed_keys), domain=domain)

    def apply_server(self, socket: Any) -> None:
        """Make ``socket`` a CURVE server with ZAP authentication; call before ``bind``."""
        import zmq

        if not zmq.has("curve"):
            raise ConfigError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE encryption",
                              "install pyzmq from PyPI (its wheels bundle a libzmq with CURVE)")
        ctx = socket.context
        _ZAP.add(ctx, self.domain, self.allowed)
        if ctx not in self._contexts:
            self._contexts.append(ctx)
        socket.zap_domain = self.domain.encode()
        socket.curve_secretkey = self.secret_key
        socket.curve_publickey = self.public_key
        socket.curve_server = True

    @property
    def refused(self) -> int:
        """Clients this server's ZAP handler refused (key not on the allow-list); the status carries it."""
        return sum(_ZAP.refused(ctx, self.domain) for ctx in self._contexts)

    def close(self) -> None:
        """Stop the ZAP handler once no server uses it (after the sockets are closed)."""
        for ctx in self._contexts:
            _ZAP.remove(ctx, self.domain)
        self._contexts.clear()


def client_curve(secret_file: str | Path, server_key: str | Path) -> dict[str, bytes]:
    """The ``curve`` mapping :func:`apply_curve_client` and ``ZmqSource(curve=...)`` take, from files."""
    public, secret = load_keypair(secret_file)
    return {"server_public_key": load_public_key(server_key), "public_key": public, "secret_key": secret}


# -------------------------------------------------------------------------------------------- binding
def endpoint_host(endpoint: str) -> str | None:
    """The host part of a ``tcp://HOST:PORT`` endpoint (brackets of IPv6 removed); ``None`` for ipc/inproc."""
    if not endpoint.startswith("tcp://"):
        return None
    rest = endpoint[len("tcp://"):]
    host = rest.rpartition(":")[0] if ":" in rest else rest
    if ";" in host:  # "src;dst" form: the part after ';' is where we bind/connect
        host = host.split(";", 1)[1]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether binding ``endpoint`` exposes nothing beyond this host (ipc, inproc, 127.0.0.0/8, ::1, localhost).

    ``*``, ``0.0.0.0``, interface names and any other address count as remote.
    """
    host = endpoint_host(endpoint)
    if host is None:
        return endpoint.startswith(("ipc://", "inproc://"))
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_allowed(endpoint: str, *, encrypted: bool, allow_insecure_remote: bool, what: str) -> None:
    """Refuse to bind a non-loopback ``endpoint`` without CURVE unless explicitly allowed.

    Raises
    ------
    ConfigError
        Naming the endpoint and both ways out (CURVE keys, or the explicit opt-out).
    """
    if encrypted or is_loopback_endpoint(endpoint):
        return
    if allow_insecure_remote:
        log.warning("%s binds %s without CURVE encryption (security.allow_insecure_remote is set): anyone on that "
                    "network can connect", what, endpoint)
        return
    raise ConfigError(
        f"refusing to bind {what} to {endpoint} without encryption: it is reachable from other hosts and would "
        "expose patient images to anyone on that network",
        "bind a loopback address (tcp://127.0.0.1:PORT), or turn CURVE on (security.curve with keys, see "
        "docs/SECURITY.md; --curve-secret/--curve-allow), or, on an isolated network only, set "
        "security.allow_insecure_remote: true (--allow-insecure-remote)")


__all__ = ["CURVE_CLIENT_KEYS", "CurveServer", "apply_curve_client", "check_bind_allowed", "client_curve",
           "endpoint_host", "generate_keypair", "is_loopback_endpoint", "load_allowed_keys", "load_keypair",
           "load_public_key"]
