"""The two small measurement scripts run on the tiny model and write what the docs cite from them."""

from __future__ import annotations

import json

from medstream.benchmarks import floor_drift, spin_after_run


def test_floor_drift_writes_one_median_per_block(tiny_model, tmp_path, capsys):
    assert floor_drift.main(["--model", str(tiny_model), "--threads", "1", "--seconds", "1.0", "--block-s", "0.2",
                             "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "floor_drift.json").read_text())
    assert 3 <= len(r["block_medians_ms"]) <= 5
    assert r["min_ms"] == min(r["block_medians_ms"]) and r["max_ms"] == max(r["block_medians_ms"])
    assert r["max_over_min"] >= 1.0
    assert "two-second medians" in capsys.readouterr().out


def test_spin_after_run_compares_both_settings(tiny_model, tmp_path):
    assert spin_after_run.main(["--model", str(tiny_model), "--threads", "1", "--blocks", "2", "--per-block", "3",
                                "--idle-ms", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "spin_after_run.json").read_text())
    assert r["runs_per_setting"] == 6
    for key in ("spin_after_run_false", "spin_after_run_true"):
        assert r[key]["cpu_ms_per_frame"] > 0 and 0 < r[key]["inference_p50_ms"] <= r[key]["inference_p90_ms"]
