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

The gate passes when no class loses more than ``max_dice_drop`` points. Classes absent from both
truth and prediction (Dice undefined) are not judged.

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
from medstream.runtime.errors import ConfigError
from medstream.runtime.evaluation import confusion_from_masks, dice_iou_from_confusion, iter_eval_batches
from medstream.runtime.postprocess import Postprocessor

DEFAULT_MAX_DICE_DROP = 1.0  # points
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


class ModelRun:
    """One model's primary outputs and class maps on an :class:`EvalSet`."""

    def __init__(self, model_path: str | Path, contract: ModelContract, data: EvalSet, threads: int | None = None,
                 keep_outputs: bool = True, reference: ModelRun | None = None) -> None:
        session = _session(model_path, threads)
        post = Postprocessor(contract)
        name = contract.primary_output.name
        n = len(contract.classes)
        self.conf = np.zeros((n, n), np.int64)
        self.masks: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []
        self.agree = 0
        self.pixels = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.ref_max = 0.0
        self.ref_sum_abs = 0.0
        self.values = 0
        per_frame = None
        for i, (x, truth) in enumerate(zip(data.inputs, data.truths, strict=True)):
            y = session.run([name], {contract.input.name: x})[0]
            mask = post.class_map({name: y}).copy()
            if truth.shape != mask.shape:
                import cv2

                truth = cv2.resize(truth, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST)
            self.conf += confusion_from_masks(mask, truth, n)
            self.masks.append(mask)
            if keep_outputs:
                if per_frame is None:
                    per_frame = y.nbytes * len(data.inputs)
                self.outputs.append(y if per_frame <= _REFERENCE_BUDGET_BYTES else y.astype(np.float16))
            if reference is not None:
                ref = reference.outputs[i].astype(np.float32, copy=False)
                diff = np.abs(y.astype(np.float32, copy=False) - ref)
                self.max_abs = max(self.max_abs, float(diff.max()))
                self.sum_abs += float(diff.sum())
                self.ref_max = max(self.ref_max, float(np.abs(ref).max()))
                self.ref_sum_abs += float(np.abs(ref).sum())
                self.values += diff.size
                self.agree += int(np.count_nonzero(mask == reference.masks[i]))
                self.pixels += mask.size
        self.dice, self.iou = dice_iou_from_confusion(self.conf)


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
                 max_dice_drop: float = DEFAULT_MAX_DICE_DROP, threads: int | None = None) -> None:
        if max_dice_drop < 0:
            raise ConfigError(f"--max-dice-drop must be >= 0 points, got {max_dice_drop}",
                              "pass e.g. --max-dice-drop 1.0 (one Dice point = 0.01)")
        self.contract = contract
        self.data = data
        self.max_dice_drop = max_dice_drop
        self.threads = threads
        self.reference = ModelRun(fp32_path, contract, data, threads)

    def new_report(self) -> GateReport:
        return GateReport(data_uri=self.data.uri, frames=self.data.frames, classes=list(self.contract.class_names),
                          dice_fp32=[_num(d) for d in self.reference.dice], iou_fp32=[_num(i) for i in self.reference.iou],
                          max_dice_drop=self.max_dice_drop)

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
        passed = bool(worst is None or worst <= self.max_dice_drop + 1e-9)
        return VariantScore(
            variant=variant, model_path=str(int8_path), dice=[_num(d) for d in run.dice], iou=[_num(i) for i in run.iou],
            drop_points=drops, argmax_agreement=run.agree / max(run.pixels, 1),
            logit_max_abs=run.max_abs, logit_mean_abs=run.sum_abs / max(run.values, 1),
            logit_max_rel=run.max_abs / run.ref_max if run.ref_max > 0 else 0.0,
            logit_mean_rel=(run.sum_abs / max(run.values, 1)) / (run.ref_sum_abs / max(run.values, 1))
            if run.ref_sum_abs > 0 else 0.0,
            passed=passed, worst_class=worst_name, worst_drop_points=worst,
        )


__all__ = ["DEFAULT_MAX_DICE_DROP", "EvalSet", "Gate", "GateReport", "ModelRun", "VariantScore"]
