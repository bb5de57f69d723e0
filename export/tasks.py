"""Train the classification and detection reference models on the phantom, then export them with proof.

Two small networks, each trained in a few minutes on 2 CPU cores at 128 x 128 input:

* **needle classifier** (``needle-classifier``): is a needle in the image? Classes ``no_needle``, ``needle``;
  labels from the truth mask by the ``needle-presence`` rule (:mod:`medstream.runtime.task_truth`). Output
  ``logits [1, 2]`` (softmax). The phantom has no out-of-plane needle (its needle is always drawn in the
  image plane), so "in plane / out of plane" could not be learned from its truth; presence can, and it is
  what a guidance display first needs to know.
* **vessel + needle detector** (``ultrasound-detector``): boxes around each vessel and around the needle,
  from the truth mask by the ``vessel-needle-boxes`` rule. A CenterNet-style network (per-cell class
  heatmap and box, stride 4: a 32 x 32 grid) exported as a YOLOv8-style raw head ``[1, 4 + 2, 1024]``
  (``cx, cy, w, h`` in model-input pixels, then the two class probabilities per cell), so the runtime's
  YOLOv8 decoder and OpenCV's NMS turn it into boxes. Why this layout: it has no data-dependent op in the
  graph (no TopK, no NMS), so INT8 calibration and the raw-output error bound of the gate apply to every
  value, and the ONNX Runtime vs PyTorch proof compares continuous numbers only.

  Training: focal loss on Gaussian-splatted centres (CenterNet), and box regression on every cell near a
  centre (Gaussian weight > 0.3, TTFNet style) rather than on the centre cell only; the neighbours of a
  peak then predict the same box, which NMS folds into one, instead of stray boxes.

Training frames come from phantom seeds ``0 .. train_seeds-1`` (validation 9000+, held-out evaluation
>= 10000), rendered at the synthetic source's default 256 x 256 and brought to 128 x 128 by the runtime's
own resize rule (:func:`~medstream.export.train.fit_geometry`); labels come from the full-resolution truth.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medstream.export.train import (
    HELD_OUT_SEED0,
    VALIDATION_SEED0,
    fit_geometry,
    phantom_frames,
    seed_everything,
)
from medstream.runtime.errors import ConfigError, require
from medstream.runtime.task_truth import needle_presence_label, rule_named, vessel_needle_boxes

log = logging.getLogger("medstream.train")

SOURCE_SIZE = 256  # the synthetic source's default frame size: labels are made at this resolution
STRIDE = 4  # detector grid: one cell per 4x4 model pixels


@dataclass
class TaskTrainConfig:
    """Everything that determines a classifier/detector training run (recorded in ``.train.json``)."""

    task: str = "classification"  # classification | detection
    truth_rule: str = "needle-presence"
    seed: int = 0
    size: int = 128
    train_seeds: int = 160
    frames_per_seed: int = 12
    probes: tuple[str, ...] = ("convex", "convex", "convex", "linear")
    val_seeds: int = 4
    val_frames_per_seed: int = 16
    steps: int = 600
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    eval_every: int = 200
    threads: int = 2
    widths: tuple[int, ...] = (16, 32, 48, 64)
    score_threshold: float = 0.3  # detector: the contract's decode.score_threshold
    iou_threshold: float = 0.5


# ------------------------------------------------------------------------------------------ data
@dataclass
class TaskFrames:
    """Frames at the model's size with their labels: a class id per frame, or boxes in model pixels."""

    images: np.ndarray  # (N, size, size) uint8
    labels: np.ndarray  # (N,) int64 (classification)
    boxes: list[np.ndarray]  # per frame (K, 5) x0, y0, x1, y1, class in model pixels (detection)
    description: str

    def __len__(self) -> int:
        return len(self.images)


