"""Report JSON keys, Markdown table, plots and --compare ratios (synthetic scenario results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medstream.benchmarks import report as rep
from medstream.benchmarks.subscriber import analyse
from medstream.cli.main import main as cli_main
from tests.benchmarks.test_subscriber import _samples


def _scenario(name, ages, stages=None, **kw):
    a = analyse(_samples(ages, stages=stages), expected_interval_ms=10.0, warmup_s=0.0)
    return {"scenario": name, "latency_ms": a["age_ms"], "latency_ms_co": a["age_ms_co"], "stages_ms": a["stages_ms"],
            "throughput_fps": a["throughput_fps"], "rate_fps": 100.0, "capacity_fps": 100.0, "drops": {"superseded": 3},
            "accounting": {"received": 10, "processed": 7, "dropped_total": 3, "exact": True},
            "resources": {"run": {"cpu_pct_mean": 90.0, "rss_mb_max": 150.0}}, "timeline": a["timeline"], "cdf": a["cdf"],
            "notes": ["synthetic"], **kw}


def _report(scale=1.0):
    st = {"queue": 0.1, "preprocess": 0.2, "infer": 5.0, "compute": 4.9, "postprocess": 0.5, "total": 6.0}
    sc = {"floor": _scenario("floor", [5.0 * scale] * 50),
          "glass": _scenario("glass", [6.5 * scale] * 50, st),
          "overload": _scenario("overload", [9.0 * scale] * 50, st),
          "naive": _scenario("naive", [8.0 * scale] * 50),
          "naive_overload": _scenario("naive_overload", list(range(10, 60)))}
    env = {"cpu_model": "test cpu", "cpu_cores_usable": 2, "python": "3.x", "medstream": "0", "git_commit": "abc",
           "libraries": {"onnxruntime": "1", "numpy": "2", "pyzmq": "27", "libzmq": "4", "opencv": "5"},
           "onnxruntime_intra_op_threads": 1}
    return rep.build_report(sc, model="tiny", model_path="/x/tiny.onnx", settings={"duration_s": 5, "warmup_s": 1, "threads": 1},
                            command="medstream bench", env=env)


def test_report_has_the_required_keys_and_targets():
    r = _report()
    assert {"schema", "created", "command", "model", "settings", "environment", "scenarios", "targets",
            "naive_vs_medstream"} <= set(r)
    for name in ("floor", "glass", "overload", "naive", "naive_overload"):
        lat = r["scenarios"][name]["latency_ms"]
        assert {"p50", "p90", "p99", "p99.9", "max", "tail", "flatness"} <= set(lat)
    targets = {t["target"]: t for t in r["targets"]}
    assert abs(targets["glass p50 - floor p50"]["value"] - 1.5) < 0.02 and targets["glass p50 - floor p50"]["pass"] is False
    assert abs(targets["overload p99 age"]["limit"] - 11.0) < 0.05 and targets["overload p99 age"]["pass"] is True
    ratio = r["naive_vs_medstream"][0]
    assert ratio["condition"] == "under capacity" and abs(ratio["p50_ratio"] - 8.0 / 6.5) < 0.01


def test_real_environment_names_cpu_and_libraries():
    env = rep.environment(threads=1)
    assert env["cpu_cores_usable"] >= 1 and env["cpu_model"]
    assert env["libraries"]["onnxruntime"] and env["libraries"]["numpy"] and env["libraries"]["pyzmq"]
    assert "gpu" in env and "jetson" in env and env["onnxruntime_intra_op_threads"] == 1


def test_markdown_table_and_plots(tmp_path: Path):
    files = rep.write_report(_report(), tmp_path)
    md = files["markdown"].read_text()
    assert "| scenario | source fps | p50 |" in md
    for name in ("floor", "glass", "overload", "naive", "naive_overload"):
        assert f"| {name} |" in md
    assert "| glass p50 - floor p50 | 1." in md and "| 1.000 | **no** |" in md
    for png in ("cdf.png", "stages.png", "timeline.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files["json"].read_text())["scenarios"]["glass"]["latency_ms"]["p50"] > 6.4


def test_compare_prints_ratios(tmp_path: Path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(1.0)))
    b.write_text(json.dumps(_report(2.0)))
    assert cli_main(["bench", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    glass_line = next(line for line in out.splitlines() if line.startswith("glass"))
    assert glass_line.split()[1] == "2.00x"  # p50 doubled
    assert cli_main(["bench", "--compare", str(a), str(tmp_path / "missing.json")]) != 0


def test_glass_gap_splits_the_difference_into_measured_parts():
    r = _report()
    sc = dict(r["scenarios"])
    sc["transport"] = _scenario("transport", [0.8] * 50)
    gap = rep.glass_gap(sc)
    # glass 6.5 - floor 5.0 = 1.5: transport 0.8, queue + preprocess + postprocess 0.8, infer 5.0 - floor 5.0 = 0
    assert gap["gap_p50_ms"] == pytest.approx(1.5, abs=0.02)
    parts = gap["parts_ms"]
    assert parts["transport (two hops, no work)"] == pytest.approx(0.8, abs=0.01)
    assert parts["runtime work (queue + preprocess + postprocess)"] == pytest.approx(0.8, abs=0.01)
    assert parts["inference in the stream - floor"] == pytest.approx(0.0, abs=0.01)
    assert gap["unexplained_ms"] == pytest.approx(1.5 - 1.6, abs=0.03)
    assert rep.glass_gap({"floor": sc["floor"]}) is None, "no glass, no gap"


def test_markdown_shows_every_round():
    r = _report()
    r["scenarios"]["floor"]["rounds"] = [
        {"round": 1, "floor": {"p50": 5.0, "p99": 6.0}, "glass": {"p50": 6.0, "p99": 9.0}, "naive": {"p50": 7.0}},
        {"round": 2, "floor": {"p50": 7.0, "p99": 8.0}, "glass": {"p50": 7.5, "p99": 8.5}, "overload": {"p99": 12.0}},
    ]
    r["glass_gap"] = rep.glass_gap(r["scenarios"])
    md = rep.markdown(r)
    assert "| 1 | 5.00 | 6.00 | 1.00 | 6.00 | 9.00 | 3.00 | 7.00 | - |" in md
    assert "| 2 | 7.00 | 7.50 | 0.50 | 8.00 | 8.50 | 0.50 | - | 12.00 |" in md
    assert "Where glass p50 - floor p50 (1.50 ms) goes" in md


def test_regenerating_results_md_keeps_the_sections_other_commands_wrote():
    """`medstream bench --results-md` rewrites its own reports; the OpenIGTLink/backend/Triton sections stay."""
    old_generated = rep.results_markdown([(_report(), "results/ultrasound/")], "medstream bench --results-md")
    kept = ("\n\n## Triton Inference Server (issue 17)\n\nWritten by `python -m medstream.benchmarks.triton_roundtrip`."
            "\n\n<!-- BEGIN backend table (benchmarks/backend_table.py) -->\n| row |\n<!-- END backend table -->\n")
    old = old_generated + "\n\n" + rep.KEPT_MARK + kept
    new_generated = rep.results_markdown([(_report(scale=2.0), "results/ultrasound/")], "medstream bench --results-md")
    assert new_generated != old_generated
    merged = rep.keep_other_sections(old, new_generated)
    assert merged.startswith(new_generated.rstrip("\n"))
    assert merged.endswith(rep.KEPT_MARK + kept)
    assert merged.count(rep.KEPT_MARK) == 1 and merged.count("# Benchmark results") == 1
    # Regenerating again changes nothing further; a file without the mark keeps nothing (nothing to tell apart).
    assert rep.keep_other_sections(merged, new_generated) == merged
    assert rep.keep_other_sections(old_generated, new_generated) == new_generated


def test_the_committed_results_md_marks_where_the_kept_sections_start():
    text = (Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    head, mark, tail = text.partition(rep.KEPT_MARK)
    assert mark, "benchmarks/RESULTS.md lost its KEPT SECTIONS mark: the next --results-md would drop the sections below it"
    assert "## OpenIGTLink" in tail and "## Triton Inference Server" in tail and "## CPU backends side by side" in tail
    assert "## OpenIGTLink" not in head
