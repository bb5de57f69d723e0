"""The accuracy gate: an INT8 model ships only if it segments as well as its FP32 original.

Both models run on the same held-out frames with ground truth, read and preprocessed by the
accuracy oracle (:func:`medstream.runtime.evaluation.iter_eval_batches`, the runtime's own
preprocessing) and scored by its confusion matrices (:func:`~medstream.runtime.evaluation.confusion_from_masks`,
accumulated over all frames, the headline Dice of ``medstream evaluate``). The class map is made by
the runtime's :class:`~medstream.runtime.postprocess.Postprocessor`, as in production.

Reported per INT8 file:

* per-class Dice (and IoU), FP32 vs INT8, and the drop in points (1 point = 0.01 Dice);
* argmax agreement: the fraction of pixels where INT8 and FP32 pick the same class (truth-free,
  and the first number to fall when quantization hurts);
* logit error of the primary output: max and mean absolute difference, and the same relative to
  the FP32 logits' max and mean magnitude.

The gate passes when no class loses more than ``max_dice_drop`` points **and** the raw outputs stay
close: the relative L2 error of every answer output, ``||int8 - fp32|| / ||fp32||`` over all evaluation
frames, at most ``max_output_error`` (default 0.10; the bundled U-Nets' INT8 files measure about 0.03).
Classes absent from both truth and prediction (metric undefined) are not judged.

Every task is scored with its own metric (issue 13), on the answer production publishes (the model's
output decoder, :func:`medstream.runtime.decoders.make_decoder`, not a bare argmax):

* segmentation: Dice per class (softmax argmax, or per-channel sigmoid thresholds);
* classification: F1 per class of the decoded label (truth by the contract's ``provenance.truth_rule``,
  :mod:`medstream.runtime.task_truth`); agreement = frames whose label INT8 and FP32 agree on;
* detection: COCO AP@0.5 per class (pycocotools) of the decoded boxes; agreement = frames whose INT8 boxes
  carry the same classes as FP32's.

Classification and detection are scored in model-input pixels (truth resized as for segmentation).

A gate never passes on what it cannot score: it **refuses** (:class:`GateRefused`, before any INT8 file
is made) when the FP32 model scores 0 on a class the truth contains, or has no class it can judge (the
issue-13 case: a sigmoid segmenter argmaxed to all background had Dice 0 -> 0 and passed).

Which layers hurt most is measured in :mod:`medstream.calibration.pipeline` (leave-one-out: the
argmax agreement gained by keeping each layer in float), with :class:`ModelRun` on a few frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError, MedstreamError
from medstream.runtime.evaluation import confusion_from_masks, dice_iou_from_confusion, iter_eval_batches
from medstream.runtime.postprocess import Postprocessor

DEFAULT_MAX_DICE_DROP = 1.0  # points
#: Largest relative L2 error of the raw answer outputs an INT8 file may have (the U-Nets measure ~0.03).
DEFAULT_MAX_OUTPUT_ERROR = 0.10
#: The metric the gate judges per task.
TASK_METRIC = {"segmentation": "Dice", "classification": "F1", "detection": "AP@0.5"}


class GateRefused(MedstreamError):
    """The FP32 model's outputs cannot be scored on the evaluation frames: no INT8 verdict would mean anything."""
#: Above this many bytes of FP32 reference logits, keep them as float16 (logit error then has ~1e-3 relative noise).
_REFERENCE_BUDGET_BYTES = 1 << 30


@dataclass
class EvalSet:
    """Held-out frames, read and preprocessed once, reused for every model the gate scores."""

    uri: str
    inputs: list[np.ndarray]
    truths: list[np.ndarray]

    @classmethod
    def load(cls, contract: ModelContract, uri: str, frames: int,
             roi: tuple[int, int, int, int] | None = None) -> EvalSet:
        inputs, truths = [], []
        for x, t in iter_eval_batches(contract, uri, frames, batch=1, roi=roi):
            inputs.append(x)
            truths.append(t[0])
        if not inputs:
            raise ConfigError(f"no evaluation frames could be read from {uri}",
                              "check --eval-data (it needs frames with ground truth)")
        return cls(uri=uri, inputs=inputs, truths=truths)

    @property
    def frames(self) -> int:
        return len(self.inputs)


def _session(model_path: str | Path, threads: int | None):
    from medstream.runtime.backends.onnxruntime_backend import make_session

    return make_session(str(model_path), ["CPUExecutionProvider"], threads)


