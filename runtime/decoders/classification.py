"""Classification decoder: ``[N, C]`` logits or probabilities -> label, per-class probabilities, top-k.

``softmax`` (exclusive classes; logits go through softmax, probabilities are used as they are): the label is
the most probable class. ``sigmoid``: each class independent (multi-label), or a single channel for a
binary classifier whose ``classes`` are ``[negative, positive]`` (probabilities then ``[1 - p, p]``); the label
is the most probable class. ``none``: the values are used as scores. An optional class-activation or feature
map (an output of kind ``heatmap``, ``[N, K, h, w]`` with K = 1 or one per class) is published as a coarse
heatmap of the predicted class over the part of the frame the model saw.
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
    normalised_entropy,
    sigmoid,
    softmax,
)


class ClassificationDecoder(Decoder):
    task = "classification"

    def __init__(self, contract: ModelContract, *, low_confidence_below: float | None = None, **_: Any) -> None:
        super().__init__(contract, low_confidence_below=low_confidence_below)
        self.cam = contract.output_of_kind("heatmap")

    def probabilities(self, values: np.ndarray) -> tuple[np.ndarray, bool]:
        """Per-class probabilities from the raw output row, and whether the classes are exclusive."""
        c = values.shape[0]
        activation = self.activation(self.output, c)
        logits = self.output.kind == "logits"
        if activation == "sigmoid":
            p = sigmoid(values) if logits else np.clip(values, 0.0, 1.0)
            if c == 1 and self.n_classes == 2:
                return np.array([1.0 - p[0], p[0]]), True
            return p, False
        if activation == "softmax":
            return (softmax(values, axis=0) if logits else np.clip(values, 0.0, 1.0)), True
        return values.astype(np.float64), True

    def decode(self, outputs: dict[str, Any], frame_size: tuple[int, int],
               roi: tuple[int, int, int, int] | None) -> Decoded:
        values = host(first(outputs[self.output.name])).reshape(-1).astype(np.float64)
        expected = (self.n_classes, 1) if self.n_classes == 2 else (self.n_classes,)
        if values.shape[0] not in expected:
            raise DecodeError(f"output {self.output.name!r} has {values.shape[0]} values, the contract lists "
                              f"{self.n_classes} classes")
        p, exclusive = self.probabilities(values)
        order = np.argsort(-p, kind="stable")
        label = int(order[0])
        k = min(self.contract.decode.top_k, p.shape[0])
        top = tuple((int(i), round(float(p[i]), 6)) for i in order[:k])
        confidence = float(p[label])
        entropy = float(normalised_entropy(p, axis=0)) if exclusive else float(binary_entropy(p[label]))
        return Decoded(task="classification", label=label, probabilities=p.astype(np.float32), top_k=top,
                       confidence=confidence, entropy=entropy,
                       heatmap=self._heatmap(outputs, label, frame_size, roi))

    def _heatmap(self, outputs: dict[str, Any], label: int, frame_size: tuple[int, int],
                 roi: tuple[int, int, int, int] | None):
        if self.cam is None or self.cam.name not in outputs:
            return None
        cam = host(first(outputs[self.cam.name]))
        if self.cam.layout == "NHWC":
            cam = np.moveaxis(cam, -1, 0)
        plane = cam[label] if cam.shape[0] == self.n_classes else cam[0]
        mapping = self.mapping(frame_size, roi)
        kind = "probability" if self.cam.activation in ("sigmoid", "softmax") else "activation"
        if self.cam.activation == "sigmoid":
            plane = sigmoid(plane)
        return coarse_heatmap(plane, content_fractions(mapping), self.contract.decode.heatmap_max_side,
                              mapping.region, label if cam.shape[0] == self.n_classes else -1, kind)
