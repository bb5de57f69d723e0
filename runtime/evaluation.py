"""The accuracy oracle: Dice and IoU per class of a model on frames with ground truth.

``medstream evaluate``, the reference-model tests and the INT8 calibration checks all measure
accuracy here, through the runtime's own :class:`~medstream.runtime.preprocess.Preprocessor` and
:class:`~medstream.runtime.postprocess.Postprocessor`, so the number reported is the accuracy of what
production runs, not of a training-time reimplementation. This module never imports torch.

Which number is the headline
----------------------------
Per class, Dice and IoU are computed from true/false positives and false negatives **accumulated over
all frames** (one big confusion matrix). That is the standard for thin structures such as needles and
guidewires: a frame where the needle is 40 pixels contributes 40 pixels' worth, instead of one
frame's worth of a ratio that swings from 0 to 1 on a handful of pixels. The mean of per-frame Dice
over the frames where the class is present in the truth is reported beside it, because it shows
whether errors concentrate on a few frames. "Mean foreground Dice" is the mean of the accumulated
Dice over the non-background classes.

Data
----
Frames with truth are read by :func:`medstream.runtime.sources.read_labelled_frames` (this module reads
no file and opens no source itself), so ``--data`` takes:

* ``synthetic://ultrasound?seed=10000`` (or ``fluoroscopy``): the phantom, with every parameter of the
  ``synthetic://`` source (``width``, ``height``, ``seed``, ``probe``, ``start``...), read unpaced unless
  ``fps`` is given. ``scenes=K`` spreads the frames over seeds ``seed .. seed+K-1`` (a seed is one
  anatomy; several give a fairer number), and ``stride=S`` takes every S-th frame. Held-out evaluation
  uses seeds >= 10000, which training never uses.
* A folder of frames with truth masks: a ``medstream record`` folder (``NNNNNNNN.npy`` +
  ``NNNNNNNN.truth.npy`` + ``NNNNNNNN.json`` header), ``images/`` + ``masks/`` sub-folders with matching
  file stems, ``NAME.npy`` next to ``NAME_mask.npy`` (``.png`` works too), or ``.npz`` files holding
  ``image`` and ``mask`` arrays (:mod:`medstream.runtime.sources.folder_format`).
* Any other source URI whose frames carry ``truth``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError, ContractError
from medstream.runtime.files import sha256_file as file_sha256
from medstream.runtime.postprocess import Postprocessor
from medstream.runtime.preprocess import Preprocessor
from medstream.runtime.sources import read_labelled_frames
from medstream.runtime.sources.reading import (  # re-exported (training uses them)
    find_image_mask_pairs,
    load_pair,
)


# ------------------------------------------------------------------------------------ metrics
def confusion_from_masks(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix ``C[truth_class, predicted_class]`` (int64 pixel counts) of two class maps.

    Raises
    ------
    ContractError
        When the masks differ in shape or hold class ids outside ``0 .. n_classes-1``.
    """
    if pred.shape != truth.shape:
        raise ContractError(f"prediction {pred.shape} and truth {truth.shape} masks differ in shape",
                            "resize the truth to the model's output resolution (INTER_NEAREST) first")
    p = pred.ravel().astype(np.int64, copy=False)
    t = truth.ravel().astype(np.int64, copy=False)
    for name, arr in (("prediction", p), ("truth", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ContractError(f"{name} mask holds class id {int(arr.max())}, but the model has {n_classes} classes",
                                "check the contract's class list against the masks")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def dice_iou_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU from a confusion matrix; NaN where a class is neither present nor predicted."""
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    return dice, iou


# ------------------------------------------------------------------------------------ data
def iter_frames_with_truth(data_uri: str, frames: int) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """Up to ``frames`` tuples ``(image, truth mask, colour order)`` from a data URI (see module doc).

    The frames come from :func:`medstream.runtime.sources.read_labelled_frames`, the one reader of
    frames with truth; this only unpacks them.
    """
    for frame in read_labelled_frames(data_uri, frames):
        yield frame.image, frame.truth, frame.color_order


def truth_at(mask: np.ndarray, height: int, width: int, roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The truth mask cropped to ``roi`` and resized to ``height x width`` with INTER_NEAREST (class ids stay ids)."""
    if roi is not None:
        x, y, w, h = roi
        mask = mask[y:y + h, x:x + w]
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def iter_eval_batches(contract: ModelContract, data_uri: str, frames: int, batch: int = 1,
                      roi: tuple[int, int, int, int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Model inputs with their truth: ``(input (B, ...) array, truth (B, H, W) uint8)`` at the model's resolution.

    The input is made by the runtime's :class:`Preprocessor` (a fresh array each time, safe to keep),
    so calibration collects statistics on exactly what the model sees in production.
    """
    pre = Preprocessor(contract, roi=roi)
    h, w = contract.input.height, contract.input.width
    inputs: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    for image, mask, color in iter_frames_with_truth(data_uri, frames):
        inputs.append(pre(image, color).copy())
        truths.append(truth_at(mask, h, w, roi))
        if len(inputs) == batch:
            yield np.concatenate(inputs, axis=0), np.stack(truths)
            inputs, truths = [], []
    if inputs:
        yield np.concatenate(inputs, axis=0), np.stack(truths)


class SegmentationMasker:
    """The class map production publishes, at the model's resolution, from one frame's outputs.

    Softmax outputs: the runtime's argmax (:class:`Postprocessor`). Sigmoid outputs (a 1-channel binary
    segmenter, multi-label): the model's own decoder, :class:`~medstream.runtime.decoders.SigmoidSegmentation`
    (per-channel thresholds), which the argmax would read as all background (issue 13). The first outputs
    resolve ``activation: auto`` (:func:`~medstream.runtime.decoders.refine`).
    """

    def __init__(self, contract: ModelContract) -> None:
        self.contract = contract
        self.size = (contract.input.height, contract.input.width)
        self.decoder: Any = None
        self.post: Postprocessor | None = None

    def __call__(self, outputs: dict[str, Any]) -> np.ndarray:
        if self.decoder is None:
            from medstream.runtime.decoders import SoftmaxSegmentation, make_decoder, refine

            self.decoder = refine(make_decoder(self.contract), outputs)
            if isinstance(self.decoder, SoftmaxSegmentation):
                self.post = Postprocessor(self.decoder.contract)
        if self.post is not None:
            return self.post.class_map(outputs)
        return self.decoder(outputs, self.size, None).mask


# ------------------------------------------------------------------------------------ report
@dataclass
class ClassScores:
    """Scores of one class. ``dice``/``iou`` are accumulated over all frames (the headline)."""

    name: str
    dice: float | None
    iou: float | None
    dice_per_frame: float | None  # mean over frames where the class is present in the truth
    iou_per_frame: float | None
    true_positive_px: int
    false_positive_px: int
    false_negative_px: int
    frames_present: int  # frames whose truth contains the class
    frames_false_alarm: int  # frames predicting the class where the truth has none


@dataclass
class EvaluationReport:
    """What :func:`evaluate_model` measured; ``to_json()`` for machines, ``to_table()`` for people."""

    model_path: str
    model_id: str
    model_sha256: str
    backend: dict[str, Any]
    data_uri: str
    frames: int
    classes: list[ClassScores]
    mean_foreground_dice: float | None
    mean_foreground_iou: float | None
    pixel_accuracy: float
    confusion: list[list[int]]
    compute_ms_per_frame: float
    headline: str = "accumulated"
    notes: list[str] = field(default_factory=list)

    def dice(self, name: str) -> float | None:
        """Accumulated Dice of class ``name``."""
        return self._cls(name).dice

    def iou(self, name: str) -> float | None:
        return self._cls(name).iou

    def _cls(self, name: str) -> ClassScores:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no class {name!r}; classes are {[c.name for c in self.classes]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        def f(v: float | None) -> str:
            return "   -  " if v is None else f"{v:6.4f}"

        short = self.model_sha256[:12]
        lines = [
            f"model    {self.model_id}  ({self.model_path}, sha256 {short}...)",
            f"data     {self.data_uri}  ({self.frames} frames)",
            f"backend  {self.backend.get('backend', '?')} on {self.backend.get('device', '?')}, "
            f"{self.backend.get('precision', '?')}, {self.compute_ms_per_frame:.1f} ms/frame compute",
            "",
            f"{'class':<16}{'Dice':>8}{'IoU':>8}{'Dice/frame':>12}{'IoU/frame':>11}{'frames':>8}{'false-alarm':>13}",
        ]
        for c in self.classes:
            lines.append(f"{c.name:<16}{f(c.dice):>8}{f(c.iou):>8}{f(c.dice_per_frame):>12}{f(c.iou_per_frame):>11}"
                         f"{c.frames_present:>8}{c.frames_false_alarm:>13}")
        lines += [
            "",
            f"mean foreground Dice {f(self.mean_foreground_dice).strip()}   IoU {f(self.mean_foreground_iou).strip()}"
            f"   pixel accuracy {self.pixel_accuracy:.4f}",
            "Dice/IoU: accumulated over all frames (headline); /frame: mean over frames where the class is present.",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class _Accumulator:
    """Confusion matrix plus the per-frame sums the report needs."""

    def __init__(self, n_classes: int) -> None:
        self.n = n_classes
        self.conf = np.zeros((n_classes, n_classes), np.int64)
        self.frame_dice_sum = np.zeros(n_classes)
        self.frame_iou_sum = np.zeros(n_classes)
        self.present = np.zeros(n_classes, np.int64)
        self.false_alarm = np.zeros(n_classes, np.int64)
        self.frames = 0

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        conf = confusion_from_masks(pred, truth, self.n)
        self.conf += conf
        self.frames += 1
        in_truth = conf.sum(axis=1) > 0
        in_pred = conf.sum(axis=0) > 0
        dice, iou = dice_iou_from_confusion(conf)
        self.frame_dice_sum[in_truth] += dice[in_truth]
        self.frame_iou_sum[in_truth] += iou[in_truth]
        self.present += in_truth
        self.false_alarm += in_pred & ~in_truth

    def scores(self, names: tuple[str, ...]) -> list[ClassScores]:
        dice, iou = dice_iou_from_confusion(self.conf)
        tp = np.diag(self.conf)
        out = []
        for i, name in enumerate(names):
            k = self.present[i]
            out.append(ClassScores(
                name=name, dice=_nan_to_none(dice[i]), iou=_nan_to_none(iou[i]),
                dice_per_frame=float(self.frame_dice_sum[i] / k) if k else None,
                iou_per_frame=float(self.frame_iou_sum[i] / k) if k else None,
                true_positive_px=int(tp[i]), false_positive_px=int(self.conf[:, i].sum() - tp[i]),
                false_negative_px=int(self.conf[i, :].sum() - tp[i]),
                frames_present=int(k), frames_false_alarm=int(self.false_alarm[i]),
            ))
        return out


def evaluate_model(model_path: str | Path, data_uri: str, frames: int, backend: str = "onnxruntime",
                   contract_overrides: dict[str, Any] | None = None, batch: int = 1,
                   roi: tuple[int, int, int, int] | None = None, truth_rule: str | None = None,
                   **backend_options: Any) -> Any:
    """Run a model on ``frames`` frames with truth and score it with its task's metric.

    Segmentation: Dice/IoU per class (:class:`EvaluationReport`, below). Classification and detection
    (:mod:`medstream.runtime.evaluation_tasks`): labels or boxes come from the truth masks by the rule the
    model's contract records (``provenance.truth_rule``) or ``truth_rule``; accuracy, per-class
    precision/recall/F1 and the confusion matrix, or COCO AP@0.5 and AP@0.5:0.95 (pycocotools).

    Parameters
    ----------
    model_path
        ONNX file (or engine, for the TensorRT backend).
    data_uri
        ``synthetic://...``, a folder of frames with masks, or a source whose frames carry truth.
    frames
        How many frames to evaluate.
    backend
        ``"onnxruntime"`` (default), ``"tensorrt"`` or ``"auto"``.
    contract_overrides
        The config's ``contract:`` facts, for models without an embedded contract (or to override it).
    batch
        Frames per inference; above 1 the model must have been exported with a dynamic batch axis.
    truth_rule
        Classification/detection: the :mod:`~medstream.runtime.task_truth` rule that makes labels from truth
        masks (default: the one the model records).
    backend_options
        Passed to the backend (e.g. ``intra_op_threads=2``).
    """
    from medstream.runtime.backends import load_backend
    from medstream.runtime.models.loader import load_model

    loaded = load_model(model_path, contract=contract_overrides, backend=backend)
    path, contract = str(loaded.path), loaded.contract
    if contract.task in ("classification", "detection"):
        from medstream.runtime.evaluation_tasks import evaluate_task

        return evaluate_task(loaded, data_uri, frames, truth_rule=truth_rule, roi=roi, **backend_options)
    if contract.task != "segmentation":
        raise ContractError(f"model {path} is a {contract.task} model; evaluate scores segmentation, classification "
                            "and detection models", "score this one with your own tool")
    notes: list[str] = []
    if batch > 1 and not contract.input.dynamic_batch:
        notes.append(f"batch {batch} asked, but the model's batch axis is static: evaluated one frame at a time")
        batch = 1
    engine = load_backend(loaded, **backend_options)
    engine.activate()
    class_map = SegmentationMasker(contract)
    acc = _Accumulator(len(contract.classes))
    compute_ms = 0.0
    try:
        engine.warm_up(2)
        for inputs, truths in iter_eval_batches(contract, data_uri, frames, batch, roi):
            outputs = engine.infer({contract.input.name: inputs})
            compute_ms += engine.last_compute_ms
            for i in range(inputs.shape[0]):
                one = {k: np.asarray(v)[i:i + 1] for k, v in outputs.items()}
                pred = class_map(one)
                truth = truths[i]
                if truth.shape != pred.shape:
                    truth = cv2.resize(truth, (pred.shape[1], pred.shape[0]), interpolation=cv2.INTER_NEAREST)
                acc.add(pred, truth)
        described = engine.describe()
    finally:
        engine.deactivate()
    if acc.frames == 0:
        raise ConfigError(f"no frames could be read from {data_uri}", "check the data URI or folder")
    scores = acc.scores(contract.class_names)
    fg = scores[1:]
    fg_dice = [c.dice for c in fg if c.dice is not None]
    fg_iou = [c.iou for c in fg if c.iou is not None]
    if len(fg_dice) < len(fg):
        notes.append("some foreground classes were never present nor predicted; they are left out of the mean")
    return EvaluationReport(
        model_path=path, model_id=contract.model_id, model_sha256=file_sha256(path),
        backend={k: v for k, v in described.items() if isinstance(v, str | int | float | list)},
        data_uri=data_uri, frames=acc.frames, classes=scores,
        mean_foreground_dice=float(np.mean(fg_dice)) if fg_dice else None,
        mean_foreground_iou=float(np.mean(fg_iou)) if fg_iou else None,
        pixel_accuracy=float(np.trace(acc.conf) / max(1, acc.conf.sum())),
        confusion=acc.conf.tolist(), compute_ms_per_frame=compute_ms / acc.frames, notes=notes,
    )


__all__ = [
    "ClassScores", "EvaluationReport", "SegmentationMasker", "confusion_from_masks", "dice_iou_from_confusion", "evaluate_model",
    "file_sha256", "find_image_mask_pairs", "iter_eval_batches", "iter_frames_with_truth", "load_pair",
    "truth_at",
]
