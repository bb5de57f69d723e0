"""Third-party-style ONNX models built with onnx.helper, one per output layout of issue 13, and a real-stream runner.

Each builder returns ``(model, contract_dict)``: the contract as a user would write it under ``contract:`` in
the config (the models carry none, like a foreign ONNX file). The raw-head detectors output fixed tensors
(plus ``0 * mean(input)``, so the graph depends on its input) whose decode the tests redo by hand.

``python -m tests.runtime.decoders.models docs/images`` renders one overlay per task through the real
pipeline (synthetic source, ONNX Runtime, ZeroMQ, ``decode_overlay``, ``draw_overlay``) into that folder.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import zmq
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "byom", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="third-party")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _in(name: str, shape: list[Any], elem: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------------------------------ segmentation
def sigmoid_segmenter(size: int = 64, probabilities: bool = False, dynamic: bool = False):
    """``[1, 1, H, W]``: logit = 20 x - 3 (foreground where x > 0.15), or its sigmoid with ``probabilities``."""
    w = numpy_helper.from_array(np.array([20.0], np.float32).reshape(1, 1, 1, 1), "w")
    b = numpy_helper.from_array(np.array([-3.0], np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["z" if probabilities else "out"])]
    if probabilities:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["out"]))
    hw: list[Any] = ["H", "W"] if dynamic else [size, size]
    model = _model(nodes, [_in("input", [1, 1, *hw])], [_in("out", [1, 1, *hw])], [w, b])
    contract = {"model_id": "third-party-binary", "input": {"name": "input", "height": size, "width": size},
                "outputs": [{"name": "out", "kind": "probabilities" if probabilities else "logits"}],
                "classes": [{"name": "background"}, {"name": "lesion", "color": [255, 60, 60]}]}
    return model, contract


MULTI_W = np.array([20.0, -20.0, 10.0], np.float32)
MULTI_B = np.array([-3.0, 3.0, -1.2], np.float32)
MULTI_T = (0.5, 0.5, 0.6)


def multilabel_segmenter(size: int = 64):
    """3 sigmoid channels: bright (x > 0.15), dark (x < 0.15), and x > ~0.16 at threshold 0.6 (overlaps bright)."""
    w = numpy_helper.from_array(MULTI_W.reshape(3, 1, 1, 1), "w")
    b = numpy_helper.from_array(MULTI_B, "b")
    model = _model([helper.make_node("Conv", ["input", "w", "b"], ["out"])], [_in("input", [1, 1, size, size])],
                   [_in("out", [1, 3, size, size])], [w, b])
    contract = {"model_id": "third-party-multilabel", "input": {"name": "input", "height": size, "width": size},
                "outputs": [{"name": "out", "kind": "logits", "activation": "sigmoid"}],
                "classes": [{"name": "background"}, {"name": "tissue", "color": [60, 200, 60]},
                            {"name": "fluid", "color": [60, 60, 255]}, {"name": "wall", "color": [255, 200, 0]}],
                "decode": {"threshold": list(MULTI_T), "heatmap": True}}
    return model, contract


def four_channel_segmenter(size: int = 64):
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1), "w")
    model = _model([helper.make_node("Conv", ["input", "w"], ["out"])], [_in("input", [1, 1, size, size])],
                   [_in("out", [1, 4, size, size])], [w])
    contract = {"model_id": "four-channels", "input": {"name": "input", "height": size, "width": size},
                "outputs": [{"name": "out", "kind": "logits"}],
                "classes": [{"name": "background"}, {"name": "a"}]}
    return model, contract


# ------------------------------------------------------------------------------------ classification
PLANES = [f"plane{i:02d}" for i in range(14)]


def classifier(h: int = 48, w: int = 64, n: int = 14, with_cam: bool = True, seed: int = 0):
    """``[1, 3, H, W]`` RGB -> ``[1, 14]`` logits = [mean, mean^2] @ W + b; optionally a ``[1, 14, 4, 4]`` CAM."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 4, (2, n)).astype(np.float32)
    bias = rng.normal(0, 0.5, n).astype(np.float32)
    inits = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B"),
             ]
    nodes = [helper.make_node("ReduceMean", ["input"], ["m3"], axes=[2, 3], keepdims=0),  # [1, 3]
             helper.make_node("ReduceMean", ["m3"], ["m"], axes=[1], keepdims=1),         # [1, 1]
             helper.make_node("Mul", ["m", "m"], ["m2"]),
             helper.make_node("Concat", ["m", "m2"], ["f"], axis=1),                    # [1, 2]
             helper.make_node("MatMul", ["f", "W"], ["fw"]),
             helper.make_node("Add", ["fw", "B"], ["logits"])]
    outputs = [_in("logits", [1, n])]
    if with_cam:
        cam = rng.random((1, n, 4, 4)).astype(np.float32)
        inits.append(numpy_helper.from_array(cam, "cam_const"))
        nodes += [helper.make_node("Mul", ["m", "cam_zero"], ["z"]),
                  helper.make_node("Unsqueeze", ["z", "uq"], ["z4"]),
                  helper.make_node("Add", ["cam_const", "z4"], ["cam"])]
        inits += [numpy_helper.from_array(np.zeros((1, 1), np.float32), "cam_zero"),
                  numpy_helper.from_array(np.array([2, 3], np.int64), "uq")]
        outputs.append(_in("cam", [1, n, 4, 4]))
    model = _model(nodes, [_in("input", [1, 3, h, w])], outputs, inits)
    contract = {"model_id": "third-party-planes", "task": "classification",
                "input": {"name": "input", "channels": 3, "color_order": "rgb", "height": h, "width": w},
                "outputs": [{"name": "logits", "kind": "logits"}]
                + ([{"name": "cam", "kind": "heatmap", "layout": "NCHW"}] if with_cam else []),
                "classes": [{"name": p, "color": [40 + 15 * i, 200 - 10 * i, 90]} for i, p in enumerate(PLANES[:n])],
                "decode": {"top_k": 3}}
    return model, contract


