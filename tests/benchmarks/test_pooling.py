"""Pooling rounds: the pooled figures are those of all samples together, every round weighs its samples."""

from __future__ import annotations

import pytest

from medstream.benchmarks.pooling import pool
from medstream.benchmarks.subscriber import analyse
from tests.benchmarks.test_subscriber import _samples


def _round(ages, *, received, dropped=0, cpu=50.0, rss=100.0):
    a = analyse(_samples(ages, stages={"infer": 5.0, "total": 6.0}), expected_interval_ms=10.0, warmup_s=0.0)
    return {"scenario": "glass", "latency_ms": a["age_ms"], "latency_ms_co": a["age_ms_co"], "stages_ms": a["stages_ms"],
            "throughput_fps": a["throughput_fps"], "drops": {"superseded": dropped} if dropped else {},
            "accounting": {"received": received, "processed": received - dropped, "dropped_total": dropped,
                           "exact": True, "sent_by_source": received, "overlays_at_subscriber": received - dropped},
            "resources": {"run": {"cpu_pct_mean": cpu, "cpu_pct_max": cpu + 10, "rss_mb_mean": rss, "rss_mb_max": rss,
                                  "samples": 5}},
            "timeline": a["timeline"], "cdf": a["cdf"], "histograms": a["histograms"], "notes": ["source 10 fps"]}


def test_pooled_figures_are_those_of_all_samples_together():
    fast, slow = [5.0 + 0.01 * i for i in range(100)], [9.0 + 0.01 * i for i in range(100)]
    pooled = pool("glass", [_round(fast, received=100), _round(slow, received=102, dropped=2)])
    together = analyse(_samples(fast + slow, stages={"infer": 5.0, "total": 6.0}), expected_interval_ms=10.0, warmup_s=0.0)
    for key in ("count", "p50", "p90", "p99", "max"):
        assert pooled["latency_ms"][key] == together["age_ms"][key], key
    # The median of two rounds of 100 lies between them: not the mean of their medians' rounds, not one round.
    assert 5.9 < pooled["latency_ms"]["p50"] < 9.1
    assert pooled["stages_ms"]["infer"]["count"] == 200
    assert pooled["latency_ms_co"]["count"] == together["age_ms_co"]["count"]


def test_pooled_accounting_drops_resources_and_rounds():
    pooled = pool("glass", [_round([5.0] * 10, received=10, cpu=40.0, rss=90.0),
                            _round([6.0] * 10, received=13, dropped=3, cpu=60.0, rss=120.0)])
    a = pooled["accounting"]
    assert (a["received"], a["processed"], a["dropped_total"], a["sent_by_source"]) == (23, 20, 3, 23)
    assert a["exact"] is True
    assert pooled["drops"] == {"superseded": 3}
    assert pooled["resources"]["run"]["cpu_pct_mean"] == 50.0 and pooled["resources"]["run"]["rss_mb_max"] == 120.0
    assert [r["round"] for r in pooled["rounds"]] == [1, 2]
    assert [r["count"] for r in pooled["rounds"]] == [10, 10]
    # Timelines are laid end to end, never overlapping.
    times = [p[0] for p in pooled["timeline"]]
    assert times == sorted(times) and len(times) == 20
    assert any("round 2" in n for n in pooled["notes"])


def test_one_inexact_round_makes_the_pool_inexact():
    bad = _round([5.0] * 10, received=10)
    bad["accounting"]["exact"] = False
    assert pool("glass", [_round([5.0] * 10, received=10), bad])["accounting"]["exact"] is False


def test_single_round_is_returned_as_is_and_missing_histograms_are_refused():
    one = _round([5.0] * 10, received=10)
    assert pool("glass", [one]) is one
    broken = _round([5.0] * 10, received=10)
    broken["histograms"] = None
    with pytest.raises(ValueError, match="no histogram"):
        pool("glass", [one, broken])