class _Answers:
    """Turns one frame's outputs into the task's answer, as production decodes them (see the module docstring)."""

    def __init__(self, contract: ModelContract) -> None:
        from medstream.runtime.decoders import SoftmaxSegmentation, make_decoder

        self.contract = contract
        self.task = contract.task
        self.size = (contract.input.height, contract.input.width)
        scoring = contract
        if self.task == "detection":  # AP needs the whole precision/recall curve (evaluation_tasks.AP_SCORE_FLOOR)
            from medstream.runtime.evaluation_tasks import AP_SCORE_FLOOR

            floor = min(AP_SCORE_FLOOR, contract.decode.score_threshold)
            scoring = contract.model_copy(update={"decode": contract.decode.model_copy(
                update={"score_threshold": floor})})
        self.decoder = make_decoder(scoring)
        self.softmax = SoftmaxSegmentation
        self.post: Postprocessor | None = None
        self.checked = False

    def __call__(self, outputs: dict[str, np.ndarray]) -> Any:
        from medstream.runtime.decoders import refine

        if not self.checked:  # the first outputs resolve `activation: auto` (and may swap the decoder)
            self.decoder, self.checked = refine(self.decoder, outputs), True
            if isinstance(self.decoder, self.softmax):  # the argmax alone: no contours needed to score
                self.post = Postprocessor(self.decoder.contract)
        if self.post is not None:
            return self.post.class_map(outputs).copy()
        decoded = self.decoder(outputs, self.size, None)
        if self.task == "segmentation":
            return decoded.mask.copy()
        if self.task == "classification":
            return int(decoded.label)
        return decoded.boxes.copy() if decoded.boxes is not None else np.zeros((0, 6), np.float32)


class ModelRun:
    """One model's outputs and task answers (class maps, labels or boxes) on an :class:`EvalSet`, with its
    per-class metric (:data:`TASK_METRIC`) and, against a ``reference`` run, agreement and output errors."""

    def __init__(self, model_path: str | Path, contract: ModelContract, data: EvalSet, threads: int | None = None,
                 keep_outputs: bool = True, reference: ModelRun | None = None) -> None:
        session = _session(model_path, threads)
        answer = _Answers(contract)
        name = contract.primary_output.name
        names = [o.name for o in contract.outputs if o.kind != "auxiliary"]
        n = len(contract.classes)
        self.task = contract.task
        self.conf = np.zeros((n, n), np.int64)
        self.masks: list[Any] = []  # per frame: class map (segmentation), label, or boxes
        self.outputs: list[np.ndarray] = []
        self.all_outputs: list[dict[str, np.ndarray]] = []
        self.agree = 0
        self.pixels = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.ref_max = 0.0
        self.ref_sum_abs = 0.0
        self.values = 0
        self.sq_err = 0.0  # sum over answer outputs of (int8 - fp32)^2
        self.sq_ref = 0.0  # sum of fp32^2
        truth_labels: list[Any] = []
        per_frame = None
        for i, (x, truth) in enumerate(zip(data.inputs, data.truths, strict=True)):
            got = dict(zip(names, session.run(names, {contract.input.name: x}), strict=True))
            y = got[name]
            mask = answer(got)
            if self.task == "segmentation":
                if truth.shape != mask.shape:
                    import cv2

                    truth = cv2.resize(truth, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST)
                self.conf += confusion_from_masks(mask, truth, n)
            else:
                truth_labels.append(_task_truth(contract, truth))
            self.masks.append(mask)
            if keep_outputs:
                if per_frame is None:
                    per_frame = sum(v.nbytes for v in got.values()) * len(data.inputs)
                small = per_frame <= _REFERENCE_BUDGET_BYTES
                self.outputs.append(y if small else y.astype(np.float16))
                self.all_outputs.append({k: (v if small else v.astype(np.float16)) for k, v in got.items()})
            if reference is not None:
                ref = reference.outputs[i].astype(np.float32, copy=False)
                diff = np.abs(y.astype(np.float32, copy=False) - ref)
                self.max_abs = max(self.max_abs, float(diff.max()))
                self.sum_abs += float(diff.sum())
                self.ref_max = max(self.ref_max, float(np.abs(ref).max()))
                self.ref_sum_abs += float(np.abs(ref).sum())
                self.values += diff.size
                for k, v in got.items():
                    r = reference.all_outputs[i][k].astype(np.float64)
                    self.sq_err += float(np.square(v.astype(np.float64) - r).sum())
                    self.sq_ref += float(np.square(r).sum())
                agree, units = _agreement(self.task, mask, reference.masks[i], contract.decode.score_threshold)
                self.agree += agree
                self.pixels += units
        self.present = np.zeros(n, bool)
        if self.task == "segmentation":
            self.dice, self.iou = dice_iou_from_confusion(self.conf)
            self.present = self.conf.sum(axis=1) > 0
        elif self.task == "classification":
            from medstream.runtime.evaluation_tasks import classification_scores, confusion_from_labels

            self.conf = confusion_from_labels(np.array(truth_labels), np.array(self.masks), n)
            f1 = classification_scores(self.conf)["f1"]
            self.dice = np.array([np.nan if v is None else v for v in f1], np.float64)
            self.iou = self.dice
            self.present = self.conf.sum(axis=1) > 0
        else:
            from medstream.runtime.evaluation_tasks import coco_average_precision

            ap = coco_average_precision(truth_labels, self.masks, n, [x.shape[-2:] for x in data.inputs])
            self.dice = np.array([np.nan if v is None else v for v in ap["per_class_ap50"]], np.float64)
            self.iou = np.array([np.nan if v is None else v for v in ap["per_class_ap50_95"]], np.float64)
            self.present = np.array([v is not None for v in ap["per_class_ap50"]])

    @property
    def output_rel_l2(self) -> float:
        """Relative L2 error of the answer outputs against the reference, over all frames."""
        if self.sq_ref > 0:
            return math.sqrt(self.sq_err / self.sq_ref)
        return 0.0 if self.sq_err == 0 else math.inf


