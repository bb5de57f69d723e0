"""Detection decoders: YOLO raw heads (v8/v11 ``[N, 4+C, A]``, v5 ``[N, A, 5+C]``) and end-to-end detectors.

Raw heads: the box of each anchor (``cx, cy, w, h`` in model-input pixels unless ``decode.box_format`` /
``box_normalized`` say otherwise), its class scores (v5: times its objectness); the best class per
anchor; anchors scoring above ``decode.score_threshold`` go through non-maximum suppression by OpenCV
(``cv2.dnn.NMSBoxesBatched``: per class; ``cv2.dnn.NMSBoxes`` with ``class_agnostic_nms``), at most
``max_detections`` kept, best first. Scores are used as they are (Ultralytics exports apply the sigmoid in
the graph); ``activation: sigmoid`` on the output applies it here.

End-to-end (NMS in the graph): outputs of kind ``boxes`` ``[N, B, 4]`` (``xyxy`` by default), ``scores``
``[N, B]`` or ``[N, B, C]`` and optionally ``labels`` ``[N, B]``; rows scoring above ``score_threshold``
are kept (padding rows of such exports score 0 or -1). A label outside ``classes`` is a
:class:`~medstream.runtime.decoders.base.DecodeError` (the frame is dropped and logged, never published
with a class the contract does not name).

Every box is mapped back to source-frame pixels (undoing letterbox, centre crop, resize and the ROI) and
clipped to the region the model saw: rows ``x0, y0, x1, y1, class_id, score``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.decoders.base import (
    Decoded,
    DecodeError,
    Decoder,
    binary_entropy,
    first,
    host,
    sigmoid,
)

_NO_BOXES = np.zeros((0, 6), np.float32)


class DetectionDecoder(Decoder):
    task = "detection"

    def __init__(self, contract: ModelContract, *, low_confidence_below: float | None = None, **_: Any) -> None:
        super().__init__(contract, low_confidence_below=low_confidence_below)
        self.spec = contract.decode
        self.kind = self.output.kind
        default = "xyxy" if self.kind == "boxes" else "cxcywh"
        self.box_format = self.spec.box_format or default
        self.scores_out = contract.output_of_kind("scores")
        self.labels_out = contract.output_of_kind("labels")

    # ---- candidates per kind: (boxes xyxy in model pixels (A, 4), scores (A,), class ids (A,))
    def _raw_head(self, outputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Candidates above the score threshold and the best score of all anchors.

        The best class score of every anchor is one max-reduction over the class axis (sigmoid and the
        objectness product are monotonic, so they are applied to that maximum only); argmax and box
        gathering run on the few anchors above the threshold: 1.1 ms for a ``[1, 84, 8400]`` head here
        (``benchmarks/decoder_cost.py``) instead of ~10 ms for the whole (A, C) score matrix.
        """
        arr = host(first(outputs[self.output.name]))
        nca = self.output.layout == "NCA"
        extra = 4 if self.kind == "yolov8" else 5
        per = arr.shape[0] if nca else arr.shape[-1]
        if arr.ndim != 2 or per != extra + self.n_classes:
            raise DecodeError(f"output {self.output.name!r} has {arr.shape} per image, a {self.kind} head with "
                              f"{self.n_classes} classes needs {extra + self.n_classes} values per anchor")
        cls = arr[extra:] if nca else arr[:, extra:]
        axis = 0 if nca else 1
        best = cls.max(axis=axis).astype(np.float64)
        sig = self.output.activation == "sigmoid"
        if sig:
            best = sigmoid(best)
        if self.kind == "yolov5":
            obj = (arr[4] if nca else arr[:, 4]).astype(np.float64)
            best = best * (sigmoid(obj) if sig else obj)
        best_candidate = float(best.max()) if best.size else 0.0
        keep = np.flatnonzero(best > self.spec.score_threshold)
        ids = (cls[:, keep].argmax(axis=0) if nca else cls[keep].argmax(axis=1)) if keep.size else np.zeros(0, np.intp)
        boxes = (arr[:4, keep].T if nca else arr[keep, :4]).astype(np.float64)
        return boxes, best[keep], ids, best_candidate

    def _end_to_end(self, outputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        boxes = host(first(outputs[self.output.name])).reshape(-1, 4)
        assert self.scores_out is not None  # the contract requires one
        scores = host(first(outputs[self.scores_out.name])).astype(np.float64)
        if self.scores_out.activation == "sigmoid":
            scores = sigmoid(scores)
        if scores.ndim == 2:
            ids = scores.argmax(axis=1)
            scores = scores[np.arange(scores.shape[0]), ids]
        else:
            scores = scores.reshape(-1)
            if self.labels_out is None:
                if self.n_classes != 1:
                    raise DecodeError("scores [N, B] without a labels output name no class; add the labels output")
                ids = np.zeros(scores.shape[0], np.int64)
            else:
                ids = host(first(outputs[self.labels_out.name])).reshape(-1).astype(np.int64)
        if not boxes.shape[0] == scores.shape[0] == ids.shape[0]:
            raise DecodeError(f"end-to-end outputs disagree: {boxes.shape[0]} boxes, {scores.shape[0]} scores, "
                              f"{ids.shape[0]} labels")
        best_candidate = float(scores.max()) if scores.size else 0.0
        keep = np.flatnonzero(scores > self.spec.score_threshold)
        return boxes[keep].astype(np.float64), scores[keep], ids[keep], best_candidate

    def decode(self, outputs: dict[str, Any], frame_size: tuple[int, int],
               roi: tuple[int, int, int, int] | None) -> Decoded:
        e2e = self.kind == "boxes"
        boxes, scores, ids, best_candidate = self._end_to_end(outputs) if e2e else self._raw_head(outputs)
        if self.spec.box_normalized:
            h, w = self.contract.input.height, self.contract.input.width
            boxes = boxes * (w, h, w, h)
        if self.box_format == "cxcywh":
            xy, wh = boxes[:, :2], boxes[:, 2:]
            boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
        if e2e:
            bad = ids[(ids < 0) | (ids >= self.n_classes)]
            if bad.size:
                raise DecodeError(f"the detector output class id(s) {sorted(set(bad.tolist()))[:5]} outside the "
                                  f"{self.n_classes} classes of the contract")
            order = np.argsort(-scores, kind="stable")
        else:
            order = self._nms(boxes, scores, ids)
        order = order[: self.spec.max_detections]
        mapping = self.mapping(frame_size, roi)
        result = _NO_BOXES
        if order.size:
            result = np.empty((order.size, 6), np.float32)
            result[:, :4] = mapping.boxes_to_frame(boxes[order])
            result[:, 4] = ids[order]
            result[:, 5] = scores[order]
        if result.shape[0]:
            confidence = float(result[:, 5].mean())
            entropy = float(binary_entropy(result[:, 5]).mean())
        else:  # nothing found: how sure it is that nothing is there
            confidence, entropy = 1.0 - best_candidate, float(binary_entropy(np.array(best_candidate)))
        return Decoded(task="detection", boxes=result, confidence=confidence, entropy=entropy)

    def _nms(self, xyxy: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Indices kept by OpenCV's NMS, best score first."""
        if scores.size == 0:
            return np.zeros(0, np.intp)
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        # score_threshold already applied above (cv2 keeps scores > it, as we do); eta 1, no top_k before NMS
        if self.spec.class_agnostic_nms:
            kept = cv2.dnn.NMSBoxes(xywh, scores.astype(np.float32), self.spec.score_threshold,
                                    self.spec.iou_threshold)
        else:
            kept = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), ids.astype(np.int32),
                                           self.spec.score_threshold, self.spec.iou_threshold)
        kept = np.asarray(kept, np.intp).reshape(-1)
        return kept[np.argsort(-scores[kept], kind="stable")]
