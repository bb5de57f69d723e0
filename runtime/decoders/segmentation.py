"""Segmentation decoders: softmax/argmax (exclusive classes) and sigmoid (independent channels, thresholded).

Softmax/argmax is :class:`~medstream.runtime.postprocess.Postprocessor` (its allocation-free running argmax,
~10x ``np.argmax``; or the GPU backends' device argmax) plus confidence on sampled foreground pixels.

Sigmoid covers the single-channel binary segmenter (``[N, 1, H, W]``, logits or probabilities) and
multi-label models (C channels, each its own class, a threshold per class). ``classes[0]`` is the background
(no channel); channel k is class k+1. Overlapping classes are represented as follows: the published ``mask``
(one class id per pixel) gives an overlapped pixel to the **most probable** of the classes above their
thresholds; ``contours`` and ``areas_px`` are traced and counted on **each class's own binary mask**, so a
pixel in two classes is inside both outlines and counted in both areas (``areas_px['background']`` counts
pixels in no class). Logits are thresholded in logit space (``logit(t)``), so the mask costs no ``exp``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.decoders.base import (
    Decoded,
    DecodeError,
    Decoder,
    all_indices,
    binary_entropy,
    coarse_heatmap,
    content_fractions,
    first,
    host,
    logit,
    normalised_entropy,
    sample_indices,
    sigmoid,
)
from medstream.runtime.postprocess import Postprocessor, trace_contours
from medstream.runtime.preprocess import InputMapping


def _gather(y: Any, nchw: bool, idx: np.ndarray) -> np.ndarray:
    """Values of the sampled pixels ``idx`` (flat spatial indices) as ``(C, n)`` on the host."""
    if not isinstance(y, np.ndarray):  # CuPy: index on the device, copy only the samples
        import cupy

        d_idx = cupy.asarray(idx)
        c = y.shape[0] if nchw else y.shape[-1]
        sel = y.reshape(c, -1)[:, d_idx] if nchw else y.reshape(-1, c)[d_idx].T
        return host(sel).astype(np.float64)
    if nchw:
        return y.reshape(y.shape[0], -1)[:, idx].astype(np.float64)
    return y.reshape(-1, y.shape[-1])[idx].T.astype(np.float64)


def _mask_region(mask: np.ndarray, mapping: InputMapping | None,
                 roi: tuple[int, int, int, int] | None) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The mask part that shows the frame (the letterbox content) and the frame region it covers."""
    if mapping is None:
        return mask, roi
    frac = content_fractions(mapping)
    if frac is not None:
        h, w = mask.shape
        fx, fy, fw, fh = frac
        x0, y0 = int(round(fx * w)), int(round(fy * h))
        x1, y1 = max(x0 + 1, int(round((fx + fw) * w))), max(y0 + 1, int(round((fy + fh) * h)))
        mask = mask[y0:y1, x0:x1]
    return mask, mapping.region


class SoftmaxSegmentation(Decoder):
    """Exclusive classes: argmax over the class axis (or an output that already is a class map, kind ``mask``).

    Parameters
    ----------
    postprocessor
        The backend's (a GPU backend's takes the argmax on the device); a CPU one by default.
    """

    task = "segmentation"

    def __init__(self, contract: ModelContract, *, postprocessor: Postprocessor | None = None,
                 low_confidence_below: float | None = None) -> None:
        super().__init__(contract, low_confidence_below=low_confidence_below)
        self.post = postprocessor if postprocessor is not None else Postprocessor(contract)
        self.nchw = self.output.layout == "NCHW"
        self.stretch = contract.input.resize == "stretch"

    def decode(self, outputs: dict[str, Any], frame_size: tuple[int, int],
               roi: tuple[int, int, int, int] | None) -> Decoded:
        if self.output.activation == "auto" and self.output.kind != "mask":
            self._check_auto(outputs[self.output.name])
        full = self.post.class_map(outputs)
        confidence, entropy = self._confidence(outputs, full)
        mask, mask_roi = _mask_region(full, None if self.stretch else self.mapping(frame_size, roi), roi)
        return Decoded(task="segmentation", mask=mask, mask_roi=mask_roi,
                       contours=self.post.contours(mask, frame_size, roi=mask_roi), areas_px=self.post.areas(mask),
                       confidence=confidence, entropy=entropy)

    def _check_auto(self, y: Any) -> None:
        """An unchecked ``auto`` output: argmax only what has one channel per class (never a sigmoid output)."""
        channels = int(y.shape[1] if self.nchw else y.shape[-1])
        if self.activation(self.output, channels) != "softmax" or channels != self.n_classes:
            raise DecodeError(f"output {self.output.name!r} has {channels} channels for {self.n_classes} classes: "
                              "not a softmax output; check the model at load (medstream.runtime.decoders.refine)")
        self.output = self.output.model_copy(update={"activation": "softmax"})

    def _confidence(self, outputs: dict[str, Any], mask: np.ndarray) -> tuple[float | None, float | None]:
        """Mean max-probability and normalised entropy over (at most 4096) foreground pixels.

        Plane by plane in float32 with the max-probability as ``1 / sum(exp(l - max))``: 0.08 ms on the bundled
        U-Net's output here, where reductions over the class axis of a ``(C, n)`` array cost 0.3 ms.
        """
        if self.output.kind == "mask":
            return None, None  # a class map has no probabilities to tell
        y = first(outputs[self.output.name])
        idx = sample_indices(mask.reshape(-1))
        if idx.size == 0:
            idx = all_indices(mask.size)
        planes = _gather_planes(y, self.nchw, idx)
        c = len(planes)
        if self.output.kind == "logits" and self.output.activation != "none":
            top = planes[0].copy()
            for p in planes[1:]:
                np.maximum(top, p, out=top)
            diffs = [p - top for p in planes]
            exps = [np.exp(d) for d in diffs]
            total = exps[0].copy()
            weighted = exps[0] * diffs[0]
            for e, d in zip(exps[1:], diffs[1:], strict=True):
                total += e
                weighted += e * d
            confidence = float(np.mean(1.0 / total))
            entropy = (np.log(total) - weighted / total) / np.float32(math.log(c)) if c > 1 else np.zeros(1)
            return confidence, float(np.mean(entropy))
        probs = [np.clip(p, 0.0, 1.0) for p in planes]
        top = probs[0].copy()
        for p in probs[1:]:
            np.maximum(top, p, out=top)
        return float(top.mean()), float(normalised_entropy(np.stack(probs).astype(np.float64), axis=0).mean())


