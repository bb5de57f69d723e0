"""Postprocessing of a softmax/argmax segmentation output: class map, contours, per-class area.

The class map is made at the model's resolution (argmax over the class axis) into a reused buffer;
contours are traced on it and scaled to the source frame's pixel coordinates, so a consumer can draw
them straight onto the frame it captured.

This is the segmentation softmax/argmax decoder's engine (:mod:`medstream.runtime.decoders.segmentation`
wraps it, adds confidence and the other resize modes); every other output kind has its own decoder in
:mod:`medstream.runtime.decoders`. GPU backends subclass it to take the argmax on the device.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ContractError
from medstream.runtime.frame import Contour


class Postprocessor:
    """Turns the primary output of a segmentation model into ``(mask, contours, areas)``.

    Parameters
    ----------
    contract
        Names the primary output, its layout and the classes.
    contour_epsilon_px
        Douglas-Peucker tolerance for contour simplification (model pixels); keeps messages small.
    """

    def __init__(self, contract: ModelContract, contour_epsilon_px: float = 1.0, max_contours_per_class: int = 16) -> None:
        self.contract = contract
        out = contract.primary_output
        if out.activation == "sigmoid" or contract.task != "segmentation":
            raise ContractError(f"model {contract.model_id}: the argmax postprocessor decodes softmax segmentation; this "
                                f"is {contract.task} with a {out.activation} {out.kind} output",
                                "decode it with medstream.runtime.decoders.make_decoder(contract)")
        self.output_name = out.name
        self.kind = out.kind
        self.class_axis = 1 if out.layout == "NCHW" else -1
        self.n_classes = len(contract.classes)
        h, w = contract.input.height, contract.input.width
        self.mask = np.empty((h, w), np.uint8)
        self._best: np.ndarray | None = None
        self.epsilon = contour_epsilon_px
        self.max_contours = max_contours_per_class

    def class_map(self, outputs: dict[str, Any]) -> np.ndarray:
        """The uint8 class map (a reused buffer: copy to keep)."""
        y = outputs[self.output_name]
        y = y[0] if y.ndim == 4 else y
        if self.kind == "mask":
            np.copyto(self.mask, y.reshape(self.mask.shape), casting="unsafe")
            return self.mask
        axis = 0 if self.class_axis == 1 else -1
        spatial = y.shape[1:] if axis == 0 else y.shape[:2]
        if spatial != self.mask.shape:
            # Output at another resolution than the input (some models downsample): allocate once.
            self.mask = np.empty(spatial, np.uint8)
            self._best = None
        planes = [y[k] for k in range(y.shape[0])] if axis == 0 else [y[..., k] for k in range(y.shape[-1])]
        if len(planes) != self.n_classes:  # an argmax over other channels than classes is a silent wrong answer
            raise ValueError(f"output {self.output_name!r} has {len(planes)} channels for {self.n_classes} classes: "
                             "not a softmax segmentation output (a sigmoid one has one channel fewer); decode it with "
                             "medstream.runtime.decoders.make_decoder")
        self._argmax(planes)
        return self.mask

    def _argmax(self, planes: list[np.ndarray]) -> None:
        """Argmax over class planes by running comparison: ~10x faster than ``np.argmax(axis=0)``
        on a (K, H, W) array, whose class axis is the slowest-varying one, and allocation-free."""
        if getattr(self, "_best", None) is None or self._best.shape != planes[0].shape or self._best.dtype != planes[0].dtype:
            self._best = np.empty(planes[0].shape, planes[0].dtype)
            self._greater = np.empty(planes[0].shape, bool)
            self._step = np.empty(planes[0].shape, np.uint8)
        best, greater, step, mask = self._best, self._greater, self._step, self.mask
        np.copyto(best, planes[0])
        mask.fill(0)
        for k in range(1, len(planes)):
            np.greater(planes[k], best, out=greater)  # ties keep the lower class id, as np.argmax does
            np.maximum(best, planes[k], out=best)
            # k exceeds every id written so far, so "set k where greater" is max(mask, greater * k):
            # two dense passes instead of a masked copy (which costs 40x more).
            np.multiply(greater, np.uint8(k), out=step)
            np.maximum(mask, step, out=mask)

    def contours(self, mask: np.ndarray, frame_size: tuple[int, int],
                 roi: tuple[int, int, int, int] | None = None) -> list[Contour]:
        """Outer contours of every foreground class, in full-frame coordinates ``(x, y)``.

        ``roi = (x, y, w, h)``: the mask covers that region of the frame (config ``source.roi``); the
        points are scaled to it and shifted by its corner, so they land on the source frame.
        """
        result: list[Contour] = []
        for class_id in range(1, self.n_classes):
            trace_contours((mask == class_id).view(np.uint8), class_id, frame_size, roi, result,
                           self.epsilon, self.max_contours)
        return result

    def areas(self, mask: np.ndarray) -> dict[str, int]:
        """Pixel count per class at the mask's resolution."""
        return {name: int(np.count_nonzero(mask == i)) for i, name in enumerate(self.contract.class_names)}


def trace_contours(binary: np.ndarray, class_id: int, frame_size: tuple[int, int],
                   roi: tuple[int, int, int, int] | None, result: list[Contour], epsilon: float = 1.0,
                   max_contours: int = 16) -> list[Contour]:
    """Append the outer contours of the uint8 ``binary`` mask (one class) to ``result``, in frame coordinates.

    ``roi = (x, y, w, h)``: the mask covers that region of the frame; ``None``: the whole frame.
    """
    if not binary.any():
        return result
    ox, oy, fw, fh = roi if roi is not None else (0, 0, frame_size[1], frame_size[0])
    mh, mw = binary.shape
    sx, sy = fw / mw, fh / mh
    found, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    found = sorted(found, key=cv2.contourArea, reverse=True)[:max_contours]
    for c in found:
        c = cv2.approxPolyDP(c, epsilon, True).reshape(-1, 2)
        if sx != 1.0 or sy != 1.0:
            c = np.rint((c + 0.5) * (sx, sy) - 0.5).astype(np.int32)
        if ox or oy:
            c = c + np.array((ox, oy), np.int32)
        result.append(Contour(class_id=class_id, points=c.astype(np.int32, copy=False)))
    return result
