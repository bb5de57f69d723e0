"""The accuracy oracle for classifiers and detectors: what production publishes, scored against truth masks.

Each frame goes through the runtime's :class:`~medstream.runtime.preprocess.Preprocessor`, the backend and the
model's own output decoder (:func:`medstream.runtime.decoders.make_decoder`), exactly as ``medstream run``
does, so the label or boxes scored are those a surgeon would see. Ground truth comes from the frame's truth
class map by a rule of :mod:`medstream.runtime.task_truth` (the one the contract records in
``provenance.truth_rule``, or ``--truth-rule``).

Classification: accuracy, balanced accuracy, per-class precision / recall / F1 and the confusion matrix
``C[truth, predicted]`` (counts), all from the same counts. A class never predicted has precision undefined
(reported as none), never a silent 0 or 1; its F1 (``2TP / (2TP + FP + FN)``) is 0 when the truth holds it.

Detection: COCO average precision by pycocotools (the reference implementation of the metric; ``pip install
'medstream[eval]'``): AP@0.5, AP@0.5:0.95 (mean over IoU 0.50, 0.55, ..., 0.95, 101-point interpolated
precision), per class, and recall at the same thresholds. To trace the whole precision/recall curve the
decoder keeps boxes down to :data:`AP_SCORE_FLOOR` (COCO practice; NMS keeps the same boxes above the
model's threshold, since a box is only ever suppressed by a better one). Beside AP, the operating point:
precision and recall at IoU 0.5 of the boxes at or above the contract's ``decode.score_threshold``, which
is what ``medstream run`` publishes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medstream.runtime.errors import ConfigError, ContractError, require
from medstream.runtime.evaluation import iter_frames_with_truth
from medstream.runtime.files import sha256_file
from medstream.runtime.preprocess import Preprocessor
from medstream.runtime.task_truth import TruthRule, rule_for_model, truth_boxes, truth_label

#: Lowest box score kept while scoring AP (COCO evaluations keep all boxes; 0.01 drops only noise).
AP_SCORE_FLOOR = 0.01


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _f(v: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.4f}"


# ------------------------------------------------------------------------------------ classification
def confusion_from_labels(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[truth, predicted]`` counts of two label vectors."""
    t, p = np.asarray(truth, np.int64), np.asarray(predicted, np.int64)
    if t.shape != p.shape:
        raise ContractError(f"{t.size} truth labels but {p.size} predictions", "score the same frames")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ContractError(f"a label is outside 0..{n_classes - 1}", "check the class list")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_scores(conf: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy and per-class precision/recall/F1 from a confusion matrix (None where undefined)."""
    conf = np.asarray(conf, np.int64)
    tp = np.diag(conf).astype(np.float64)
    predicted, actual = conf.sum(axis=0), conf.sum(axis=1)
    precision = [tp[i] / predicted[i] if predicted[i] else None for i in range(len(tp))]
    recall = [tp[i] / actual[i] if actual[i] else None for i in range(len(tp))]
    fp, fn = predicted - tp, actual - tp
    # F1 = 2TP / (2TP + FP + FN): 0 for a class present but never found (or only falsely predicted); undefined
    # only for a class neither present nor predicted.
    f1 = [float(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])) if 2 * tp[i] + fp[i] + fn[i] > 0 else None
          for i in range(len(tp))]
    total = int(conf.sum())
    present = [r for r in recall if r is not None]
    defined_f1 = [x for x in f1 if x is not None]
    return {"accuracy": float(tp.sum() / total) if total else None,
            "balanced_accuracy": float(np.mean(present)) if present else None,
            "macro_f1": float(np.mean(defined_f1)) if defined_f1 else None,
            "precision": precision, "recall": recall, "f1": f1}


class _ReportText:
    """What every task report prints and serialises the same way (the fields are the dataclasses' own)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _header(self, answers: str) -> list[str]:
        r: Any = self
        return [f"model    {r.model_id}  ({r.model_path}, sha256 {r.model_sha256[:12]}...)",
                f"data     {r.data_uri}  ({r.frames} frames; {answers} by truth rule {r.truth_rule})",
                f"backend  {r.backend.get('backend', '?')} on {r.backend.get('device', '?')}, "
                f"{r.compute_ms_per_frame:.1f} ms/frame compute", ""]


@dataclass
class ClassificationReport(_ReportText):
    """What :func:`evaluate_task` measured on a classifier; ``to_table()`` for people, ``to_json()`` for machines."""

    model_path: str
    model_id: str
    model_sha256: str
    backend: dict[str, Any]
    data_uri: str
    truth_rule: str
    frames: int
    classes: list[str]
    accuracy: float | None
    balanced_accuracy: float | None
    macro_f1: float | None
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    support: list[int]
    confusion: list[list[int]]
    compute_ms_per_frame: float
    task: str = "classification"
    notes: list[str] = field(default_factory=list)

    def headline_metrics(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy, "macro_f1": self.macro_f1,
                "per_class": {c: {"precision": p, "recall": r, "f1": f, "frames": s} for c, p, r, f, s in
                              zip(self.classes, self.precision, self.recall, self.f1, self.support, strict=True)},
                "confusion": self.confusion}

    def metric(self, name: str) -> float | None:
        """``accuracy``, ``balanced_accuracy``, ``macro_f1``, or ``f1:CLASS`` / ``precision:CLASS`` / ``recall:CLASS``."""
        if name in ("accuracy", "balanced_accuracy", "macro_f1"):
            return getattr(self, name)
        kind, _, cls = name.partition(":")
        if kind in ("f1", "precision", "recall") and cls in self.classes:
            return getattr(self, kind)[self.classes.index(cls)]
        raise ConfigError(f"no classification metric {name!r}",
                          f"use accuracy, balanced_accuracy, macro_f1 or f1:/precision:/recall: with {self.classes}")

    def to_table(self) -> str:
        width = max(12, *(len(c) + 2 for c in self.classes))
        lines = [*self._header("labels"),
                 f"{'class':<{width}}{'precision':>10}{'recall':>10}{'F1':>10}{'frames':>8}"]
        for i, c in enumerate(self.classes):
            lines.append(f"{c:<{width}}{_f(self.precision[i], 10)}{_f(self.recall[i], 10)}{_f(self.f1[i], 10)}"
                         f"{self.support[i]:>8}")
        lines += ["", "confusion (rows: truth, columns: predicted)",
                  f"{'':<{width}}" + "".join(f"{c[:10]:>11}" for c in self.classes)]
        for i, c in enumerate(self.classes):
            lines.append(f"{c:<{width}}" + "".join(f"{v:>11}" for v in self.confusion[i]))
        lines += ["", f"accuracy {_f(self.accuracy, 0).strip()}   balanced accuracy "
                      f"{_f(self.balanced_accuracy, 0).strip()}   macro F1 {_f(self.macro_f1, 0).strip()}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ detection
def coco_average_precision(truth: list[np.ndarray], detections: list[np.ndarray], n_classes: int,
                           frame_sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """COCO box AP by pycocotools.

    Parameters
    ----------
    truth
        Per image ``(K, 5)`` rows ``x0, y0, x1, y1, class``.
    detections
        Per image ``(M, 6)`` rows ``x0, y0, x1, y1, class, score`` (the overlay's ``boxes``).

    Returns ``ap50``, ``ap50_95``, ``ar100`` (recall over IoU 0.5:0.95, up to 100 boxes), per-class ``ap50`` and
    ``ap50_95`` (None for a class with no truth box), and the COCOeval object's ``eval_images`` for operating
    points. With no detection at all every AP is 0 (pycocotools cannot load an empty result list).
    """
    require("pycocotools", "eval", "detection average precision (COCO AP)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations = [], []
    for i, boxes in enumerate(truth):
        h, w = frame_sizes[i] if frame_sizes else (0, 0)
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for x0, y0, x1, y1, c in np.asarray(boxes, np.float64).reshape(-1, 5):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                                "iscrowd": 0})
    has_truth = [any(a["category_id"] == c + 1 for a in annotations) for c in range(n_classes)]
    results = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)}
               for i, dets in enumerate(detections)
               for x0, y0, x1, y1, c, s in np.asarray(dets, np.float64).reshape(-1, 6)]
    zero = {"ap50": 0.0, "ap50_95": 0.0, "ar100": 0.0, "per_class_ap50": [0.0 if t else None for t in has_truth],
            "per_class_ap50_95": [0.0 if t else None for t in has_truth], "eval_images": []}
    if not annotations:
        raise ConfigError("no truth box in the evaluation frames: AP is undefined",
                          "evaluate on frames that contain the objects (more frames, or other seeds)")
    if not results:
        return zero
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, classes, area ranges, max dets]

    def ap(k: int, t: slice) -> float | None:
        if not has_truth[k]:
            return None
        p = precision[t, :, k, 0, -1]
        p = p[p > -1]
        return float(p.mean()) if p.size else 0.0

    return {"ap50": float(max(ev.stats[1], 0.0)), "ap50_95": float(max(ev.stats[0], 0.0)),
            "ar100": float(max(ev.stats[8], 0.0)),
            "per_class_ap50": [ap(k, slice(0, 1)) for k in range(n_classes)],
            "per_class_ap50_95": [ap(k, slice(None)) for k in range(n_classes)],
            "eval_images": ev.evalImgs}


