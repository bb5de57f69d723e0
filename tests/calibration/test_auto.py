"""The accuracy gate catches an INT8 model that ruins the segmentation, and ``--auto`` repairs it.

The saturating model's head adds ``1000 x`` to every logit: harmless in float, fatal in int8 (the
output's step becomes ~8 while the logits differ by < 3), whatever the calibration method.
"""

from __future__ import annotations

import json

from medstream.calibration.quantize import float_nodes, read_quantization
from medstream.calibration.validator import validate_model
from medstream.cli.main import main as cli_main


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


def test_layer_sensitivity_points_at_the_saturating_head(tmp_path, saturating_model, calib_folder, eval_folder):
    """On failure the report ranks layers by the argmax agreement regained by keeping each in float."""
    from medstream.calibration.pipeline import calibrate
    from tests.calibration.conftest import request_for

    result = calibrate(request_for(saturating_model, tmp_path / "sat.int8.onnx", calib_folder, eval_folder,
                                   cpu_variant=False))
    assert not result.passed
    ranked = result.sensitivity
    assert [r["layer"] for r in ranked][0] == "head"
    assert ranked[0]["agreement_gain"] > 0.3 and all(r["agreement_gain"] <= 0.01 for r in ranked[1:])
    assert {r["layer"] for r in ranked} == {"first_conv", "mid_conv", "fuse_conv", "head"}
    assert any("--exclude head" in tip for tip in result.advice)


def test_auto_finds_a_bad_middle_layer_when_first_last_is_not_enough(tmp_path, calib_folder, eval_folder, capsys):
    from tests.calibration.models import save, unet_like

    model = save(unet_like(saturating_middle=True, model_id="tiny-unet-middle"), tmp_path / "mid.onnx")
    out = tmp_path / "mid.int8.onnx"
    code = cli_main([*_args(model, calib_folder, eval_folder, out, tmp_path / "cache"), "--auto", "--no-cpu-variant"])
    text = capsys.readouterr().out
    assert code == 0, text
    report = json.loads((tmp_path / "mid.int8.report.json").read_text())
    assert [(a["remedy"], a["passed"]) for a in report["attempts"]] == [
        ("initial", False), ("method", False), ("method", False), ("first_last", False), ("nodes", True)]
    assert report["chosen"]["exclude"] == ["first_conv", "head", "fuse_conv"]
    assert validate_model(out) == [] and not (tmp_path / "mid.int8-cpu.onnx").exists()
