"""Calibrating and evaluating models exported elsewhere: no contract inside, Constant nodes, foreign mask files.

* A torch ``InstanceNorm2d`` export (TorchScript exporter) writes the norm's parameters as ``Constant``
  nodes; ONNX Runtime's static quantizer stops on them ("Quantization parameters are not specified for
  param .../Constant_output_0") unless ``quant_pre_process`` runs first. ``calibrate`` now runs it, and
  any library exception left becomes a medstream error naming the model and the fix: never a traceback.
* ``calibrate``/``evaluate`` take the contract of such a model from ``--contract FILE.yaml`` (here:
  ``medstream inspect``'s proposal, unedited) and, without one, say so and point to ``--contract``.
* Folders whose masks are black/white (0/255) pictures or RGB images are refused naming the mask file
  and how to convert it (docs/MODEL_CONTRACT.md); mask files are never replayed as frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from medstream.cli.main import main as cli
from tests.calibration.models import blocky_frames, truth_of

torch = pytest.importorskip("torch", reason="the InstanceNorm model is exported by torch (a test extra)")


@pytest.fixture(scope="module")
def instance_norm_model(tmp_path_factory) -> Path:
    from tests.fixtures.foreign_models import instance_norm_unet

    return instance_norm_unet(tmp_path_factory.mktemp("foreign") / "in_unet.onnx")


@pytest.fixture(scope="module")
def proposed_contract(instance_norm_model, tmp_path_factory) -> Path:
    """``medstream inspect --out``'s proposal for the InstanceNorm model, unedited."""
    out = tmp_path_factory.mktemp("contract") / "in_unet.yaml"
    assert cli(["inspect", str(instance_norm_model), "--out", str(out)]) == 0
    return out


def test_the_export_has_constant_nodes_that_stop_the_bare_quantizer(instance_norm_model, calib_folder, tmp_path):
    """The precondition of the fix: torch writes Constant nodes and ORT's quantizer fails on them unaided."""
    from medstream.calibration import quantize as q
    from medstream.calibration.stats import collect_statistics
    from medstream.runtime.contract import resolve_contract
    from medstream.runtime.preprocess import Preprocessor

    graph = onnx.load(str(instance_norm_model)).graph
    assert [n.op_type for n in graph.node].count("Constant") >= 2
    assert "InstanceNormalization" in [n.op_type for n in graph.node]
    contract = resolve_contract(None, {"model_id": "m", "input": {"name": "image", "height": 64, "width": 64},
                                       "outputs": [{"name": "logits"}], "classes": [{"name": "a"}]}, "m")
    pre = Preprocessor(contract)
    inputs = (pre(np.load(p), "gray") for p in sorted(calib_folder.glob("*.npy"))[:4])
    stats = collect_statistics(instance_norm_model, "image", inputs, total=4, progress=False)
    ranges = q.write_ranges(stats.ranges("minmax", 99.99), "minmax", tmp_path / "ranges.json")
    with pytest.raises(ValueError, match="Quantization parameters are not specified"):
        q.quantize_variant(instance_norm_model, ranges, "minmax", tmp_path / "bare.int8.onnx", "tensorrt")
    prepared = q.prepare_model(instance_norm_model, tmp_path)
    assert "Constant" not in [n.op_type for n in onnx.load(str(prepared)).graph.node]