def operating_point(eval_images: list[Any], n_classes: int, score_threshold: float,
                    truth: list[np.ndarray]) -> tuple[list[float | None], list[float | None]]:
    """Per-class precision and recall at IoU 0.5 of the boxes scoring >= ``score_threshold``, from COCOeval's
    matches (greedy by score, so thresholding after matching equals matching the thresholded boxes)."""
    tp = np.zeros(n_classes)
    fp = np.zeros(n_classes)
    n_truth = np.zeros(n_classes)
    for boxes in truth:
        for c in np.asarray(boxes).reshape(-1, 5)[:, 4].astype(int):
            n_truth[c] += 1
    for e in eval_images:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        k = e["category_id"] - 1
        scores = np.asarray(e["dtScores"])
        matched = np.asarray(e["dtMatches"])[0] > 0 if len(scores) else np.zeros(0, bool)
        keep = scores >= score_threshold
        tp[k] += np.count_nonzero(matched & keep)
        fp[k] += np.count_nonzero(~matched & keep)
    precision = [float(tp[k] / (tp[k] + fp[k])) if tp[k] + fp[k] else None for k in range(n_classes)]
    recall = [float(tp[k] / n_truth[k]) if n_truth[k] else None for k in range(n_classes)]
    return precision, recall


@dataclass
class DetectionReport(_ReportText):
    """What :func:`evaluate_task` measured on a detector."""

    model_path: str
    model_id: str
    model_sha256: str
    backend: dict[str, Any]
    data_uri: str
    truth_rule: str
    frames: int
    classes: list[str]
    ap50: float
    ap50_95: float
    ar100: float
    per_class_ap50: list[float | None]
    per_class_ap50_95: list[float | None]
    truth_boxes: list[int]
    score_threshold: float
    precision_at_threshold: list[float | None]
    recall_at_threshold: list[float | None]
    compute_ms_per_frame: float
    task: str = "detection"
    notes: list[str] = field(default_factory=list)

    def headline_metrics(self) -> dict[str, Any]:
        return {"ap50": self.ap50, "ap50_95": self.ap50_95, "ar100": self.ar100,
                "per_class": {c: {"ap50": a, "ap50_95": b, "truth_boxes": n, "precision_at_threshold": p,
                                  "recall_at_threshold": r}
                              for c, a, b, n, p, r in zip(self.classes, self.per_class_ap50, self.per_class_ap50_95,
                                                          self.truth_boxes, self.precision_at_threshold,
                                                          self.recall_at_threshold, strict=True)},
                "score_threshold": self.score_threshold}

    def metric(self, name: str) -> float | None:
        """``ap50``, ``ap50_95``, ``ar100``, or ``ap50:CLASS`` / ``ap50_95:CLASS``."""
        if name in ("ap50", "ap50_95", "ar100"):
            return getattr(self, name)
        kind, _, cls = name.partition(":")
        if kind in ("ap50", "ap50_95") and cls in self.classes:
            return getattr(self, f"per_class_{kind}")[self.classes.index(cls)]
        raise ConfigError(f"no detection metric {name!r}", f"use ap50, ap50_95, ar100 or ap50:/ap50_95: with {self.classes}")

    def to_table(self) -> str:
        width = max(12, *(len(c) + 2 for c in self.classes))
        lines = [*self._header("boxes"),
                 f"{'class':<{width}}{'AP@0.5':>9}{'AP@.5:.95':>11}{'boxes':>7}"
                 f"{'P@thr':>9}{'R@thr':>9}   (P/R: IoU 0.5, score >= {self.score_threshold:g})"]
        for i, c in enumerate(self.classes):
            lines.append(f"{c:<{width}}{_f(self.per_class_ap50[i], 9)}{_f(self.per_class_ap50_95[i], 11)}"
                         f"{self.truth_boxes[i]:>7}{_f(self.precision_at_threshold[i], 9)}"
                         f"{_f(self.recall_at_threshold[i], 9)}")
        lines += ["", f"AP@0.5 {self.ap50:.4f}   AP@0.5:0.95 {self.ap50_95:.4f}   AR@100 {self.ar100:.4f}   "
                      "(COCO, pycocotools, mean over classes)"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ running
def _truth_in_roi(mask: np.ndarray, roi: tuple[int, int, int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    if roi is None:
        return mask, (0, 0)
    x, y, w, h = roi
    return mask[y:y + h, x:x + w], (x, y)


def evaluate_task(loaded: Any, data_uri: str, frames: int, *, truth_rule: str | None = None,
                  roi: tuple[int, int, int, int] | None = None, **backend_options: Any) -> Any:
    """Score a classification or detection model (a :class:`~medstream.runtime.models.loader.LoadedModel`)."""
    from medstream.runtime.backends import load_backend
    from medstream.runtime.decoders import make_decoder, refine

    contract = loaded.contract
    recorded = getattr(contract.provenance, "truth_rule", None)
    rule: TruthRule = rule_for_model(contract.task, contract.class_names, recorded, truth_rule)
    detection = contract.task == "detection"
    scoring = contract
    if detection:  # keep low-scoring boxes so AP sees the whole precision/recall curve (module docstring)
        floor = min(AP_SCORE_FLOOR, contract.decode.score_threshold)
        scoring = contract.model_copy(update={"decode": contract.decode.model_copy(update={"score_threshold": floor})})
    engine = load_backend(loaded, **backend_options)
    engine.activate()
    pre = Preprocessor(contract, roi=roi)
    decoder = make_decoder(scoring)
    n = len(contract.classes)
    truths: list[Any] = []
    answers: list[Any] = []
    sizes: list[tuple[int, int]] = []
    compute_ms = 0.0
    try:
        engine.warm_up(2)
        first = True
        for image, mask, color in iter_frames_with_truth(data_uri, frames):
            outputs = engine.infer({contract.input.name: pre(image, color)})
            compute_ms += engine.last_compute_ms
            outputs = {k: np.asarray(v) for k, v in outputs.items()}
            if first:
                decoder, first = refine(decoder, outputs), False
            decoded = decoder(outputs, image.shape[:2], roi)
            sub, (ox, oy) = _truth_in_roi(mask, roi)
            sizes.append(image.shape[:2])
            if detection:
                boxes = truth_boxes(rule, sub)
                boxes[:, [0, 2]] += ox
                boxes[:, [1, 3]] += oy
                truths.append(boxes)
                answers.append(decoded.boxes if decoded.boxes is not None else np.zeros((0, 6), np.float32))
            else:
                truths.append(truth_label(rule, sub))
                answers.append(decoded.label)
        described = engine.describe()
    finally:
        engine.deactivate()
    if not truths:
        raise ConfigError(f"no frames could be read from {data_uri}", "check the data URI or folder")
    common = {"model_path": str(loaded.path), "model_id": contract.model_id, "model_sha256": sha256_file(loaded.path),
              "backend": {k: v for k, v in described.items() if isinstance(v, str | int | float | list)},
              "data_uri": data_uri, "truth_rule": rule.name, "frames": len(truths),
              "classes": list(contract.class_names), "compute_ms_per_frame": compute_ms / len(truths)}
    if detection:
        ap = coco_average_precision(truths, answers, n, sizes)
        thr = contract.decode.score_threshold
        prec, rec = operating_point(ap["eval_images"], n, thr, truths)
        counts = np.bincount(np.concatenate([t[:, 4] for t in truths]).astype(int), minlength=n).tolist()
        return DetectionReport(**common, ap50=ap["ap50"], ap50_95=ap["ap50_95"], ar100=ap["ar100"],
                               per_class_ap50=ap["per_class_ap50"], per_class_ap50_95=ap["per_class_ap50_95"],
                               truth_boxes=counts, score_threshold=thr, precision_at_threshold=prec,
                               recall_at_threshold=rec)
    conf = confusion_from_labels(np.array(truths), np.array(answers), n)
    scores = classification_scores(conf)
    notes = [f"class {c} never occurs in the truth of these frames: its recall and F1 are undefined"
             for c, r in zip(contract.class_names, scores["recall"], strict=True) if r is None]
    return ClassificationReport(**common, accuracy=scores["accuracy"], balanced_accuracy=scores["balanced_accuracy"],
                                macro_f1=scores["macro_f1"], precision=[_num(p) for p in scores["precision"]],
                                recall=[_num(r) for r in scores["recall"]], f1=[_num(f) for f in scores["f1"]],
                                support=conf.sum(axis=1).tolist(), confusion=conf.tolist(), notes=notes)


__all__ = ["AP_SCORE_FLOOR", "ClassificationReport", "DetectionReport", "classification_scores",
           "coco_average_precision", "confusion_from_labels", "evaluate_task", "operating_point"]