# ------------------------------------------------------------------------------------ detection
DET_CLASSES = [{"name": "needle", "color": [40, 220, 40]}, {"name": "vessel", "color": [220, 40, 40]},
               {"name": "nerve", "color": [240, 220, 40]}]


def detection_candidates(size: int = 64, n_classes: int = 3, objects: int = 6, per_object: int = 4, noise: int = 20,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``boxes (A, 4)`` cx, cy, w, h in model pixels and ``scores (A, C)``: clusters of overlapping anchors
    around a few objects (NMS has work to do) plus low-scoring noise anchors."""
    rng = np.random.default_rng(seed)
    boxes, scores = [], []
    for _ in range(objects):
        cx, cy = rng.uniform(10, size - 10, 2)
        w, h = rng.uniform(6, 24, 2)
        cls = rng.integers(0, n_classes)
        for j in range(per_object):
            boxes.append([cx + rng.normal(0, 1.2), cy + rng.normal(0, 1.2), w * rng.uniform(0.9, 1.1),
                          h * rng.uniform(0.9, 1.1)])
            s = rng.uniform(0.0, 0.1, n_classes)
            s[cls] = 0.95 - 0.1 * j - rng.uniform(0, 0.05)
            scores.append(s)
    for _ in range(noise):
        boxes.append([*rng.uniform(5, size - 5, 2), *rng.uniform(3, 20, 2)])
        scores.append(rng.uniform(0.0, 0.3, n_classes))
    return np.array(boxes, np.float32), np.array(scores, np.float32)


def _const_plus_zero(value: np.ndarray, out: str, nodes: list, inits: list, source: str = "images") -> None:
    """``out = value + 0 * mean(source)``: a constant the graph still computes from its input."""
    inits += [numpy_helper.from_array(value, f"{out}_c"), numpy_helper.from_array(np.zeros(1, np.float32), f"{out}_0")]
    nodes += [helper.make_node("ReduceMean", [source], [f"{out}_m"], keepdims=0),
              helper.make_node("Mul", [f"{out}_m", f"{out}_0"], [f"{out}_z"]),
              helper.make_node("Add", [f"{out}_c", f"{out}_z"], [out])]


def yolov8_detector(size: int = 64, transposed: bool = False):
    """YOLOv8/v11 raw head ``[1, 4+C, A]`` (or ``[1, A, 4+C]`` with ``transposed``), letterboxed input."""
    boxes, scores = detection_candidates(size)
    head = np.concatenate([boxes, scores], axis=1)[None]  # [1, A, 4+C]
    if not transposed:
        head = head.transpose(0, 2, 1)
    nodes, inits = [], []
    _const_plus_zero(np.ascontiguousarray(head), "output0", nodes, inits)
    model = _model(nodes, [_in("images", [1, 3, size, size])], [_in("output0", list(head.shape))], inits)
    contract = {"model_id": "third-party-yolov8", "task": "detection",
                "input": {"name": "images", "channels": 3, "color_order": "rgb", "height": size, "width": size,
                          "resize": "letterbox", "pad_value": 114},
                "outputs": [{"name": "output0", "kind": "yolov8", **({"layout": "NAC"} if transposed else {})}],
                "classes": DET_CLASSES, "decode": {"score_threshold": 0.25, "iou_threshold": 0.45}}
    return model, contract, boxes, scores


def yolov5_detector(size: int = 64):
    """YOLOv5 raw head ``[1, A, 5+C]``: box, objectness, class scores."""
    boxes, scores = detection_candidates(size, seed=3)
    rng = np.random.default_rng(4)
    obj = np.clip(scores.max(axis=1, keepdims=True) + rng.uniform(0, 0.05, (len(boxes), 1)), 0, 1).astype(np.float32)
    cls = (scores / np.maximum(obj, 1e-6)).clip(0, 1).astype(np.float32)
    head = np.concatenate([boxes, obj, cls], axis=1)[None]
    nodes, inits = [], []
    _const_plus_zero(head, "output", nodes, inits)
    model = _model(nodes, [_in("images", [1, 3, size, size])], [_in("output", list(head.shape))], inits)
    contract = {"model_id": "third-party-yolov5", "task": "detection",
                "input": {"name": "images", "channels": 3, "color_order": "rgb", "height": size, "width": size,
                          "resize": "letterbox", "pad_value": 114},
                "outputs": [{"name": "output", "kind": "yolov5"}], "classes": DET_CLASSES}
    return model, contract, head[0]


def end_to_end_detector(size: int = 64, rows: int = 10):
    """NMS in the graph: ``boxes [1, B, 4]`` xyxy, ``scores [1, B]``, ``labels [1, B]`` (int64), zero-padded."""
    rng = np.random.default_rng(7)
    x0y0 = rng.uniform(0, size - 20, (rows, 2))
    boxes = np.concatenate([x0y0, x0y0 + rng.uniform(4, 20, (rows, 2))], axis=1).astype(np.float32)
    scores = np.sort(rng.uniform(0.3, 0.99, rows))[::-1].astype(np.float32)
    scores[-3:] = 0.0  # padding rows
    labels = rng.integers(0, 3, rows).astype(np.int64)
    nodes, inits = [], []
    _const_plus_zero(boxes[None], "det_boxes", nodes, inits)
    _const_plus_zero(scores[None], "det_scores", nodes, inits)
    inits.append(numpy_helper.from_array(labels[None], "det_labels_c"))
    nodes.append(helper.make_node("Identity", ["det_labels_c"], ["det_labels"]))
    model = _model(nodes, [_in("images", [1, 3, size, size])],
                   [_in("det_boxes", [1, rows, 4]), _in("det_scores", [1, rows]),
                    _in("det_labels", [1, rows], TensorProto.INT64)], inits)
    contract = {"model_id": "third-party-e2e", "task": "detection",
                "input": {"name": "images", "channels": 3, "color_order": "rgb", "height": size, "width": size},
                "outputs": [{"name": "det_boxes", "kind": "boxes"}, {"name": "det_scores", "kind": "scores"},
                            {"name": "det_labels", "kind": "labels"}],
                "classes": DET_CLASSES}
    return model, contract, boxes, scores, labels


# ------------------------------------------------------------------------------------ keypoints
def keypoint_model(size: int = 64, cells: int = 16):
    """Two heatmaps ``[1, 2, 16, 16]``: ``20 * avgpool(x) - 3`` (peak at the brightest cell) and a fixed peak."""
    k = size // cells
    fixed = np.full((1, 1, cells, cells), -6.0, np.float32)
    fixed[0, 0, 11, 4] = 2.5
    inits = [numpy_helper.from_array(np.array([20.0], np.float32).reshape(1, 1, 1, 1), "w"),
             numpy_helper.from_array(np.array([-3.0], np.float32), "b")]
    nodes = [helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
             helper.make_node("Conv", ["pooled", "w", "b"], ["tip"])]
    _const_plus_zero(fixed, "fixed", nodes, inits, source="input")
    nodes.append(helper.make_node("Concat", ["tip", "fixed"], ["heatmaps"], axis=1))
    model = _model(nodes, [_in("input", [1, 1, size, size])], [_in("heatmaps", [1, 2, cells, cells])], inits)
    contract = {"model_id": "third-party-needle-tip", "task": "keypoints",
                "input": {"name": "input", "height": size, "width": size},
                "outputs": [{"name": "heatmaps", "kind": "logits"}],
                "classes": [{"name": "needle_tip", "color": [40, 255, 40]}, {"name": "landmark", "color": [255, 80, 200]}],
                "decode": {"point_threshold": 0.5, "heatmap": True}}
    return model, contract


# ------------------------------------------------------------------------------------ a real stream
class Collector:
    """A SUB socket on the pipeline's publisher, keeping every overlay message decoded by ``decode_overlay``."""

    def __init__(self, endpoint: str) -> None:
        from medstream.runtime.wire import decode_overlay

        self._decode = decode_overlay
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"overlay")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.overlays: list = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(50):
                self.overlays.append(self._decode(self.sock.recv_multipart()))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def run_stream(model_path: Path, source: str, contract: dict[str, Any] | None, **extra: Any):
    """Run ``model_path`` on ``source`` through ``build_stream`` (real ONNX Runtime, real ZeroMQ); return the
    overlays as a subscriber decoded them and the run's summary."""
    from medstream.runtime.config import load_config
    from medstream.runtime.stream import build_stream

    endpoint = free_endpoint()
    flat = {"source": source, "model": str(model_path), "publish": endpoint, "backend": "onnxruntime", "threads": 1,
            **({"contract": contract} if contract is not None else {}), **extra}
    with build_stream(load_config(None, flat)) as pipe:
        col = Collector(endpoint)
        try:
            pipe.prepare()
            time.sleep(0.3)  # the subscription handshake
            summary = pipe.run()
            time.sleep(0.2)
        finally:
            col.close()
    return col.overlays, summary