def _task_truth(contract: ModelContract, truth: np.ndarray) -> Any:
    """A classification label or detection boxes for a (model-resolution) truth mask, by the contract's rule."""
    from medstream.runtime.task_truth import rule_for_model, truth_boxes, truth_label

    rule = rule_for_model(contract.task, contract.class_names, getattr(contract.provenance, "truth_rule", None))
    return truth_label(rule, truth) if contract.task == "classification" else truth_boxes(rule, truth)


def _agreement(task: str, got: Any, ref: Any, score_threshold: float) -> tuple[int, int]:
    """(agreeing units, units): pixels for segmentation; frames for classification (same label) and detection
    (the boxes production publishes, those scoring >= the contract's threshold, have the same classes)."""
    if task == "segmentation":
        return int(np.count_nonzero(got == ref)), int(got.size)
    if task == "classification":
        return int(got == ref), 1

    def shown(boxes: np.ndarray) -> list[float]:
        return sorted(boxes[boxes[:, 5] >= score_threshold, 4].tolist())

    return int(shown(got) == shown(ref)), 1


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class VariantScore:
    """How one INT8 file compares with FP32."""

    variant: str
    model_path: str
    dice: list[float | None]
    iou: list[float | None]
    drop_points: list[float | None]
    argmax_agreement: float
    logit_max_abs: float
    logit_mean_abs: float
    logit_max_rel: float
    logit_mean_rel: float
    passed: bool
    worst_class: str | None
    worst_drop_points: float | None
    output_rel_l2: float = 0.0
    reasons: list[str] = field(default_factory=list)


@dataclass
class GateReport:
    """FP32 reference scores and every INT8 variant's comparison with them."""

    data_uri: str
    frames: int
    classes: list[str]
    dice_fp32: list[float | None]
    iou_fp32: list[float | None]
    max_dice_drop: float
    variants: list[VariantScore] = field(default_factory=list)
    task: str = "segmentation"
    metric: str = "Dice"  # what dice_fp32 / VariantScore.dice hold for this task (TASK_METRIC)
    max_output_error: float = DEFAULT_MAX_OUTPUT_ERROR

    @property
    def passed(self) -> bool:
        return bool(self.variants) and all(v.passed for v in self.variants)

    @property
    def worst_drop_points(self) -> float:
        drops = [v.worst_drop_points for v in self.variants if v.worst_drop_points is not None]
        return max(drops) if drops else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


