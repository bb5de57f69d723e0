"""Keypoint decoder: one heatmap per point type (``[N, K, h, w]``, K = number of classes) -> points.

Each channel's peak (argmax) is one point, e.g. a needle tip; its probability (the sigmoid of a logit, or
the value of a probability map) must reach ``decode.point_threshold`` or the point is absent. The point is
the centre of the peak's heatmap cell, mapped to source-frame pixels: rows ``x, y, class_id, score``.
With ``decode.heatmap`` the strongest channel is also published as a coarse heatmap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.decoders.base import (
    Decoded,
    DecodeError,
    Decoder,
    binary_entropy,
    coarse_heatmap,
    content_fractions,
    first,
    host,
    sigmoid,
)


class KeypointDecoder(Decoder):
    task = "keypoints"

    def __init__(self, contract: ModelContract, *, low_confidence_below: float | None = None, **_: Any) -> None:
        super().__init__(contract, low_confidence_below=low_confidence_below)

    def decode(self, outputs: dict[str, Any], frame_size: tuple[int, int],
               roi: tuple[int, int, int, int] | None) -> Decoded:
        y = host(first(outputs[self.output.name]))
        if self.output.layout == "NHWC":
            y = np.moveaxis(y, -1, 0)
        k, h, w = y.shape
        if k != self.n_classes:
            raise DecodeError(f"output {self.output.name!r} has {k} heatmaps, the contract lists {self.n_classes} classes")
        flat = y.reshape(k, -1)
        peaks = flat.argmax(axis=1)
        values = flat[np.arange(k), peaks].astype(np.float64)
        logits = self.output.kind == "logits" and self.output.activation != "none"
        probs = sigmoid(values) if logits else np.clip(values, 0.0, 1.0)
        mh, mw = self.contract.input.height, self.contract.input.width
        model_xy = np.stack([(peaks % w + 0.5) * mw / w, (peaks // w + 0.5) * mh / h], axis=1)
        mapping = self.mapping(frame_size, roi)
        frame_xy = mapping.to_frame(model_xy)
        rx, ry, rw, rh = mapping.region  # a peak in the letterbox border lands on the region's edge
        np.clip(frame_xy[:, 0], rx, rx + rw, out=frame_xy[:, 0])
        np.clip(frame_xy[:, 1], ry, ry + rh, out=frame_xy[:, 1])
        found = probs >= self.contract.decode.point_threshold
        points = np.empty((int(found.sum()), 4), np.float32)
        points[:, :2] = frame_xy[found]
        points[:, 2] = np.flatnonzero(found)
        points[:, 3] = probs[found]
        if points.shape[0]:
            confidence, entropy = float(probs[found].mean()), float(binary_entropy(probs[found]).mean())
        else:
            confidence, entropy = float(1.0 - probs.max()), float(binary_entropy(probs.max()))
        heatmap = None
        if self.contract.decode.heatmap:
            strongest = int(probs.argmax())
            plane = sigmoid(y[strongest]) if logits else y[strongest]
            heatmap = coarse_heatmap(plane, content_fractions(mapping), self.contract.decode.heatmap_max_side,
                                     mapping.region, strongest)
        return Decoded(task="keypoints", points=points, confidence=confidence, entropy=entropy, heatmap=heatmap)