def task_frames(config: TaskTrainConfig, seeds: range, frames_per_seed: int, rng: np.random.Generator) -> TaskFrames:
    """Phantom frames rendered at 256 x 256, labelled from that truth, resized to the model's input."""
    raw = phantom_frames("ultrasound", seeds, frames_per_seed, SOURCE_SIZE, rng, config.probes)
    n, s = len(raw), config.size
    images = np.empty((n, s, s), np.uint8)
    labels = np.empty(n, np.int64)
    boxes = []
    scale = s / SOURCE_SIZE
    for i in range(n):
        images[i], _ = fit_geometry(raw.images[i], raw.masks[i], s)
        labels[i] = needle_presence_label(raw.masks[i])
        b = vessel_needle_boxes(raw.masks[i])
        b[:, :4] *= scale
        boxes.append(b)
    return TaskFrames(images, labels, boxes, raw.description.replace(f"{SOURCE_SIZE}x{SOURCE_SIZE}",
                                                                     f"{SOURCE_SIZE}x{SOURCE_SIZE} -> {s}x{s}"))


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, offset and gamma jitter in pixel units (another scanner setting)."""
    gamma = float(np.exp(rng.uniform(-0.2, 0.2)))
    img = 255.0 * (img.astype(np.float32) / 255.0) ** gamma
    return np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12), 0, 255)


# ------------------------------------------------------------------------------------------ networks
def _conv(torch: Any, cin: int, cout: int, stride: int = 1) -> Any:
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def make_classifier(n_classes: int, widths: tuple[int, ...]) -> Any:
    """A plain CNN: per width a stride-2 and a stride-1 3x3 conv; then global mean and max pooling (the max
    keeps a thin bright needle that averaging would dilute) into one linear layer."""
    torch = require("torch", "train", "training")
    nn = torch.nn

    class NeedleClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, cin = [], 1
            for w in widths:
                layers += [_conv(torch, cin, w, 2), _conv(torch, w, w)]
                cin = w
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(2 * cin, n_classes)

        def forward(self, x: Any) -> Any:
            f = self.features(x)
            return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))

    return NeedleClassifier()


def make_detector(n_classes: int, widths: tuple[int, ...], size: int) -> Any:
    """A small encoder (strides 2-16) and decoder back to stride 4 with skips; per cell ``n_classes`` centre
    logits and 4 box values. ``forward`` returns the raw maps (training); :meth:`export_head` the YOLOv8 layout."""
    torch = require("torch", "train", "training")
    nn = torch.nn
    grid = size // STRIDE

    class VesselNeedleDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w1, w2, w3, w4 = widths
            self.e1 = nn.Sequential(_conv(torch, 1, w1, 2), _conv(torch, w1, w1))  # /2
            self.e2 = nn.Sequential(_conv(torch, w1, w2, 2), _conv(torch, w2, w2))  # /4
            self.e3 = nn.Sequential(_conv(torch, w2, w3, 2), _conv(torch, w3, w3))  # /8
            self.e4 = nn.Sequential(_conv(torch, w3, w4, 2), _conv(torch, w4, w4))  # /16
            self.d3 = _conv(torch, w4 + w3, w3)
            self.d2 = _conv(torch, w3 + w2, w2)
            self.head = nn.Sequential(_conv(torch, w2, w2), nn.Conv2d(w2, n_classes + 4, 1))
            nn.init.constant_(self.head[1].bias[:n_classes], -2.2)  # start at p ~ 0.1 (CenterNet's prior)
            ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
            self.register_buffer("cells", torch.stack([xs, ys]).float().reshape(1, 2, -1) + 0.5, persistent=False)

        def forward(self, x: Any) -> Any:
            up = nn.functional.interpolate
            f1 = self.e1(x)
            f2 = self.e2(f1)
            f3 = self.e3(f2)
            f4 = self.e4(f3)
            d3 = self.d3(torch.cat([up(f4, scale_factor=2.0, mode="nearest"), f3], dim=1))
            d2 = self.d2(torch.cat([up(d3, scale_factor=2.0, mode="nearest"), f2], dim=1))
            return self.head(d2)

    return VesselNeedleDetector()


def yolo_head(torch: Any, detector: Any, n_classes: int) -> Any:
    """Wrap a trained detector so it returns ``[N, 4 + C, A]``: ``cx, cy, w, h`` (model pixels), C probabilities."""
    nn = torch.nn

    class YoloV8Layout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = detector

        def forward(self, x: Any) -> Any:
            out = self.net(x).flatten(2)  # (N, C + 4, A)
            scores = torch.sigmoid(out[:, :n_classes])
            centre = (self.net.cells + out[:, n_classes:n_classes + 2]) * STRIDE
            wh = torch.exp(out[:, n_classes + 2:].clamp(-4.0, 4.0)) * STRIDE
            return torch.cat([centre, wh, scores], dim=1)

    return YoloV8Layout().eval()


# ------------------------------------------------------------------------------------------ detector targets
def detection_targets(boxes: list[np.ndarray], n_classes: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: centre heatmaps ``(C, g, g)``, box targets ``(4, g, g)`` (dx, dy, log w, log h in cells) and
    their weights ``(g, g)`` (the Gaussian of the box that owns the cell, 0 where none is > 0.3)."""
    n = len(boxes)
    heat = np.zeros((n, n_classes, grid, grid), np.float32)
    reg = np.zeros((n, 4, grid, grid), np.float32)
    weight = np.zeros((n, grid, grid), np.float32)
    gy, gx = np.mgrid[0:grid, 0:grid].astype(np.float32) + 0.5
    for i, frame_boxes in enumerate(boxes):
        for x0, y0, x1, y1, c in frame_boxes:
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            w, h = max((x1 - x0) / STRIDE, 0.25), max((y1 - y0) / STRIDE, 0.25)
            px, py = min(int(cx), grid - 1), min(int(cy), grid - 1)
            sx, sy = max(0.7, 0.54 * w / 6), max(0.7, 0.54 * h / 6)
            g = np.exp(-((gx - (px + 0.5)) ** 2) / (2 * sx * sx) - ((gy - (py + 0.5)) ** 2) / (2 * sy * sy))
            g[py, px] = 1.0
            np.maximum(heat[i, int(c)], g, out=heat[i, int(c)])
            own = (g > 0.3) & (g > weight[i])
            weight[i][own] = g[own]
            reg[i, 0][own] = cx - gx[own]
            reg[i, 1][own] = cy - gy[own]
            reg[i, 2][own] = np.log(w)
            reg[i, 3][own] = np.log(h)
    return heat, reg, weight


