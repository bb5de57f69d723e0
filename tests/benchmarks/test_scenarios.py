"""The harness end to end with the tiny model: planted delays show where they were planted, the naive
loop keeps every frame in order and falls behind under overload, processes always stop.

These check the harness, not this machine's speed: every assertion is about a planted 20 ms, with
generous margins for a busy 2-core machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from medstream.benchmarks import harness
from medstream.benchmarks.scenarios import Settings, pipeline, run_scenarios, stream

DELAY = 20.0


def _settings(tiny_model: Path, out: Path, **kw) -> Settings:
    base = dict(model=str(tiny_model), model_path=Path(tiny_model), out_dir=out, duration_s=3.0, warmup_s=0.5,
                threads=1, rate=25.0, drain_timeout_s=15.0)
    base.update(kw)
    return Settings(**base)


def test_process_group_stops_everything_and_samples_resources(tmp_path: Path):
    t0 = time.monotonic()
    with harness.ProcessGroup(tmp_path, sample_s=0.1) as group:
        p = group.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
        time.sleep(0.6)
        res = group.resources()["sleeper"]
    assert p.popen.returncode is not None, "the group must stop its processes on exit"
    assert time.monotonic() - t0 < 10
    assert res["samples"] >= 2 and res["rss_mb_max"] > 1


def test_planted_delay_shows_in_its_stage_in_process(tiny_model, tmp_path):
    base = pipeline(_settings(tiny_model, tmp_path / "a"))
    planted = pipeline(_settings(tiny_model, tmp_path / "b", inject_delay_ms={"postprocess": DELAY}))
    d_post = planted["stages_ms"]["postprocess"]["p50"] - base["stages_ms"]["postprocess"]["p50"]
    d_total = planted["latency_ms"]["p50"] - base["latency_ms"]["p50"]
    # A planted sleep can only lengthen its stage; the differences allow for a loaded machine (CI).
    assert planted["stages_ms"]["postprocess"]["p50"] >= DELAY
    assert DELAY / 2 < d_post < DELAY + 10
    assert DELAY / 2 < d_total < DELAY + 15
    d_infer = planted["stages_ms"]["infer"]["p50"] - base["stages_ms"]["infer"]["p50"]
    assert abs(d_infer) < 5, "the delay must show in the stage it was planted in, not elsewhere"
    assert planted["accounting"]["exact"]


@pytest.mark.slow
def test_planted_delay_shows_in_its_stage_and_in_glass(tiny_model, tmp_path):
    """Three real processes (simulate, run, subscriber), without and with 20 ms planted in 'infer'."""
    base = stream(_settings(tiny_model, tmp_path), "glass_base", 25.0)
    planted = stream(_settings(tiny_model, tmp_path, inject_delay_ms={"infer": DELAY}), "glass_planted", 25.0)
    d_infer = planted["stages_ms"]["infer"]["p50"] - base["stages_ms"]["infer"]["p50"]
    d_glass = planted["latency_ms"]["p50"] - base["latency_ms"]["p50"]
    assert planted["stages_ms"]["infer"]["p50"] >= DELAY
    assert DELAY / 2 < d_infer < DELAY + 10
    assert DELAY / 2 < d_glass < DELAY + 15
    # compute (the backend's own time) does not include a sleep planted before it
    assert planted["stages_ms"]["compute"]["p50"] < 5
    for r in (base, planted):
        a = r["accounting"]
        assert a["exact"] and a["received"] == a["processed"] + a["dropped_total"]
        assert a["overlays_at_subscriber"] == a["processed"]
        assert set(r["resources"]) == {"run", "subscriber", "simulate"}
        assert r["resources"]["run"]["rss_mb_max"] > 10


@pytest.mark.slow
def test_naive_loop_keeps_every_frame_in_order_and_falls_behind_in_overload(tiny_model, tmp_path):
    # 20 ms per frame = 50 fps capacity, fed 100 fps for 2 s: the backlog grows by ~1 frame every 20 ms.
    s = _settings(tiny_model, tmp_path, duration_s=2.0, warmup_s=0.0, naive_delay_ms=DELAY, rate=100.0)
    r = stream(s, "naive_overload", 100.0, engine="naive")
    a = r["accounting"]
    assert a["sent_by_source"] == 200
    assert a["processed"] == a["received"] == 200 and a["seq_gaps"] == 0, "the naive loop drops nothing"
    assert r["out_of_order"] == 0 and r["seq_gaps"] == 0 and a["overlays_at_subscriber"] == 200
    ages = [p[1] for p in r["timeline"]]
    assert ages[-1] > ages[0] + 1000, "queued frames must get older and older (about 2 s by the end)"
    assert r["latency_ms"]["max"] > 1000


@pytest.mark.slow
def test_overload_supersedes_and_accounts_for_every_frame(tiny_model, tmp_path):
    # 20 ms planted per inference (50 fps capacity), source at 100 fps: half the frames are superseded,
    # the age stays bounded by about one inference plus one source period, and the summary adds up.
    s = _settings(tiny_model, tmp_path, duration_s=2.5, warmup_s=0.5, inject_delay_ms={"infer": DELAY})
    r = stream(s, "overload", 100.0)
    a = r["accounting"]
    assert a["exact"] and a["received"] == a["processed"] + a["dropped_total"]
    assert r["drops"].get("superseded", 0) > a["processed"] / 3
    assert r["latency_ms"]["p50"] < 4 * DELAY, "no queueing: the newest frame is taken"


@pytest.mark.slow
def test_transport_relay_forwards_every_frame_with_its_seq_and_capture_time(tiny_model, tmp_path):
    """simulate -> relay (no model) -> subscriber: the transport floor is measured on real sockets."""
    r = stream(_settings(tiny_model, tmp_path, duration_s=2.0, warmup_s=0.5), "transport", 25.0, engine="relay")
    a = r["accounting"]
    assert a["sent_by_source"] == 50 and a["received"] == a["processed"] == 50 and a["exact"]
    assert a["overlays_at_subscriber"] == 50 and r["seq_gaps"] == 0 and r["out_of_order"] == 0
    assert set(r["resources"]) == {"relay", "subscriber", "simulate"}
    # The relay stamps only 'total' (capture -> publish): no model stage may appear.
    assert "infer" not in r["stages_ms"] and {"ingress", "wire_out"} <= set(r["stages_ms"])


@pytest.mark.slow
def test_rounds_run_the_list_floor_first_and_pool_every_sample(tiny_model, tmp_path):
    s = _settings(tiny_model, tmp_path, duration_s=2.0, warmup_s=0.5, rounds=2, floor_runs=30, rate=None)
    stale = tmp_path / "glass" / "run.log"
    stale.parent.mkdir(parents=True)
    stale.write_text("an older run's log")
    other = tmp_path / "naive" / "round1" / "naive.log"  # a scenario this run does not measure
    other.parent.mkdir(parents=True)
    other.write_text("the naive run a committed report links to")
    results = run_scenarios(s, ["glass"])
    assert not stale.exists(), "an older run's files must not sit beside the new rounds"
    assert other.read_text() == "the naive run a committed report links to", "only this run's scenarios are cleared"
    fl, gl = results["floor"], results["glass"]
    per_round = fl["rounds"]
    assert [r["round"] for r in per_round] == [1, 2]
    assert all(r["floor"]["p50"] and r["glass"]["p50"] for r in per_round)
    assert fl["runs"] == 2 * 30, "every floor round takes the same number of inferences"
    assert (tmp_path / "glass" / "round1").is_dir() and (tmp_path / "glass" / "round2").is_dir()
    rate = min(s.fixed_capacity * s.glass_fraction, s.max_rate)
    assert gl["rate_fps"] == pytest.approx(rate)
    frames = int(round(rate * s.duration_s))
    a = gl["accounting"]
    assert a["sent_by_source"] == 2 * frames, "both rounds ran at the rate round 1's floor gave"
    assert a["exact"] and a["received"] == a["processed"] + a["dropped_total"]
    assert gl["latency_ms"]["count"] == sum(r["glass"]["count"] for r in per_round) > 0
    assert fl["latency_ms"]["count"] == sum(r["floor"]["count"] for r in per_round) == 60
    assert gl["capacity_fps"] == pytest.approx(1000.0 / fl["latency_ms"]["p50"]), "judged on the pooled floor"