def _gather_planes(y: Any, nchw: bool, idx: np.ndarray) -> list[np.ndarray]:
    """The sampled pixels ``idx`` of each class plane, float32 on the host."""
    if not isinstance(y, np.ndarray):
        return list(_gather(y, nchw, idx).astype(np.float32))
    c = y.shape[0] if nchw else y.shape[-1]
    flat = y.reshape(c, -1) if nchw else y.reshape(-1, c)
    return [np.take(flat[k] if nchw else flat[:, k], idx).astype(np.float32, copy=False) for k in range(c)]


class SigmoidSegmentation(Decoder):
    """Independent channels: channel k is class k+1, foreground where its probability exceeds its threshold."""

    task = "segmentation"

    def __init__(self, contract: ModelContract, *, low_confidence_below: float | None = None, **_: Any) -> None:
        super().__init__(contract, low_confidence_below=low_confidence_below)
        self.channels = self.n_classes - 1
        if self.channels < 1:
            raise DecodeError("a sigmoid segmenter needs classes: background plus one per channel")
        self._resolved()
        self.stretch = contract.input.resize == "stretch"
        self._bufs: dict[str, np.ndarray] = {}
        self.names = contract.class_names

    def _resolved(self) -> None:
        out = self.output
        self.nchw = out.layout == "NCHW"
        self.logits = out.kind == "logits"
        thresholds = self.contract.decode.thresholds(self.channels)
        self.cuts = [logit(t) if self.logits else t for t in thresholds]

    def _buf(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._bufs[name] = np.empty(shape, dtype)
        return buf

    def decode(self, outputs: dict[str, Any], frame_size: tuple[int, int],
               roi: tuple[int, int, int, int] | None) -> Decoded:
        y = host(first(outputs[self.output.name]))
        c = y.shape[0] if self.nchw else y.shape[-1]
        if c != self.channels:
            raise DecodeError(f"output {self.output.name!r} has {c} channels, the contract's classes need {self.channels}")
        planes = [y[k] for k in range(c)] if self.nchw else [y[..., k] for k in range(c)]
        hw = planes[0].shape
        binaries = [np.greater(plane, cut) for plane, cut in zip(planes, self.cuts, strict=True)]
        mask = self._buf("mask", hw, np.uint8)
        if c == 1:
            np.copyto(mask, binaries[0].view(np.uint8))
        else:
            # Overlaps go to the most probable class above its threshold (logits are monotonic in probability).
            best = self._buf("best", hw, np.float32)
            best.fill(-np.inf)
            mask.fill(0)
            for k, (plane, binary) in enumerate(zip(planes, binaries, strict=True)):
                cand = np.where(binary, plane, np.float32(-np.inf))
                greater = cand > best
                np.maximum(best, cand, out=best)
                mask[greater] = k + 1
        mapping = None if self.stretch else self.mapping(frame_size, roi)
        shown, mask_roi = _mask_region(mask, mapping, roi)
        contours: list = []
        areas = {self.names[0]: 0}
        for k, binary in enumerate(binaries):
            part, _ = _mask_region(binary, mapping, roi)
            part = part.view(np.uint8) if part.flags.c_contiguous else np.ascontiguousarray(part).view(np.uint8)
            trace_contours(part, k + 1, frame_size, mask_roi, contours)
            areas[self.names[k + 1]] = int(np.count_nonzero(part))
        areas[self.names[0]] = int(shown.size - np.count_nonzero(shown))
        confidence, entropy = self._confidence(planes, mask)
        heatmap = None
        if self.contract.decode.heatmap:
            p = sigmoid(np.max(planes, axis=0)) if self.logits else np.max(planes, axis=0)
            heatmap = coarse_heatmap(p, None if mapping is None else content_fractions(mapping),
                                     self.contract.decode.heatmap_max_side,
                                     mask_roi or (0, 0, frame_size[1], frame_size[0]), -1 if c > 1 else 1)
        return Decoded(task="segmentation", mask=shown, mask_roi=mask_roi, contours=contours, areas_px=areas,
                       confidence=confidence, entropy=entropy, heatmap=heatmap)

    def _confidence(self, planes: list[np.ndarray], mask: np.ndarray) -> tuple[float, float]:
        flat = mask.reshape(-1)
        idx = sample_indices(flat)
        values = np.stack([p.reshape(-1)[idx if idx.size else all_indices(flat.size)] for p in planes])
        p = sigmoid(values) if self.logits else np.clip(values.astype(np.float64), 0.0, 1.0)
        if idx.size:
            chosen = p[flat[idx].astype(np.intp) - 1, np.arange(idx.size)]
            return float(chosen.mean()), float(binary_entropy(chosen).mean())
        top = p.max(axis=0)  # no foreground: how sure each pixel is of being background
        return float((1.0 - top).mean()), float(binary_entropy(top).mean())