def focal_loss(torch: Any, logits: Any, target: Any) -> Any:
    """CenterNet's penalty-reduced focal loss on sigmoid heatmaps (peaks are exactly 1 in ``target``)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------------ training
@dataclass
class TaskTrainResult:
    config: dict[str, Any]
    model: Any  # the module to export (the detector already wrapped in its YOLOv8 head)
    contract_fields: dict[str, Any]
    log: list[dict[str, Any]]
    train_seconds: float
    steps_run: int
    parameters: int
    data_description: str
    environment: dict[str, Any]


def train_task(config: TaskTrainConfig, progress: Callable[[str], None] | None = None) -> TaskTrainResult:
    """Train the classifier or detector ``config`` describes; restores process-wide float state after."""
    torch = require("torch", "train", "training")
    try:
        return _train_task(config, progress)
    finally:
        torch.set_flush_denormal(False)


def _train_task(config: TaskTrainConfig, progress: Callable[[str], None] | None) -> TaskTrainResult:
    torch = require("torch", "train", "training")
    say = progress or log.info
    rule = rule_named(config.truth_rule)
    if rule.task != config.task:
        raise ConfigError(f"truth rule {rule.name} is for {rule.task}, the recipe trains {config.task}",
                          "pair a classification recipe with a classification rule (and so on)")
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    seed_everything(config.seed, config.threads)
    rng = np.random.default_rng(config.seed)
    t0 = time.perf_counter()
    train_set = task_frames(config, range(config.train_seeds), config.frames_per_seed, rng)
    val_set = task_frames(config, range(VALIDATION_SEED0, VALIDATION_SEED0 + config.val_seeds),
                          config.val_frames_per_seed, np.random.default_rng(VALIDATION_SEED0))
    mean = round(float(train_set.images.mean()) / 255.0, 3)
    std = round(max(float(train_set.images.std()) / 255.0, 1e-3), 3)
    a, b = np.float32(1.0 / 255.0 / std), np.float32(-mean / std)
    n_classes = len(rule.classes)
    balance = np.bincount(train_set.labels, minlength=2).tolist()
    say(f"data: {train_set.description}; {len(train_set)} training / {len(val_set)} validation frames "
        f"({time.perf_counter() - t0:.1f} s); needle present in {balance[1]}/{len(train_set)}; "
        f"normalisation mean {mean} std {std}")
    detection = config.task == "detection"
    grid = config.size // STRIDE
    net = make_detector(n_classes, config.widths, config.size) if detection else make_classifier(n_classes, config.widths)
    params = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    if detection:
        heat_all, reg_all, w_all = detection_targets(train_set.boxes, n_classes, grid)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    t_train = time.perf_counter()
    net.train()
    for step in range(1, config.steps + 1):
        idx = rng.integers(0, len(train_set), config.batch)
        flip = rng.random(config.batch) < 0.5
        x = np.empty((config.batch, 1, config.size, config.size), np.float32)
        for k, i in enumerate(idx):
            img = train_set.images[i][:, ::-1] if flip[k] else train_set.images[i]
            x[k, 0] = _jitter(img, rng) * a + b
        xt = torch.from_numpy(x)
        if detection:
            heat, reg, wgt = heat_all[idx].copy(), reg_all[idx].copy(), w_all[idx].copy()
            heat[flip], wgt[flip] = heat[flip][..., ::-1], wgt[flip][..., ::-1]
            reg[flip] = reg[flip][..., ::-1]
            reg[flip, 0] *= -1.0  # a flipped centre lies on the other side of its cell
            out = net(xt)
            ht, rt, wt = (torch.from_numpy(np.ascontiguousarray(v)) for v in (heat, reg, wgt))
            reg_err = torch.nn.functional.smooth_l1_loss(out[:, n_classes:], rt, reduction="none", beta=0.1).sum(1)
            loss = focal_loss(torch, out[:, :n_classes], ht) + (reg_err * wt).sum() / wt.sum().clamp(min=1.0)
        else:
            loss = torch.nn.functional.cross_entropy(net(xt), torch.from_numpy(train_set.labels[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % config.eval_every == 0 or step == config.steps:
            score = _validate(torch, net, val_set, float(a), float(b), config, n_classes)
            entry = {"step": step, "loss": float(np.mean(losses)), **score, "lr": float(scheduler.get_last_lr()[0]),
                     "elapsed_s": round(time.perf_counter() - t_train, 1)}
            history.append(entry)
            losses = []
            say(f"step {step}/{config.steps} " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                           for k, v in entry.items() if k != "step"))
    net.eval()
    train_seconds = time.perf_counter() - t_train
    model = yolo_head(torch, net, n_classes) if detection else net
    colors = {"no_needle": (0, 0, 0), "needle": (40, 220, 40), "vessel": (220, 40, 40)}
    contract_fields: dict[str, Any] = {
        "task": config.task,
        "modality": "ultrasound",
        "classes": [{"name": n, "color": list(colors.get(n, (255, 255, 255)))} for n in rule.classes],
        "input": {"color_order": "gray", "normalization": {"kind": "scale_mean_std", "scale": 1.0 / 255.0,
                                                          "mean": [mean], "std": [std]}},
        "provenance": {"training_data": train_set.description, "seed": config.seed, "training_steps": config.steps,
                       "validation_data": val_set.description, "truth_rule": rule.name,
                       "truth_rule_text": rule.description},
    }
    if detection:
        contract_fields["outputs"] = [{"name": "detections", "kind": "yolov8", "layout": "NCA", "activation": "none"}]
        contract_fields["decode"] = {"score_threshold": config.score_threshold, "iou_threshold": config.iou_threshold,
                                     "max_detections": 20, "box_format": "cxcywh"}
    else:
        contract_fields["outputs"] = [{"name": "logits", "kind": "logits", "layout": "NC", "activation": "softmax"}]
        contract_fields["decode"] = {"top_k": n_classes}
    env = {"torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "threads": config.threads, "load_average_at_start": load_at_start,
           "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    return TaskTrainResult(asdict(config), model, contract_fields, history, train_seconds, config.steps, params,
                           train_set.description, env)


def _validate(torch: Any, net: Any, val: TaskFrames, a: float, b: float, config: TaskTrainConfig,
              n_classes: int) -> dict[str, Any]:
    """Validation accuracy (classifier) or centre hit rate (detector: truth boxes whose class peaks above the
    score threshold within one cell of their centre), on whole validation frames."""
    net.eval()
    with torch.inference_mode():
        x = torch.from_numpy(val.images[:, None].astype(np.float32) * a + b)
        out = torch.cat([net(x[s:s + 32]) for s in range(0, len(x), 32)]).numpy()
    net.train()
    if config.task == "classification":
        return {"val_accuracy": float(np.mean(out.argmax(1) == val.labels))}
    heat = 1 / (1 + np.exp(-out[:, :n_classes]))
    hits, total = 0, 0
    for i, boxes in enumerate(val.boxes):
        for x0, y0, x1, y1, c in boxes:
            px, py = int((x0 + x1) / 2 / STRIDE), int((y0 + y1) / 2 / STRIDE)
            window = heat[i, int(c), max(0, py - 1):py + 2, max(0, px - 1):px + 2]
            hits += int(window.size > 0 and window.max() > config.score_threshold)
            total += 1
    return {"val_centre_recall": hits / max(total, 1)}


# ------------------------------------------------------------------------------------------ export
def export_task_model(result: TaskTrainResult, out_path: str | Path, model_id: str, *,
                      extra_provenance: dict[str, Any] | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export with proof (ONNX Runtime vs PyTorch) through :func:`~medstream.export.exporter.export_model`, write
    ``<stem>.train.json`` beside it; returns that record."""
    from medstream.export.exporter import ExportSpec, export_model

    say = progress or log.info
    out_path = Path(out_path)
    size = result.config["size"]
    fields = json.loads(json.dumps(result.contract_fields))
    fields["model_id"] = model_id
    fields["provenance"].update(extra_provenance or {})
    spec = ExportSpec(input_shape=(1, 1, size, size), layout="NCHW", input_name="image", contract=fields)
    exported = export_model(result.model, out_path, spec, torch_parameters=result.parameters)
    say(exported.proof.format())
    say(exported.card.format())
    record = {"model": out_path.name, "model_sha256": exported.card.sha256, "parameters": result.parameters,
              "macs_per_frame": exported.card.macs, "file_bytes": exported.card.size_bytes,
              "train_seconds": round(result.train_seconds, 1), "steps": result.steps_run,
              "data": result.data_description, "config": result.config, "environment": result.environment,
              "epochs": result.log, "export_proof": exported.proof.per_output()}
    out_path.with_name(out_path.stem + ".train.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


__all__ = ["HELD_OUT_SEED0", "TaskFrames", "TaskTrainConfig", "TaskTrainResult", "detection_targets",
           "export_task_model", "make_classifier", "make_detector", "task_frames", "train_task", "yolo_head"]