class Gate:
    """Scores INT8 candidates against one FP32 reference run (FP32 runs once, whatever ``--auto`` tries)."""

    def __init__(self, fp32_path: str | Path, contract: ModelContract, data: EvalSet,
                 max_dice_drop: float = DEFAULT_MAX_DICE_DROP, threads: int | None = None,
                 max_output_error: float = DEFAULT_MAX_OUTPUT_ERROR) -> None:
        if max_dice_drop < 0:
            raise ConfigError(f"--max-dice-drop must be >= 0 points, got {max_dice_drop}",
                              "pass e.g. --max-dice-drop 1.0 (one Dice point = 0.01)")
        if not max_output_error > 0:
            raise ConfigError(f"the output error bound must be > 0, got {max_output_error}",
                              "use e.g. 0.1 (10 % relative L2 error of the raw outputs)")
        if contract.task not in TASK_METRIC:
            raise GateRefused(f"model {fp32_path} is a {contract.task} model; the accuracy gate scores "
                              f"{', '.join(TASK_METRIC)}", "calibrate a model of one of those tasks")
        self.contract = contract
        self.data = data
        self.max_dice_drop = max_dice_drop
        self.max_output_error = max_output_error
        self.threads = threads
        self.reference = ModelRun(fp32_path, contract, data, threads)
        self._refuse_unscorable(fp32_path)

    def _refuse_unscorable(self, fp32_path: str | Path) -> None:
        """Refuse a reference whose metric is 0 on a class the truth holds, or that has no class to judge."""
        metric = TASK_METRIC[self.contract.task]
        ref = self.reference
        first = 1 if self.contract.task == "segmentation" else 0  # background is not an answer
        names = self.contract.class_names
        judged = [i for i in range(first, len(names)) if ref.present[i] and math.isfinite(ref.dice[i])]
        zero = [names[i] for i in judged if ref.dice[i] <= 0.0]
        fix = ("check that the contract fits the model (task, classes, output activation: 'medstream inspect "
               "MODEL', 'medstream evaluate --model MODEL') and that --eval-data holds what the model finds")
        if zero:
            raise GateRefused(f"the FP32 model {fp32_path} scores {metric} 0 on class(es) {', '.join(zero)} of the "
                              f"{self.data.frames} evaluation frames ({self.data.uri}): the gate cannot tell whether "
                              "INT8 keeps an accuracy the model does not have", fix)
        if not judged:
            raise GateRefused(f"no class of {fp32_path} can be judged on the {self.data.frames} evaluation frames "
                              f"({self.data.uri}): the truth holds none of {list(names[first:])}", fix)

    def new_report(self) -> GateReport:
        return GateReport(data_uri=self.data.uri, frames=self.data.frames, classes=list(self.contract.class_names),
                          dice_fp32=[_num(d) for d in self.reference.dice], iou_fp32=[_num(i) for i in self.reference.iou],
                          max_dice_drop=self.max_dice_drop, task=self.contract.task,
                          metric=TASK_METRIC[self.contract.task], max_output_error=self.max_output_error)

    def score(self, int8_path: str | Path, variant: str) -> VariantScore:
        run = ModelRun(int8_path, self.contract, self.data, self.threads, keep_outputs=False, reference=self.reference)
        drops: list[float | None] = []
        worst, worst_name = None, None
        for i, name in enumerate(self.contract.class_names):
            ref, got = self.reference.dice[i], run.dice[i]
            if not math.isfinite(ref):
                drops.append(None)
                continue
            drop = float(100.0 * (ref - (got if math.isfinite(got) else 0.0)))
            drops.append(drop)
            if worst is None or drop > worst:
                worst, worst_name = drop, name
        metric = TASK_METRIC[self.contract.task]
        reasons = []
        if worst is not None and worst > self.max_dice_drop + 1e-9:
            reasons.append(f"{worst_name} loses {worst:.2f} {metric} points (limit {self.max_dice_drop})")
        if worst is None:
            reasons.append(f"no class could be judged by {metric}")
        if not run.output_rel_l2 <= self.max_output_error:
            reasons.append(f"raw output error {run.output_rel_l2:.3f} (relative L2) exceeds {self.max_output_error}")
        passed = not reasons
        return VariantScore(
            variant=variant, model_path=str(int8_path), dice=[_num(d) for d in run.dice], iou=[_num(i) for i in run.iou],
            drop_points=drops, argmax_agreement=run.agree / max(run.pixels, 1),
            logit_max_abs=run.max_abs, logit_mean_abs=run.sum_abs / max(run.values, 1),
            logit_max_rel=run.max_abs / run.ref_max if run.ref_max > 0 else 0.0,
            logit_mean_rel=(run.sum_abs / max(run.values, 1)) / (run.ref_sum_abs / max(run.values, 1))
            if run.ref_sum_abs > 0 else 0.0,
            passed=passed, worst_class=worst_name, worst_drop_points=worst, output_rel_l2=run.output_rel_l2,
            reasons=reasons,
        )


__all__ = ["DEFAULT_MAX_DICE_DROP", "DEFAULT_MAX_OUTPUT_ERROR", "TASK_METRIC", "EvalSet", "Gate", "GateRefused",
           "GateReport", "ModelRun", "VariantScore"]
