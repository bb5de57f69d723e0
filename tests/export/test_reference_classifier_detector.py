"""The bundled needle classifier and vessel/needle detector: present, small, self-describing, accurate on held-out
phantom seeds, and publishing labels / boxes through the real pipeline (ZeroMQ on loopback, ONNX Runtime).

Accuracy floors are checked on a few dozen frames over unseen scenes (seeds >= 10000, never used in training);
runtime/models/README.md gives the 300-frame numbers and the command that measures them. Truth comes from the
phantom's class maps by the rules of medstream.runtime.task_truth (the ones the models were trained with).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from medstream.runtime.config import load_config
from medstream.runtime.contract import read_contract
from medstream.runtime.evaluation import evaluate_model
from medstream.runtime.models import BUNDLED, bundled_model_path
from medstream.runtime.sources import read_labelled_frames
from medstream.runtime.stream import build_stream
from medstream.runtime.task_truth import needle_presence_label, vessel_needle_boxes
from medstream.runtime.wire import decode_overlay

HELD_OUT = "synthetic://ultrasound?seed=10000&scenes=4&stride=45"  # 10 frames per scene, 1.5 s apart


@pytest.mark.parametrize("name,task,classes", [
    ("needle-classifier", "classification", ("no_needle", "needle")),
    ("ultrasound-detector", "detection", ("vessel", "needle")),
])
def test_bundled_task_model_is_small_and_carries_its_contract(name, task, classes):
    assert name in BUNDLED
    path = bundled_model_path(name)
    assert path.stat().st_size < 2_000_000
    contract = read_contract(path)
    assert contract.task == task and contract.class_names == classes and contract.contract_version == 2
    assert (contract.input.height, contract.input.width, contract.input.channels) == (128, 128, 1)
    prov = contract.provenance
    assert prov.truth_rule in ("needle-presence", "vessel-needle-boxes") and "phantom seeds 0-" in prov.training_data
    assert "reference_models" in prov.recipe and (path.parent / f"{path.stem}.train.json").is_file()


def test_classifier_accuracy_on_held_out_frames():
    report = evaluate_model(bundled_model_path("needle-classifier"), HELD_OUT, 40, intra_op_threads=1)
    assert report.frames == 40 and min(report.support) >= 5, report.to_table()  # both classes present
    assert report.accuracy >= 0.9 and report.macro_f1 >= 0.85, report.to_table()


def test_detector_average_precision_on_held_out_frames():
    report = evaluate_model(bundled_model_path("ultrasound-detector"), HELD_OUT, 40, intra_op_threads=1)
    assert report.frames == 40 and min(report.truth_boxes) >= 5, report.to_table()
    assert report.ap50 >= 0.85 and report.ap50_95 >= 0.5, report.to_table()
    assert all(r is not None and r >= 0.8 for r in report.recall_at_threshold), report.to_table()


def _run_and_collect(model: str, endpoint: str, uri: str, seconds: float) -> tuple[list, dict]:
    cfg = load_config(None, {"source": uri, "model": model, "publish": endpoint, "backend": "onnxruntime",
                             "threads": 1})
    pipe = build_stream(cfg)
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"overlay")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    overlays: list = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if sock.poll(50):
                parts = sock.recv_multipart()
                if parts[0] == b"overlay":
                    overlays.append(decode_overlay(parts))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    pipe.prepare()
    time.sleep(0.3)  # ZeroMQ's subscription handshake
    summary = pipe.run(duration_s=seconds)
    time.sleep(0.2)
    stop.set()
    thread.join(2)
    sock.close()
    return overlays, summary


@pytest.mark.parametrize("name", ["needle-classifier", "ultrasound-detector"])
def test_run_publishes_labels_or_boxes_that_match_the_truth(name, endpoint):
    uri = "synthetic://ultrasound?seed=10062&fps=30&frames=60&stride=29"  # 60 frames over a minute: both classes
    overlays, summary = _run_and_collect(name, endpoint, uri, 3.0)
    c = summary["counters"]
    assert summary["accounting_ok"] and c["processed"] >= 20 and len(overlays) >= 20, summary
    truth = {f.seq: f.truth for f in read_labelled_frames(uri, 60)}
    if name == "needle-classifier":
        right = 0
        for ov in overlays:
            assert ov.task == "classification" and ov.label in (0, 1)
            assert ov.probabilities is not None and abs(float(np.sum(ov.probabilities)) - 1.0) < 1e-4
            assert ov.confidence == pytest.approx(float(np.max(ov.probabilities)), abs=1e-4)
            right += int(ov.label == needle_presence_label(truth[ov.seq]))
        assert {needle_presence_label(truth[ov.seq]) for ov in overlays} == {0, 1}  # both classes were published
        assert right / len(overlays) >= 0.9
    else:
        from medstream.runtime.evaluation_tasks import coco_average_precision

        for ov in overlays:
            assert ov.task == "detection" and ov.boxes is not None and ov.boxes.shape[1] == 6
            b = ov.boxes
            assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= ov.frame_size[1]) and np.all(b[:, 3] <= ov.frame_size[0])
            assert set(b[:, 4].astype(int).tolist()) <= {0, 1} and np.all(b[:, 5] >= 0.3)
        ap = coco_average_precision([vessel_needle_boxes(truth[ov.seq]) for ov in overlays],
                                    [ov.boxes for ov in overlays], 2)
        assert ap["ap50"] >= 0.8, ap


@pytest.mark.slow
@pytest.mark.torch
def test_training_runs_end_to_end_for_a_few_steps(tmp_path):
    pytest.importorskip("torch")
    from medstream.export.tasks import TaskTrainConfig, export_task_model, train_task

    for task, rule in (("classification", "needle-presence"), ("detection", "vessel-needle-boxes")):
        cfg = TaskTrainConfig(task=task, truth_rule=rule, train_seeds=4, frames_per_seed=4, val_seeds=1,
                              val_frames_per_seed=4, steps=4, batch=4, eval_every=4, widths=(8, 8, 8, 8))
        result = train_task(cfg)
        assert result.steps_run == 4 and len(result.log) == 1
        path = tmp_path / f"{task}.onnx"
        record = export_task_model(result, path, model_id=f"tiny_{task}")
        contract = read_contract(path)
        assert contract.task == task and contract.provenance.truth_rule == rule
        assert record["export_proof"] and all(row["failing"] == 0 for row in record["export_proof"].values())
