"""The source interface: where frames come from.

A source is opened from a URI (``synthetic://ultrasound?fps=30``, ``zmq+tcp://127.0.0.1:5555``,
``file:///data/clip.mp4``, ``v4l2:///dev/video0``...). The pipeline's receiver thread calls
:meth:`Source.read` in a loop with a short timeout, so a source that stalls never hangs anything:
``read`` returns ``None`` when nothing came in time, raises :class:`~medstream.runtime.errors.SourceEnded`
when a finite source is done, raises :class:`~medstream.runtime.errors.SourceError` when the
connection or device is lost (the receiver closes it and reopens with backoff), and raises
:class:`~medstream.runtime.wire.WireError` for a message that arrived malformed (counted as
received and dropped ``invalid``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from medstream.runtime.errors import ConfigError
from medstream.runtime.frame import Frame


@dataclass(frozen=True)
class SourceURI:
    """A parsed source URI: ``scheme://netloc/path?key=value``."""

    raw: str
    scheme: str
    netloc: str
    path: str
    params: dict[str, str] = field(default_factory=dict)

    def param(self, key: str, default: Any, cast: type = str) -> Any:
        """A query parameter cast to ``cast``; a bad value is a :class:`ConfigError` naming it."""
        if key not in self.params:
            return default
        value = self.params[key]
        try:
            if cast is bool:
                return value.lower() in ("1", "true", "yes", "on")
            return cast(value)
        except ValueError:
            raise ConfigError(f"source {self.raw!r}: parameter {key}={value!r} is not a valid {cast.__name__}",
                              f"fix '{key}=' in the source URI") from None


def parse_uri(uri: str) -> SourceURI:
    """Split a source URI. A bare path (no ``scheme://``) means ``file://``."""
    if "://" not in uri:
        return SourceURI(raw=uri, scheme="file", netloc="", path=uri, params={})
    parts = urlsplit(uri)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return SourceURI(raw=uri, scheme=parts.scheme.lower(), netloc=parts.netloc, path=parts.path, params=params)


class Source(abc.ABC):
    """Base class of every frame source."""

    #: True when the source ends by itself (a file, ``frames=N``); live sources are infinite.
    finite: bool = False

    def __init__(self, uri: SourceURI, source_id: str | None = None) -> None:
        self.uri = uri
        self.source_id = source_id or uri.params.get("id") or uri.scheme
        self.is_open = False

    def open(self) -> None:
        """Connect or open the device; raise :class:`SourceError` naming it when that fails."""
        if not self.is_open:
            self._open()
            self.is_open = True

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self._close()

    @abc.abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """The next frame, or ``None`` if none arrived within ``timeout`` seconds."""

    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri.raw, "source_id": self.source_id, "kind": type(self).__name__}

    def preflight(self) -> None:
        """Cheap checks before anything is bound or started (a file that cannot be decoded, say); raise
        :class:`~medstream.runtime.errors.ConfigError` naming the problem. Live sources need none."""
        return None

    def listen_endpoint(self) -> str | None:
        """The network endpoint this source will *bind* (listen on), or ``None`` when it connects or reads
        locally. Assembly checks it against the non-loopback rule (docs/SECURITY.md) before opening."""
        return None

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
