"""The soak harness in its CI size: real processes, every fault kind once, nothing unaccounted."""

from __future__ import annotations

import json

import pytest

from medstream.benchmarks.soak import main


@pytest.mark.slow
def test_short_soak_passes_with_every_fault(tiny_model, tmp_path):
    rc = main(["--minutes", "0.3", "--model", str(tiny_model), "--size", "128", "--sample-s", "1",
               "--fault-every", "4.5", "--warmup-s", "3", "--out", str(tmp_path)])
    result = json.loads(next(tmp_path.glob("soak-*.json")).read_text())
    assert {e["fault"] for e in result["faults"] if "fault" in e} == {"sender_restart", "malformed_burst",
                                                                      "subscriber_stall"}
    c = result["summary"]["counters"]
    assert result["frames_unaccounted"] == 0 and result["summary"]["accounting_ok"]
    assert c["dropped"].get("invalid", 0) > 0 and c["invalid_by_reason"]
    assert result["subscriber"]["duplicates"] == 0 and "stalled" in result["subscriber"]["source_states_seen"]
    assert result["fd_growth"] <= 0 and result["thread_growth"] <= 0
    assert (tmp_path / next(tmp_path.glob("soak-*.md")).name).read_text().startswith("# Soak")
    # RSS growth over 18 s is dominated by warm-up noise; the 1 % criterion is for the one-hour run.
    failed = {k for k, v in result["checks"].items() if not v} - {"rss_growth_under_1pct"}
    assert not failed and rc in (0, 1), result["checks"]
