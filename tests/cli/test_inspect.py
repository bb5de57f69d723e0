"""`medstream inspect` on foreign ONNX files: the report, the proposed contract, and the proposal running.

Every model here is built in the test (tests/fixtures/foreign_models.py) without a medstream contract, in
the layouts third parties ship. The proposal must (1) guess the task and output meaning from the shapes and
the final activation, (2) mark each inferred value with ``# GUESS:``, (3) validate through medstream's own
contract code (``resolve_contract`` / ``read_model_contract``, so a schema change breaks this test, not a
user), and (4) unedited, or with class names filled in, run frames through ``medstream run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medstream.runtime.contract import resolve_contract
from medstream.runtime.models.inspect import inspect_model, proposal_yaml
from medstream.runtime.models.loader import load_model, read_model_contract
from tests.conftest import free_port
from tests.fixtures import foreign_models as fm
from tests.fixtures.models import intensity_classifier

MEDSTREAM = [sys.executable, "-m", "medstream.cli.main"]


def medstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*MEDSTREAM, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("foreign")
    return {name: fm.save(build(), folder / f"{name}.onnx") for name, build in fm.ALL.items()}


# name -> (task, primary output kind, activation or None, number of classes, input layout)
EXPECTED = {
    "softmax_segmenter": ("segmentation", "probabilities", "softmax", 4, "NCHW"),
    "sigmoid_segmenter": ("segmentation", "probabilities", "sigmoid", 2, "NCHW"),
    "plane_classifier": ("classification", "probabilities", "softmax", 14, "NCHW"),
    "yolov8_head": ("detection", "yolov8", None, 2, "NCHW"),
    "yolov5_head": ("detection", "yolov5", None, 3, "NCHW"),
    "end_to_end_detector": ("detection", "boxes", None, 1, "NCHW"),
    "keypoint_heatmaps": ("keypoints", "logits", "sigmoid", 2, "NCHW"),
    "nhwc_segmenter": ("segmentation", "logits", "softmax", 3, "NHWC"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_proposal_guesses_the_task_and_validates_through_the_contract_code(models, name):
    report = inspect_model(models[name])
    assert report.contract is None and report.contract_error is None
    assert report.proposal is not None, report.proposal_error
    task, kind, activation, n_classes, layout = EXPECTED[name]
    data = report.proposal.data
    assert data["task"] == task
    assert data["outputs"][0]["kind"] == kind
    if activation is not None:
        assert data["outputs"][0]["activation"] == activation
    assert len(data["classes"]) == n_classes
    assert data["input"]["layout"] == layout
    # The YAML a user gets parses back to the same mapping, and medstream's own validation accepts it,
    # both as config overrides (resolve_contract) and through the model loader's reader.
    text = proposal_yaml(report.proposal, models[name])
    assert yaml.safe_load(text) == data
    resolved = resolve_contract(None, yaml.safe_load(text), str(models[name]))
    assert resolved.task == task and len(resolved.classes) == n_classes
    assert read_model_contract(models[name], yaml.safe_load(text)) == resolved
    # Every guess is marked on its own line, and the task is always one (it rests on shapes only).
    marked = [line for line in text.splitlines() if not line.startswith("#") and "  # GUESS: " in line]
    assert len(marked) == len(report.proposal.guesses) >= 2
    assert next(line for line in text.splitlines() if line.startswith("task:")).count("# GUESS:") == 1
    assert any(line.startswith("classes:") and "# GUESS:" in line for line in text.splitlines())


def test_shapes_dtypes_dynamic_axes_and_ops_are_reported(models):
    report = inspect_model(models["sigmoid_segmenter"])
    (inp,), (out,) = report.inputs, report.outputs
    assert (inp.name, inp.dtype, inp.shape, inp.dynamic_axes) == ("image", "float32", ("batch", 1, 64, 64), (0,))
    assert out.shape_text() == "[batch?, 1, 64, 64]"
    assert report.activations == {"mask_prob": "Sigmoid"}
    assert report.ops == {"Conv": 1, "Sigmoid": 1} and report.opset == 17
    assert report.proposal.data["input"]["dynamic_batch"] is True
    # the YOLOv8 head's activation sits behind Concat/Transpose: not a softmax, and found through them
    e2e = inspect_model(models["end_to_end_detector"])
    assert [o["kind"] for o in e2e.proposal.data["outputs"]] == ["boxes", "scores", "labels"]
    assert e2e.outputs[2].dtype == "int64"


def test_yolo_heads_are_told_apart_by_their_anchor_count(models, tmp_path):
    # [1, 84, 6] at 64x64: 84 = 8*8 + 4*4 + 2*2 predictions, one per cell: a transposed YOLOv8 head
    # (4 + 2 classes), not a YOLOv5 head with 1 class. The same width with 3 anchors per cell is YOLOv5.
    v8 = inspect_model(fm.save(fm.yolov5_head(classes=1, anchors_per_cell=1), tmp_path / "v8t.onnx"))
    assert v8.outputs[0].shape == (1, 84, 6)
    assert v8.proposal.data["outputs"][0]["kind"] == "yolov8" and len(v8.proposal.data["classes"]) == 2
    assert "anchor-free" in v8.proposal.guesses[("task",)]
    v5 = inspect_model(fm.save(fm.yolov5_head(classes=1), tmp_path / "v5.onnx"))
    assert v5.outputs[0].shape == (1, 252, 6)
    assert v5.proposal.data["outputs"][0]["kind"] == "yolov5" and len(v5.proposal.data["classes"]) == 1
    assert "3 anchors per cell" in v5.proposal.guesses[("task",)]
    for report in (v8, v5):
        resolve_contract(None, report.proposal.data, "head.onnx")


def test_cli_prints_the_report_and_writes_the_proposal_once(models, tmp_path):
    out = tmp_path / "contract.yaml"
    r = medstream("inspect", str(models["plane_classifier"]), "--out", str(out))
    assert r.returncode == 0, r.stderr
    for text in ("input.1", "float32", "[1, 3, 224, 288]", "[1, 14]", "<- Softmax", "Gemm 1", "none embedded",
                 "task: classification  # GUESS:"):
        assert text in r.stdout, text
    assert out.is_file() and yaml.safe_load(out.read_text())["task"] == "classification"
    out.write_text(out.read_text().replace("class_0", "four_chamber"))  # the user's edit
    again = medstream("inspect", str(models["plane_classifier"]), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert "four_chamber" in out.read_text()  # not overwritten
    js = medstream("inspect", str(models["plane_classifier"]), "--json")
    assert json.loads(js.stdout)["outputs"][0]["shape"] == [1, 14]


def test_a_model_with_a_contract_shows_it_and_out_writes_it(tmp_path):
    model = fm.save(intensity_classifier(), tmp_path / "tiny.onnx")
    out = tmp_path / "embedded.yaml"
    r = medstream("inspect", str(model), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "contract:  embedded, version 1: segmentation model 'tiny-intensity'" in r.stdout
    assert "proposed contract" not in r.stdout
    assert resolve_contract(None, yaml.safe_load(out.read_text()), str(model)) == read_model_contract(model)


def test_a_model_without_an_image_input_gets_no_proposal_and_no_file(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "vec",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    model = fm.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "vec.onnx")
    assert inspect_model(model).proposal is None
    r = medstream("inspect", str(model), "--out", str(tmp_path / "c.yaml"))
    assert r.returncode == 2 and "no 4-D image input" in r.stderr
    assert not (tmp_path / "c.yaml").exists()


def _run_frames(model: Path, tmp_path: Path, config: Path | None = None, frames: int = 20) -> tuple[dict, list]:
    """``medstream run`` on ``frames`` phantom frames at 10 fps: its summary and the overlays a subscriber got."""
    import zmq

    from medstream.runtime.wire import decode_overlay

    summary = tmp_path / f"{model.stem}.summary.json"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"overlay")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)  # before the publisher binds: ZeroMQ connects when it is up
    args = [*MEDSTREAM, "--log-level", "WARNING", "run", "--model", str(model), "--source",
            f"synthetic://ultrasound?frames={frames}&fps=10", "--max-frames", str(frames), "--threads", "1",
            "--publish", endpoint, "--summary", str(summary)] + (["--config", str(config)] if config else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    overlays = []
    try:
        while proc.poll() is None:
            while sub.poll(50):
                overlays.append(decode_overlay(sub.recv_multipart()))
        while sub.poll(200):
            overlays.append(decode_overlay(sub.recv_multipart()))
        _, err = proc.communicate(timeout=60)
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return json.loads(summary.read_text()), overlays


@pytest.mark.parametrize("name,route", [("softmax_segmenter", "embed"), ("sigmoid_segmenter", "config"),
                                        ("plane_classifier", "embed-named"), ("yolov8_head", "config")])
def test_the_proposal_runs_frames_through_medstream_run(models, tmp_path, name, route):
    """inspect -> (names filled in) -> embed or config `contract:` -> `medstream run`: every frame processed."""
    proposal = tmp_path / f"{name}.yaml"
    assert medstream("inspect", str(models[name]), "--out", str(proposal)).returncode == 0
    if route == "embed-named":  # the user confirms the guesses and writes the real class names
        data = yaml.safe_load(proposal.read_text())
        names = ["4CH", "LVOT", "RVOT", "3VV", "abdomen", "femur", "head", "lips", "spine", "kidneys", "cord",
                 "profile", "nose", "other"]
        text = proposal.read_text()
        for i, real in enumerate(names):
            text = text.replace(f"name: class_{i}\n", f"name: {real}\n")
        proposal.write_text(text)
        assert [c["name"] for c in yaml.safe_load(text)["classes"]] == names and len(data["classes"]) == 14
    if route.startswith("embed"):
        model = tmp_path / f"{name}.medstream.onnx"
        r = medstream("contract", "embed", str(models[name]), "--contract", str(proposal), "--out", str(model))
        assert r.returncode == 0, r.stderr
        config = None
    else:
        model = models[name]
        config = tmp_path / f"{name}.run.yaml"
        config.write_text(yaml.safe_dump({"contract": yaml.safe_load(proposal.read_text())}))
    loaded = load_model(model, contract=yaml.safe_load(config.read_text())["contract"] if config else None)
    assert loaded.contract.task == yaml.safe_load(proposal.read_text())["task"]
    summary, overlays = _run_frames(model, tmp_path, config)
    c = summary["counters"]
    assert summary["accounting_ok"] and c["received"] == 20
    assert c["processed"] >= 1 and c["published"] == c["processed"]
    assert set(c["dropped"]) <= {"superseded"}, c["dropped"]  # never a postprocess or backend error
    # the overlays carry the task's own answer, under the proposal's model id and class names
    proposed = yaml.safe_load(proposal.read_text())
    assert overlays, "no overlay reached the subscriber"
    for o in overlays:
        assert o.model_id == proposed["model_id"] and o.task == proposed["task"]
        assert list(o.class_names) == [k["name"] for k in proposed["classes"]]
        if o.task == "classification":
            assert 0 <= o.label < 14 and len(o.probabilities) == 14
            assert abs(float(sum(o.probabilities)) - 1.0) < 1e-3
        elif o.task == "detection":
            assert o.boxes is not None and o.boxes.ndim == 2 and o.boxes.shape[1] == 6
        else:
            assert o.mask.ndim == 2 and int(o.mask.max()) < len(proposed["classes"])
