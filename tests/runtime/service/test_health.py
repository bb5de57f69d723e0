"""The health verdict behind `medstream status` (exit codes)."""

from __future__ import annotations

import time

import pytest

from medstream.runtime.service.health import ABSENT, HEALTHY, SOURCE_NOT_LIVE, STOPPED, assess, format_summary


def _status(**kw):
    return {"t_capture_ns": time.time_ns(), "state": "running", "source_state": "live", "seq": 1, **kw}


@pytest.mark.parametrize("kw, code", [
    ({}, HEALTHY),
    ({"t_capture_ns": time.time_ns() - 10_000_000_000}, ABSENT),
    ({"source_state": "stalled"}, SOURCE_NOT_LIVE),
    ({"source_state": "reconnecting", "source_error": "connection refused"}, SOURCE_NOT_LIVE),
    ({"source_state": "starting"}, SOURCE_NOT_LIVE),
    ({"state": "stopping"}, STOPPED),
    ({"state": "stopped", "source_state": "stopped"}, STOPPED),
    ({"source_state": "ended"}, STOPPED),
])
def test_assess(kw, code):
    assert assess(_status(**kw), stale_s=3.0)[0] == code


def test_summary_fits_one_screen_and_names_what_matters():
    st = _status(source_id="room-1", fps_in=30.0, fps_out=29.9, model_id="us-unet", backend="tensorrt", device="cuda",
                 latency_ms={"total": {"p50": 8.1, "p90": 9.0, "p99": 12.3, "max": 20.0}},
                 counters={"received": 100, "processed": 97, "published": 97, "dropped": {"superseded": 3}, "in_flight": 0},
                 device_telemetry={"gpus": [{"index": 0, "name": "Orin", "util_pct": 55, "temp_c": 51, "power_w": 12.5}],
                                   "cpu": {"util_pct": 20, "count": 8}})
    text = format_summary(st, assess(st), "tcp://127.0.0.1:5556")
    assert len(text.splitlines()) <= 24
    for needle in ("[OK]", "room-1: live", "30.0 fps", "p99   12.30", "superseded 3", "GPU0 Orin", "util 55%", "51 C",
                   "12.5 W", "CPU 20% of 8"):
        assert needle in text, needle
