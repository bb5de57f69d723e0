"""The accuracy gate catches an INT8 model that ruins the segmentation, and ``--auto`` repairs it.

The saturating model's head adds ``1000 x`` to every logit: harmless in float, fatal in int8 (the
output's step becomes ~8 while the logits differ by < 3), whatever the calibration method.
"""

from __future__ import annotations

import json

from medstream.calibration.gate import node_errors
from medstream.calibration.quantize import float_nodes, read_quantization
from medstream.calibration.validator import validate_model
from medstream.cli.main import main as cli_main
from medstream.runtime.contract import read_contract
from medstream.runtime.evaluation import iter_eval_batches


def _args(model, calib, evald, out, cache):
    return ["calibrate", "--model", str(model), "--data", str(calib), "--frames", "16",
            "--eval-data", f"file://{evald}", "--eval-frames", "24", "--out", str(out),
            "--cache-dir", str(cache), "--latency-runs", "0", "--no-progress"]


def test_naive_int8_fails_the_gate_and_writes_no_model(tmp_path, saturating_model, calib_folder, eval_folder, capsys):
    out = tmp_path / "sat.int8.onnx"
    code = cli_main(_args(saturating_model, calib_folder, eval_folder, out, tmp_path / "cache"))
    text = capsys.readouterr().out
    assert code == 1, text
    assert "GATE FAILED" in text and "--auto" in text and "--keep-first-last-float" in text
    assert not out.exists() and not (tmp_path / "sat.int8-cpu.onnx").exists()
    report = json.loads((tmp_path / "sat.int8.report.json").read_text())
    assert report["passed"] is False
    drops = report["best"]["gate"]["variants"][0]["drop_points"]
    assert drops[1] > 50 and drops[2] > 50  # "mid" and "bright" vanish


def test_auto_tries_the_other_methods_then_keeps_the_head_in_float(tmp_path, saturating_model, calib_folder,
                                                                    eval_folder, capsys):
    out = tmp_path / "sat.int8.onnx"
    code = cli_main([*_args(saturating_model, calib_folder, eval_folder, out, tmp_path / "cache"), "--auto"])
    text = capsys.readouterr().out
    assert code == 0, text
    report = json.loads((tmp_path / "sat.int8.report.json").read_text())
    remedies = [(a["remedy"], a["passed"]) for a in report["attempts"]]
    assert remedies == [("initial", False), ("method", False), ("method", False), ("first_last", True)]
    assert {a["method"] for a in report["attempts"][:3]} == {"entropy", "minmax", "percentile"}
    assert report["chosen"]["exclude"] == ["first_conv", "head"]
    assert "--auto chose" in text and "first/last layers in float" in text
    for v in report["chosen"]["gate"]["variants"]:
        assert v["passed"] and max(d for d in v["drop_points"] if d is not None) <= 1.0
    # the written file is TensorRT-legal, keeps the head in float, and says so
    assert validate_model(out) == []
    assert float_nodes(out, ["first_conv", "mid_conv", "fuse_conv", "head"]) == ["first_conv", "head"]
    assert read_quantization(out)["excluded_nodes"] == ["first_conv", "head"]
    # the three methods shared one statistics pass
    assert len(list((tmp_path / "cache").glob("stats-*.npz"))) == 1
    assert len(list((tmp_path / "cache").glob("ranges-*.json"))) == 3


def test_per_layer_error_points_at_the_saturating_head(tmp_path, saturating_model, calib_folder, eval_folder):
    from medstream.calibration.data import CalibrationData
    from medstream.calibration.quantize import quantize_variant, write_ranges
    from medstream.calibration.stats import collect_statistics

    contract = read_contract(str(saturating_model))
    data = CalibrationData([str(calib_folder)], 16, contract)
    stats = collect_statistics(saturating_model, "input", data.inputs(), progress=False)
    ranges = write_ranges(stats.ranges("percentile"), "percentile", tmp_path / "ranges.json")
    int8 = quantize_variant(saturating_model, ranges, "percentile", tmp_path / "sat.int8.onnx", "tensorrt")
    inputs = [x for x, _ in iter_eval_batches(contract, f"file://{eval_folder}", 4)]
    ranked = node_errors(saturating_model, int8, "input", inputs)
    assert [name for name, _ in ranked][0] == "head"
    assert ranked[0][1] > 10 * max(e for _, e in ranked[1:])
    assert {name for name, _ in ranked} == {"first_conv", "mid_conv", "fuse_conv", "head"}
