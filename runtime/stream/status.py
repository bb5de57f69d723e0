"""The stream's status: a typed record, made by the worker about once a second and published as ``status``.

Typed so that what the pipeline says about itself is checked where it is made; :meth:`StreamStatus.to_wire`
gives the mapping the ``status`` topic carries (docs/WIRE.md), unchanged for consumers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

# Source states reported in status messages.
STARTING, LIVE, STALLED, RECONNECTING, ENDED, STOPPED = "starting", "live", "stalled", "reconnecting", "ended", "stopped"
SourceState = Literal["starting", "live", "stalled", "reconnecting", "ended", "stopped"]
RunState = Literal["running", "stopping", "stopped"]


@dataclass
class StreamStatus:
    """What the ``status`` topic carries (see docs/WIRE.md for each field)."""

    source_id: str
    seq: int
    t_capture_ns: int
    state: RunState
    source_state: SourceState
    source_error: str | None
    seconds_since_frame: float
    uptime_s: float
    counters: dict[str, Any]
    fps_in: float
    fps_out: float
    latency_ms: dict[str, dict[str, float]]
    model_id: str
    backend: str
    device: str
    backend_state: str = "ready"
    """``ready``; ``failing`` (the last inference raised); ``unreachable`` (the backend cannot be reached at all)."""
    backend_error: str | None = None
    end_of_stream: bool = False
    """True on the last status of a run whose source ended (a file played out, a finite stream): viewers stop."""
    peers_refused: int = 0
    """Frame senders whose security handshake failed (CURVE on, keys not accepted); ``source_error`` then says
    ``unauthenticated peer refused (N ...)`` while no frame arrives."""
    subscribers_refused: int = 0
    """Overlay subscribers the publisher's ZAP handler refused (key not on the allow-list)."""
    low_confidence_below: float | None = None
    """The confidence under which overlays are flagged ``low_confidence`` (config ``model.low_confidence_below``);
    ``counters.low_confidence`` counts the processed frames so flagged."""
    device_telemetry: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("device_telemetry", "extra")}
        if self.device_telemetry is not None:
            out["device_telemetry"] = self.device_telemetry
        out.update(self.extra)
        return out


class RateMeter:
    """Frames in and out per second since the previous status (one status period)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._mark = (time.monotonic(), 0, 0)

    def rates(self, received: int, processed: int) -> tuple[float, float]:
        now = time.monotonic()
        t_mark, rec_mark, proc_mark = self._mark
        span = max(now - t_mark, 1e-6)
        self._mark = (now, received, processed)
        return round((received - rec_mark) / span, 2), round((processed - proc_mark) / span, 2)


__all__ = ["ENDED", "LIVE", "RECONNECTING", "STALLED", "STARTING", "STOPPED", "RateMeter", "StreamStatus"]
