"""Several sinks behind one: the pipeline publishes once, every endpoint gets the overlay."""

from __future__ import annotations

import logging
from typing import Any

from medstream.runtime.frame import Overlay
from medstream.runtime.sinks.base import OverlaySink

log = logging.getLogger("medstream.publisher")


class OverlaySinks(OverlaySink):
    """Fans overlays and status out to ``sinks`` (the first is the primary: its endpoint names the stream).

    ``send_overlay`` returns ``True`` only when every sink took the overlay; each sink counts its own
    drops (``describe()`` lists them), so one slow consumer is visible without hiding the others.
    A sink that raises is logged and counted as failed; the others still get the overlay.
    """

    def __init__(self, sinks: list[OverlaySink]) -> None:
        if not sinks:
            raise ValueError("at least one sink")
        self.sinks = list(sinks)
        self.endpoint = sinks[0].endpoint
        self.bound_endpoint = sinks[0].bound_endpoint

    @property
    def sent(self) -> int:  # type: ignore[override]
        return self.sinks[0].sent

    @property
    def failed(self) -> int:  # type: ignore[override]
        return sum(s.failed for s in self.sinks)

    @property
    def bound_endpoints(self) -> list[str]:
        return [s.bound_endpoint for s in self.sinks]

    def _each(self, method: str, item: Any) -> bool:
        ok = True
        for sink in self.sinks:
            try:
                ok = getattr(sink, method)(item) and ok
            except Exception:
                log.exception("sink %s failed in %s", sink.bound_endpoint, method)
                sink.failed += 1
                ok = False
        return ok

    def send_overlay(self, overlay: Overlay) -> bool:
        return self._each("send_overlay", overlay)

    def send_status(self, status: dict[str, Any]) -> bool:
        return self._each("send_status", status)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %s failed", sink.bound_endpoint)

    def describe(self) -> dict[str, Any]:
        return {"sinks": [s.describe() for s in self.sinks]}
