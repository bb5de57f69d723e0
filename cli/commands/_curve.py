"""Client-side CURVE options shared by the commands that subscribe (view, status, record)."""

from __future__ import annotations

from typing import Any


def add_client_curve_arguments(p) -> None:
    g = p.add_argument_group("transport security (docs/SECURITY.md)")
    g.add_argument("--curve-client-secret", help="our key pair (NAME.key_secret from 'medstream keys generate')")
    g.add_argument("--curve-server-key", help="the publisher's public key (NAME.key file or 40 Z85 characters)")


def client_curve_from_args(args) -> dict[str, Any] | None:
    """The CURVE client settings, or ``None`` for a plain socket; both options or neither."""
    from medstream.runtime.errors import ConfigError
    from medstream.runtime.security import client_curve

    secret, server = getattr(args, "curve_client_secret", None), getattr(args, "curve_server_key", None)
    if not secret and not server:
        return None
    if not (secret and server):
        raise ConfigError("CURVE needs both --curve-client-secret and --curve-server-key",
                          "give our key pair and the publisher's public key (docs/SECURITY.md)")
    return client_curve(secret, server)
