"""The measuring subscriber's arithmetic (synthetic timestamps) and its socket loop (real ZeroMQ)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from medstream.benchmarks.subscriber import Sample, analyse, collect
from medstream.runtime.frame import Overlay
from medstream.runtime.wire import encode_overlay

MS = 1_000_000


def _samples(ages_ms, period_ms=10.0, start_ns=10**18, stages=None):
    out = []
    for i, age in enumerate(ages_ms):
        t_cap = start_ns + int(i * period_ms * MS)
        out.append(Sample(seq=i, t_capture_ns=t_cap, t_arrival_ns=t_cap + int(age * MS), stages_ms=dict(stages or {})))
    return out


def test_age_is_arrival_minus_capture_and_warmup_is_excluded():
    # 1 s of warm-up at 50 ms ages, then 7 ms ages: the warm-up must not show in any figure.
    ages = [50.0] * 100 + [7.0] * 400
    r = analyse(_samples(ages), warmup_s=1.0)
    assert r["received"] == 500
    assert 390 <= r["measured"] <= 400  # cut-off: 1 s after the first arrival (at 50 ms)
    assert r["age_ms"]["p50"] == pytest.approx(7.0, rel=0.01)
    assert r["age_ms"]["max"] == pytest.approx(7.0, rel=0.01)
    assert r["throughput_fps"] == pytest.approx(100.0, rel=0.01)
    r_frames = analyse(_samples(ages), warmup_s=0.0, warmup_frames=100)
    assert r_frames["age_ms"]["max"] == pytest.approx(7.0, rel=0.01)


def test_tail_and_flatness_are_holohubs_definitions():
    ages = list(np.linspace(1.0, 100.0, 1000))
    r = analyse(_samples(ages), warmup_s=0.0)["age_ms"]
    assert r["tail"] == pytest.approx(r["max"] - r["p95"])
    assert r["flatness"] == pytest.approx(r["p90"] - r["p10"])
    assert r["p10"] == pytest.approx(10.9, rel=0.02) and r["p90"] == pytest.approx(90.1, rel=0.02)


def test_coordinated_omission_correction_backfills_a_stall():
    # 10 ms source period; one 105 ms stall among 5 ms ages. Uncorrected, the stall is one sample in
    # 101 and p90 stays at 5 ms; corrected, the 10 frames the stall hid are back-filled (95, 85 ... 5 ms).
    ages = [5.0] * 50 + [105.0] + [5.0] * 50
    r = analyse(_samples(ages), expected_interval_ms=10.0, warmup_s=0.0)
    assert r["age_ms"]["count"] == 101
    assert r["age_ms_co"]["count"] == 111
    assert r["age_ms"]["p90"] == pytest.approx(5.0, rel=0.01)
    assert r["age_ms_co"]["p95"] > 40.0
    assert r["age_ms_co"]["max"] == pytest.approx(105.0, rel=0.01)
    assert analyse(_samples(ages), warmup_s=0.0)["age_ms_co"] is None  # not a fixed-rate source


def test_stage_split_wire_out_and_ingress():
    stages = {"queue": 0.5, "preprocess": 1.0, "infer": 10.0, "compute": 9.5, "postprocess": 2.0, "total": 15.0}
    r = analyse(_samples([16.0] * 50, stages=stages), warmup_s=0.0)
    st = r["stages_ms"]
    assert st["infer"]["p50"] == pytest.approx(10.0, rel=0.01)
    assert st["wire_out"]["p50"] == pytest.approx(1.0, rel=0.01)   # 16 - 15
    assert st["ingress"]["p50"] == pytest.approx(1.5, rel=0.01)    # 15 - (0.5 + 1 + 10 + 2)


def test_collect_measures_real_overlays_over_zeromq(tmp_path: Path):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    ready = tmp_path / "ready"
    stop = threading.Event()
    got = {}
    t = threading.Thread(target=lambda: got.update(zip(("samples", "statuses"), collect(
        f"tcp://127.0.0.1:{port}", stop=stop.is_set, ready_file=ready, max_s=20), strict=True)), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists(), "the subscriber never reported its connection"
    time.sleep(0.2)  # the subscription travels to the PUB after the handshake
    for seq in range(20):
        ov = Overlay(seq=seq, t_capture_ns=time.time_ns() - 7 * MS, source_id="s", model_id="m", class_names=("a",),
                     class_colors=((0, 0, 0),), mask=np.zeros((4, 4), np.uint8), frame_size=(4, 4),
                     stages_ms={"total": 6.0}, t_publish_ns=time.time_ns())
        pub.send_multipart(encode_overlay(ov))
        time.sleep(0.005)
    time.sleep(0.3)
    stop.set()
    t.join(5)
    pub.close(0)
    samples = got["samples"]
    assert [s.seq for s in samples] == list(range(20))
    ages = [s.age_ms for s in samples]
    assert min(ages) >= 7.0 and max(ages) < 7.0 + 250
