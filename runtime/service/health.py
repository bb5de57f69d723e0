"""Reading a pipeline's ``status`` topic from outside: health verdict and a one-screen summary.

Used by ``medstream status`` (a live monitor and a health check). Exit codes are distinct so a
health-check script or a monitoring agent can tell the cases apart:

====  ===========================================================================================
0     healthy: a fresh status (made within ``stale_s``), pipeline running, source live
2     absent or stale: no status within the timeout (pipeline stopped, crashed, hung, unreachable)
      or only old ones (clock skew between hosts? raise ``--stale-s``)
3     pipeline running but the source is not live (stalled, reconnecting, starting)
4     pipeline stopping or stopped (a final status was received), or the source ended
====  ===========================================================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import zmq

from medstream.runtime.wire import STATUS_TOPIC, WireError, decode_status

HEALTHY, ABSENT, SOURCE_NOT_LIVE, STOPPED = 0, 2, 3, 4


def assess(status: dict[str, Any], stale_s: float = 3.0, now_ns: int | None = None) -> tuple[int, str]:
    """``(exit code, reason)`` for one status message (see the module docstring)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    age_s = (now_ns - int(status.get("t_capture_ns", 0))) / 1e9
    if age_s > stale_s:
        return ABSENT, f"status is {age_s:.1f} s old (threshold {stale_s:g} s)"
    state, source = status.get("state"), status.get("source_state")
    if state != "running" or source in ("ended", "stopped"):
        return STOPPED, f"pipeline {state}, source {source}"
    if source != "live":
        err = status.get("source_error")
        return SOURCE_NOT_LIVE, f"source {source}" + (f": {err}" if err else "") + \
            f" (no frame for {status.get('seconds_since_frame', '?')} s)"
    return HEALTHY, "running, source live"


