"""Transport security seams: ZeroMQ CURVE encryption and authentication.

CURVE (ZeroMQ's Curve25519 handshake) encrypts a connection and proves that the server holds the secret
key that matches the public key the client was configured with. A frame stream on a hospital network
carries patient images, so anything that leaves the host should use it.

This module is deliberately small: it applies keys that the caller already has to a socket. Loading
keys from files, key rotation and the server side's allow-list (ZAP) belong to issue 8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medstream.runtime.errors import ConfigError

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


__all__ = ["CURVE_CLIENT_KEYS", "apply_curve_client"]
