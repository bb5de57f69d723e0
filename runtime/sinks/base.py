"""The overlay sink interface: where a pipeline's overlays and status go (ZeroMQ, OpenIGTLink, ...).

A sink never blocks the worker: a slow or absent consumer costs that consumer its overlays (counted as
``failed`` here), never the pipeline's time. A stale overlay is worse than none.
"""

from __future__ import annotations

import abc
from typing import Any

from medstream.runtime.frame import Overlay


class OverlaySink(abc.ABC):
    """One output endpoint. ``bound_endpoint`` is where it actually listens (port 0 resolved)."""

    endpoint: str
    bound_endpoint: str
    sent: int
    failed: int
    #: Several streams in one run: tell them apart by topic where the transport has topics (ZeroMQ:
    #: ``overlay/<source_id>``); sinks without topics ignore it (every message carries its source_id).
    topic_per_stream: bool = False

    @abc.abstractmethod
    def send_overlay(self, overlay: Overlay) -> bool:
        """Hand one overlay on without waiting; ``False`` when it was dropped for some consumer."""

    @abc.abstractmethod
    def send_status(self, status: dict[str, Any]) -> bool:
        """Hand one status message on without waiting."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.bound_endpoint, "kind": type(self).__name__, "sent": self.sent, "failed": self.failed}

    def __enter__(self) -> OverlaySink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