def test_calibrate_with_contract_file_ends_in_a_gate_report_not_a_traceback(
        instance_norm_model, proposed_contract, calib_folder, eval_folder, tmp_path, capsys):
    out = tmp_path / "in_unet.int8.onnx"
    rc = cli(["calibrate", "--model", str(instance_norm_model), "--contract", str(proposed_contract),
              "--data", str(calib_folder), "--eval-data", f"file://{eval_folder}", "--frames", "16",
              "--eval-frames", "24", "--latency-runs", "0", "--no-progress", "--no-cache", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc in (0, 1), captured.err  # passed or failed the gate: either way a verdict
    assert "Traceback" not in captured.err
    report = json.loads((tmp_path / "in_unet.int8.report.json").read_text())
    assert report["passed"] is (rc == 0) and report["attempts"]
    assert report["model_id"] == "in_unet"
    if rc == 0:  # the INT8 file carries the contract given on the command line
        from medstream.runtime.models.loader import read_model_contract

        assert read_model_contract(out).model_id == "in_unet"
        assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_a_quantizer_exception_becomes_an_error_naming_the_model_and_the_fix(
        instance_norm_model, proposed_contract, calib_folder, eval_folder, tmp_path, monkeypatch, capsys):
    """Skip the pre-processing (as before the fix): ORT's real ValueError must reach the user as a medstream error."""
    from medstream.calibration import quantize as q

    monkeypatch.setattr(q, "preprocess_for_quantization", lambda model, source: model)
    rc = cli(["calibrate", "--model", str(instance_norm_model), "--contract", str(proposed_contract),
              "--data", str(calib_folder), "--eval-data", f"file://{eval_folder}", "--frames", "8",
              "--eval-frames", "8", "--latency-runs", "0", "--no-progress", "--no-cache",
              "--out", str(tmp_path / "x.int8.onnx")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "a bug" not in err
    assert f"calibrating {instance_norm_model} failed while quantizing" in err
    assert "Quantization parameters are not specified" in err and "--exclude" in err


def test_calibrate_without_a_contract_points_to_the_contract_option(instance_norm_model, calib_folder, tmp_path,
                                                                     capsys):
    rc = cli(["calibrate", "--model", str(instance_norm_model), "--data", str(calib_folder),
              "--out", str(tmp_path / "x.int8.onnx"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "carries no medstream contract" in err and "--contract FILE.yaml" in err and "medstream inspect" in err
    assert "medstream export" not in err and "under 'contract:'" not in err


def test_evaluate_a_foreign_model_with_the_proposed_contract(instance_norm_model, proposed_contract, eval_folder,
                                                             capsys):
    rc = cli(["evaluate", "--model", str(instance_norm_model), "--contract", str(proposed_contract),
              "--data", str(eval_folder), "--frames", "8", "--threads", "1"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "class_1" in out.out and "Dice" in out.out


# ------------------------------------------------------------------------------------ foreign masks
def _mask_folder(folder: Path, kind: str, n: int = 3) -> Path:
    """NAME.png frames beside NAME_mask.png masks: class maps, 0/255 pictures or RGB pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(blocky_frames(n, 64, seed=50)):
        truth = (truth_of(img) > 0).astype(np.uint8)  # 2 classes: background, structure
        mask = {"ids": truth, "binary255": truth * 255,
                "rgb": cv2.merge([truth * 255] * 3), "colour": cv2.merge([truth * 30, truth * 200, truth * 90])}[kind]
        cv2.imwrite(str(folder / f"scan{i}.png"), img)
        cv2.imwrite(str(folder / f"scan{i}_mask.png"), mask)
    return folder


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-class model (background/structure) and its contract file, for the mask-folder checks."""
    from tests.fixtures.foreign_models import save, sigmoid_segmenter

    folder = tmp_path_factory.mktemp("binary")
    model = save(sigmoid_segmenter(), folder / "binary.onnx")
    contract = folder / "binary.yaml"
    assert cli(["inspect", str(model), "--out", str(contract)]) == 0
    return model, contract


def test_mask_files_are_not_replayed_as_frames(tmp_path):
    from medstream.runtime.sources import read_frames, read_labelled_frames

    folder = _mask_folder(tmp_path / "ids", "ids", n=3)
    assert len(list(read_frames(str(folder), 100))) == 3
    frames = list(read_labelled_frames(str(folder), 100))
    assert len(frames) == 3 and all(f.truth is not None and f.truth.max() == 1 for f in frames)


@pytest.mark.parametrize("kind,words", [
    ("binary255", ["holds only the values 0 and 255", "> 127"]),
    ("rgb", ["equal channels", "> 127"]),
    ("colour", ["colour-coded 3-channel image", "one class id per pixel"]),
])
def test_evaluate_refuses_picture_masks_naming_the_file_and_the_conversion(binary_model, tmp_path, capsys, kind,
                                                                             words):
    model, contract = binary_model
    folder = _mask_folder(tmp_path / kind, kind)
    rc = cli(["evaluate", "--model", str(model), "--contract", str(contract), "--data", str(folder), "--frames", "3"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(folder / "scan0_mask.png") in err and "Traceback" not in err
    for w in words:
        assert w in err, w


def test_the_documented_conversion_makes_the_folder_evaluate(binary_model, tmp_path, capsys):
    """The one-liner the error prints, run as printed: afterwards the same folder scores."""
    import subprocess
    import sys

    from medstream.runtime.sources.folder_format import BINARY_MASK_FIX

    model, contract = binary_model
    folder = _mask_folder(tmp_path / "binary", "binary255")
    code = BINARY_MASK_FIX.split('python -c "', 1)[1].split('" MASKS', 1)[0]
    subprocess.run([sys.executable, "-c", code, *map(str, sorted(folder.glob("*_mask.png")))], check=True)
    rc = cli(["evaluate", "--model", str(model), "--contract", str(contract), "--data", str(folder), "--frames", "3"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "class_1" in out.out
