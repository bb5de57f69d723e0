"""Ground truth for classification and detection, derived from a truth class map by a small, named rule.

The phantom (and a ``medstream record`` folder) gives a truth *class map* per frame; a classifier or a
detector needs a label or boxes. The rules here make them, and every place that needs them uses them:
training (:mod:`medstream.export.tasks`), ``medstream evaluate`` and the INT8 gate
(:mod:`medstream.runtime.evaluation`). A model records the rule it was trained with in its contract
(``provenance.truth_rule``), so evaluation scores it against the same definition without being told.

Rules (thresholds are fractions of the frame area, so they mean the same at any frame size):

``needle-presence`` (classification; classes ``no_needle``, ``needle``)
    ``needle`` when the truth marks at least :data:`NEEDLE_MIN_FRACTION` of the frame as needle (40 pixels
    at 256 x 256), else ``no_needle``. Below that a needle is a few pixels of shaft entering at the edge
    that nobody could call; on 400 training frames 23 % have no needle pixel at all and 5 % have
    1-39 pixels (labelled ``no_needle``).
``vessel-needle-boxes`` (detection; classes ``vessel``, ``needle``)
    One ``vessel`` box per connected component of the vessel class, after a morphological closing with a
    square of :data:`CLOSING_AT_256` pixels at 256 x 256 (scaled with the frame): the needle is drawn
    over vessels, and a needle crossing a vessel would otherwise cut it in two (8 of 400 frames). A
    component under :data:`VESSEL_MIN_FRACTION` of the frame (a vessel leaving the field of view) has no
    box. One ``needle`` box around all needle pixels when the needle is present by the rule above.

Boxes are ``x0, y0, x1, y1`` in pixel-edge coordinates of the truth map (a one-pixel component at column 3
spans ``x0 = 3, x1 = 4``), the convention of the detection decoder's output in source-frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from medstream.runtime.errors import ContractError

#: Needle pixels (fraction of the frame) from which a frame counts as "needle present" (40 px at 256x256).
NEEDLE_MIN_FRACTION = 40 / 65536
#: Smallest vessel component (fraction of the frame) that gets a box (64 px at 256x256).
VESSEL_MIN_FRACTION = 64 / 65536
#: Side of the closing square at 256x256 that rejoins a vessel cut by the needle.
CLOSING_AT_256 = 7

#: The phantom's truth class ids (``UltrasoundPhantom.CLASSES``: background, vessel, needle).
TRUTH_VESSEL = 1
TRUTH_NEEDLE = 2


@dataclass(frozen=True)
class TruthRule:
    """A named way from a truth class map to a task's ground truth (see the module docstring)."""

    name: str
    task: str  # classification | detection
    classes: tuple[str, ...]
    description: str


RULES: dict[str, TruthRule] = {
    "needle-presence": TruthRule(
        "needle-presence", "classification", ("no_needle", "needle"),
        "needle when at least 40/65536 of the frame is needle in the truth, else no_needle"),
    "vessel-needle-boxes": TruthRule(
        "vessel-needle-boxes", "detection", ("vessel", "needle"),
        "one box per vessel component (after closing, >= 64/65536 of the frame) and one around the needle "
        "when present"),
}


def rule_named(name: str) -> TruthRule:
    if name not in RULES:
        raise ContractError(f"no ground-truth rule named {name!r}",
                            f"use one of: {', '.join(sorted(RULES))} (medstream.runtime.task_truth)")
    return RULES[name]


def _needle_present(mask: np.ndarray) -> bool:
    return int(np.count_nonzero(mask == TRUTH_NEEDLE)) >= NEEDLE_MIN_FRACTION * mask.size


def needle_presence_label(mask: np.ndarray) -> int:
    """``1`` (needle) or ``0`` (no_needle) for a truth class map, by the ``needle-presence`` rule."""
    return int(_needle_present(mask))


def vessel_needle_boxes(mask: np.ndarray) -> np.ndarray:
    """Truth boxes ``(N, 5)`` float32 rows ``x0, y0, x1, y1, class`` (0 vessel, 1 needle), by ``vessel-needle-boxes``."""
    h, w = mask.shape[:2]
    rows: list[tuple[float, float, float, float, float]] = []
    k = max(3, int(round(CLOSING_AT_256 * min(h, w) / 256)) | 1)
    vessel = cv2.morphologyEx((mask == TRUTH_VESSEL).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(vessel, connectivity=8)
    for x, y, bw, bh, area in stats[1:n]:
        if area >= VESSEL_MIN_FRACTION * mask.size:
            rows.append((float(x), float(y), float(x + bw), float(y + bh), 0.0))
    if _needle_present(mask):
        ys, xs = np.nonzero(mask == TRUTH_NEEDLE)
        rows.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), 1.0))
    return np.asarray(rows, np.float32).reshape(-1, 5)


def truth_label(rule: TruthRule, mask: np.ndarray) -> int:
    """The class id a classification rule gives ``mask``."""
    if rule.name == "needle-presence":
        return needle_presence_label(mask)
    raise ContractError(f"rule {rule.name} gives no class label", "use a classification rule")


def truth_boxes(rule: TruthRule, mask: np.ndarray) -> np.ndarray:
    """The boxes a detection rule gives ``mask`` (``(N, 5)``: ``x0, y0, x1, y1, class``)."""
    if rule.name == "vessel-needle-boxes":
        return vessel_needle_boxes(mask)
    raise ContractError(f"rule {rule.name} gives no boxes", "use a detection rule")


def rule_for_model(task: str, class_names: tuple[str, ...], recorded: str | None, asked: str | None = None) -> TruthRule:
    """The rule to score a model with: ``asked`` (``--truth-rule``), else the one its contract records.

    Raises
    ------
    ContractError
        No rule is known for the model, or the rule's task or classes differ from the model's.
    """
    name = asked or recorded
    if not name:
        known = ", ".join(f"{r.name} ({r.task}: {', '.join(r.classes)})" for r in RULES.values())
        raise ContractError(f"the {task} model records no ground-truth rule (contract provenance.truth_rule), so its "
                            "labels cannot be derived from truth masks", f"name one with --truth-rule: {known}")
    rule = rule_named(name)
    if rule.task != task or rule.classes != tuple(class_names):
        raise ContractError(f"ground-truth rule {rule.name} gives {rule.task} labels {list(rule.classes)}, the model is "
                            f"a {task} model with classes {list(class_names)}",
                            "pick the rule the model was trained with, or score it with your own labels")
    return rule


__all__ = ["CLOSING_AT_256", "NEEDLE_MIN_FRACTION", "RULES", "TruthRule", "VESSEL_MIN_FRACTION",
           "needle_presence_label", "rule_for_model", "rule_named", "truth_boxes", "truth_label",
           "vessel_needle_boxes"]