class StatusWatcher:
    """A SUB socket on the ``status`` topic; :meth:`next` returns the newest status or ``None``."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None, curve: Mapping[str, Any] | None = None) -> None:
        from medstream.runtime.security import apply_curve_client

        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.SUB)
        apply_curve_client(self.sock, curve)
        self.sock.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100)
        self.sock.connect(endpoint)
        self.rejected = 0

    def next(self, timeout_s: float) -> dict[str, Any] | None:
        """Wait up to ``timeout_s`` for a status; if several are queued, the newest wins."""
        deadline = time.monotonic() + timeout_s
        newest = None
        while True:
            wait_ms = 0 if newest is not None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(wait_ms):
                return newest
            parts = self.sock.recv_multipart()
            try:
                newest = decode_status(parts)
            except WireError:
                self.rejected += 1
            if newest is None and time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self.sock.close(0)


def _fmt_bytes(n: float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _device_lines(t: dict[str, Any]) -> list[str]:
    lines = []
    for g in t.get("gpus", []):
        bits = [f"GPU{g.get('index', 0)} {g.get('name', '')}".rstrip()]
        if g.get("util_pct") is not None:
            bits.append(f"util {g['util_pct']:.0f}%")
        if g.get("mem_total_bytes"):
            bits.append(f"mem {_fmt_bytes(g.get('mem_used_bytes'))}/{_fmt_bytes(g['mem_total_bytes'])}")
        if g.get("temp_c") is not None:
            bits.append(f"{g['temp_c']:.0f} C")
        if g.get("power_w") is not None:
            bits.append(f"{g['power_w']:.1f} W")
        if g.get("clocks_mhz", {}).get("graphics") is not None:
            bits.append(f"{g['clocks_mhz']['graphics']:.0f} MHz")
        lines.append("  ".join(bits))
    cpu, mem, proc = t.get("cpu", {}), t.get("memory", {}), t.get("process", {})
    host = []
    if cpu.get("util_pct") is not None:
        host.append(f"CPU {cpu['util_pct']:.0f}% of {cpu.get('count', '?')}")
    if mem.get("total_bytes"):
        host.append(f"mem {_fmt_bytes(mem.get('used_bytes'))}/{_fmt_bytes(mem['total_bytes'])}")
    if proc.get("rss_bytes"):
        host.append(f"medstream rss {proc['rss_bytes'] / 2**20:.0f} MiB")
    if host:
        lines.append("  ".join(host))
    thermal = t.get("thermal_c", {})
    if thermal:
        hottest = sorted(thermal.items(), key=lambda kv: -kv[1])[:4]
        lines.append("thermal " + ", ".join(f"{k} {v:.0f} C" for k, v in hottest))
    return lines or ["(no telemetry)"]


def format_summary(status: dict[str, Any], health: tuple[int, str], endpoint: str = "") -> str:
    """One screen of plain text: verdict, source, rates, latency percentiles, drops, device."""
    code, reason = health
    verdict = {HEALTHY: "OK", ABSENT: "STALE", SOURCE_NOT_LIVE: "SOURCE NOT LIVE", STOPPED: "STOPPED"}.get(code, "?")
    c = status.get("counters", {})
    lines = [
        f"medstream {endpoint}  [{verdict}] {reason}",
        f"source   {status.get('source_id', '?')}: {status.get('source_state', '?')} "
        f"(last frame {status.get('seconds_since_frame', '?')} s ago)   pipeline {status.get('state', '?')}, "
        f"uptime {status.get('uptime_s', 0):.0f} s",
        f"model    {status.get('model_id', '?')} on {status.get('backend', '?')}/{status.get('device', '?')}",
        f"rate     in {status.get('fps_in', 0):.1f} fps   out {status.get('fps_out', 0):.1f} fps",
    ]
    for stage in ("total", "infer", "compute", "queue"):
        lat = status.get("latency_ms", {}).get(stage)
        if lat:
            lines.append(f"latency  {stage:<8} p50 {lat.get('p50', 0):7.2f}  p90 {lat.get('p90', 0):7.2f}  "
                         f"p99 {lat.get('p99', 0):7.2f}  max {lat.get('max', 0):7.2f} ms")
    lines.append(f"frames   received {c.get('received', 0)}  processed {c.get('processed', 0)}  "
                 f"published {c.get('published', 0)}  in flight {c.get('in_flight', 0)}")
    drops = ", ".join(f"{k} {v}" for k, v in sorted(c.get("dropped", {}).items()) if v) or "none"
    lines.append(f"drops    {drops}")
    if status.get("source_error"):
        lines.append(f"error    {status['source_error']}")
    dev = _device_lines(status.get("device_telemetry") or {})
    lines.append(f"device   {dev[0]}")
    lines.extend(f"         {line}" for line in dev[1:])
    return "\n".join(lines)


def as_json(status: dict[str, Any], health: tuple[int, str]) -> str:
    return json.dumps({**status, "health": {"code": health[0], "reason": health[1]}}, default=str)


def watch(endpoint: str, timeout_s: float = 2.5, stale_s: float = 3.0, once: bool = False, emit=print,
          json_lines: bool = False, clear: bool = False, curve: Mapping[str, Any] | None = None) -> int:
    """The loop behind ``medstream status``: returns the exit code (see the module docstring).

    ``once``: the verdict of the first fresh status (or 2 after ``timeout_s``). Otherwise: keep
    printing until the pipeline stops (4) or no fresh status arrives for ``timeout_s`` (2).
    """
    watcher = StatusWatcher(endpoint, curve=curve)
    try:
        deadline = time.monotonic() + timeout_s
        last: tuple[int, str] | None = None
        while True:
            status = watcher.next(max(0.0, deadline - time.monotonic()))
            if status is None:
                why = last[1] if last and last[0] == ABSENT else "pipeline stopped, crashed, hung or unreachable"
                emit(json.dumps({"health": {"code": ABSENT, "reason": f"no fresh status from {endpoint} for "
                                            f"{timeout_s:g} s: {why}"}}) if json_lines else
                     f"medstream {endpoint}  [ABSENT] no fresh status for {timeout_s:g} s: {why}")
                return ABSENT
            health = assess(status, stale_s)
            last = health
            if health[0] == ABSENT:
                continue  # an old message (queued, or clock skew): keep waiting until the deadline
            deadline = time.monotonic() + timeout_s
            text = as_json(status, health) if json_lines else format_summary(status, health, endpoint)
            emit(("\x1b[H\x1b[2J" + text) if clear and not json_lines else text)
            if once or health[0] == STOPPED:
                return health[0]
    finally:
        watcher.close()