def render_examples(out_dir: Path) -> list[Path]:
    """One rendered overlay per task (docs/images/overlay_*.png), each through the real stream and the wire."""
    import tempfile

    import cv2

    from medstream.runtime.render import draw_overlay
    from medstream.runtime.sources import read_frames

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cases = []
        m, c = multilabel_segmenter(128)
        cases.append(("sigmoid", save(m, t / "multi.onnx"), c, "width=128&height=128", {}))
        m, c = classifier(96, 128)
        cases.append(("classification", save(m, t / "cls.onnx"), c, "width=256&height=192",
                      {"low_confidence_below": 0.1}))
        m, c, *_ = yolov8_detector(128)
        c["decode"]["score_threshold"] = 0.5  # the noise anchors (scores up to 0.3) left out of the picture
        cases.append(("detection", save(m, t / "det.onnx"), c, "width=256&height=192", {}))
        m, c = keypoint_model(128, 32)
        cases.append(("keypoints", save(m, t / "kp.onnx"), c, "width=128&height=128", {}))
        m, c = classifier(96, 128, seed=5)
        cases.append(("low_confidence", save(m, t / "cls2.onnx"), c, "width=256&height=192",
                      {"low_confidence_below": 0.99}))
        for name, path, contract, size, extra in cases:
            uri = f"synthetic://ultrasound?fps=10&frames=3&seed=2&{size}"
            overlays, _ = run_stream(path, uri, contract, **extra)
            frames = {f.seq: f.image for f in read_frames(uri.replace("fps=10", "fps=0&motion_fps=10"), 3)}
            ov = overlays[-1]
            image = draw_overlay(frames[ov.seq], ov)
            out = out_dir / f"overlay_{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), image)
            written.append(out)
    return written


if __name__ == "__main__":
    for p in render_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")):
        print(p)
