"""What every output decoder shares: the :class:`Decoded` result, the :class:`Decoder` base, and confidence.

A decoder turns one frame's model outputs (a batch of one) into what the overlay carries, in
source-frame pixels: it is built once per model from the contract, checks concrete output shapes once
(:meth:`Decoder.check_outputs`, at warm-up) and is then called per frame with the frame size and the ROI.

Confidence, the same meaning for every task (docs/MODEL_CONTRACT.md, "Confidence"):

* ``confidence`` (0..1): the mean probability of what the model answered, over the units of its answer:
  the predicted foreground pixels (segmentation: the probability of the class each pixel got), the image
  (classification: the top class's probability), the kept boxes (detection: their scores), the points
  found (keypoints: their peak probabilities). With no answer (no foreground pixel, no box, no point) it
  is how sure the model is that nothing is there: the mean background probability over all pixels, or
  ``1 -`` the best candidate's score.
* ``entropy`` (0..1): the mean normalised entropy of the same distributions (``H(p) / log C`` for C
  exclusive classes; the binary entropy ``/ log 2`` for a sigmoid channel or a score): 0 certain, 1 a coin
  toss between all classes.
* ``low_confidence``: ``confidence < model.low_confidence_below`` (config; off when unset).

Segmentation computes them on at most :data:`CONFIDENCE_SAMPLES` pixels, evenly spaced over the foreground
(the mean of 4096 values in 0..1 has a standard error under 0.005), so the cost stays flat with the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from medstream.runtime.contract import ModelContract, OutputSpec
from medstream.runtime.errors import ContractError
from medstream.runtime.frame import Contour, Heatmap
from medstream.runtime.preprocess import InputMapping, input_mapping

#: Pixels (at most) over which segmentation confidence is computed.
CONFIDENCE_SAMPLES = 4096

_EMPTY_MASK = np.zeros((1, 1), np.uint8)
_EMPTY_MASK.setflags(write=False)


class DecodeError(ValueError):
    """One frame's outputs cannot be decoded (a class id outside ``classes``, a shape that changed): the frame
    is dropped as ``postprocess_error`` with this message in the log."""


@dataclass(slots=True)
class Decoded:
    """One frame's decoded result: the task's fields of :class:`~medstream.runtime.frame.Overlay`."""

    task: str
    mask: np.ndarray = field(default_factory=lambda: _EMPTY_MASK)
    mask_roi: tuple[int, int, int, int] | None = None
    contours: list[Contour] = field(default_factory=list)
    areas_px: dict[str, int] = field(default_factory=dict)
    label: int | None = None
    probabilities: np.ndarray | None = None
    top_k: tuple[tuple[int, float], ...] = ()
    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    heatmap: Heatmap | None = None
    confidence: float | None = None
    entropy: float | None = None
    low_confidence: bool = False

    def overlay_fields(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~medstream.runtime.frame.Overlay` (everything but ``mask``)."""
        return {"task": self.task, "mask_roi": self.mask_roi, "contours": self.contours, "areas_px": self.areas_px,
                "label": self.label, "probabilities": self.probabilities, "top_k": self.top_k, "boxes": self.boxes,
                "points": self.points, "heatmap": self.heatmap, "confidence": self.confidence,
                "entropy": self.entropy, "low_confidence": self.low_confidence}


class Decoder:
    """Base of every decoder. Subclasses implement :meth:`decode`.

    Parameters
    ----------
    contract
        The model contract (activations resolved by :func:`~medstream.runtime.decoders.validate.check_model_io`
        where the model was checked; ``auto`` is resolved here from the first outputs otherwise).
    low_confidence_below
        Confidence under which an overlay is flagged ``low_confidence``; ``None`` never flags.
    """

    task = "base"

    def __init__(self, contract: ModelContract, *, low_confidence_below: float | None = None) -> None:
        self.contract = contract
        self.output = contract.primary_output
        self.n_classes = len(contract.classes)
        self.low_confidence_below = low_confidence_below
        self._mapping_key: tuple[Any, ...] | None = None
        self._mapping: InputMapping | None = None

    def __call__(self, outputs: dict[str, Any], frame_size: tuple[int, int],
                 roi: tuple[int, int, int, int] | None = None) -> Decoded:
        decoded = self.decode(outputs, frame_size, roi)
        if decoded.confidence is not None and self.low_confidence_below is not None:
            decoded.low_confidence = decoded.confidence < self.low_confidence_below
        return decoded

    def decode(self, outputs: dict[str, Any], frame_size: tuple[int, int],
               roi: tuple[int, int, int, int] | None) -> Decoded:
        raise NotImplementedError

    def check_outputs(self, outputs: dict[str, Any]) -> None:
        """Check concrete output shapes (the warm-up's) against the contract; resolve ``activation: auto``."""
        from medstream.runtime.decoders.validate import check_model_io, model_io_from_arrays

        present = {name: value for name, value in outputs.items() if name in {o.name for o in self.contract.outputs}}
        checked = check_model_io(self.contract, model_io_from_arrays(present), check_input=False)
        if checked is not self.contract:
            self.contract = checked
            self.output = checked.primary_output
            self._resolved()

    def _resolved(self) -> None:
        """Hook: the contract's activations were just resolved (subclasses re-read what they cached)."""

    def mapping(self, frame_size: tuple[int, int], roi: tuple[int, int, int, int] | None) -> InputMapping:
        """Where the model input came from in this frame (cached per frame size and ROI)."""
        key = (frame_size, roi)
        if key != self._mapping_key:
            self._mapping = input_mapping(self.contract.input, frame_size, roi)
            self._mapping_key = key
        assert self._mapping is not None
        return self._mapping

    def activation(self, out: OutputSpec, channels: int) -> str:
        """``out``'s activation, resolving ``auto`` from the channel count (the rule of ``validate``)."""
        from medstream.runtime.decoders.validate import resolve_activation

        return resolve_activation(out, channels, self.n_classes, self.contract.task)


# ------------------------------------------------------------------------------------ helpers
def host(value: Any) -> np.ndarray:
    """A numpy array from a numpy or CuPy output (GPU backends may leave outputs on the device)."""
    if isinstance(value, np.ndarray):
        return value
    get = getattr(value, "get", None)
    return np.asarray(get() if callable(get) else value)


def first(value: Any) -> Any:
    """Batch item 0 of an output ``[N, ...]`` (the pipeline decodes one frame at a time)."""
    return value[0]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def normalised_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """``H(p) / log C`` along ``axis`` (0 certain, 1 uniform)."""
    c = p.shape[axis]
    if c < 2:
        return np.zeros(np.delete(p.shape, axis))
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=axis) / math.log(c)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """The entropy of a yes/no probability, ``/ log 2`` (0 certain, 1 at 0.5)."""
    q = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return -(q * np.log(q) + (1 - q) * np.log(1 - q)) / math.log(2)


def sample_indices(flat_mask: np.ndarray, limit: int = CONFIDENCE_SAMPLES) -> np.ndarray:
    """Indices of the non-zero entries, evenly thinned to at most ``limit``."""
    idx = np.flatnonzero(flat_mask.astype(bool))  # 10x faster than on the uint8 class ids (0.01 ms at 256x256)
    if idx.size > limit:
        idx = idx[:: -(-idx.size // limit)]
    return idx


def all_indices(n: int, limit: int = CONFIDENCE_SAMPLES) -> np.ndarray:
    return np.arange(0, n, max(1, -(-n // limit)))


def coarse_heatmap(values: np.ndarray, content_hw: tuple[float, float, float, float] | None, max_side: int,
                   roi: tuple[int, int, int, int], class_id: int = -1, kind: str = "probability") -> Heatmap:
    """A :class:`Heatmap` from a float map: cropped to ``content`` (x, y, w, h as fractions of the map), scaled
    to at most ``max_side`` pixels a side, as uint8 0..255 (probabilities clipped to 0..1; activations scaled
    to their own range)."""
    v = np.asarray(values, np.float32)
    if content_hw is not None:
        h, w = v.shape
        fx, fy, fw, fh = content_hw
        x0, y0 = int(round(fx * w)), int(round(fy * h))
        x1, y1 = max(x0 + 1, int(round((fx + fw) * w))), max(y0 + 1, int(round((fy + fh) * h)))
        v = v[y0:y1, x0:x1]
    if kind == "activation":
        lo, hi = float(v.min()), float(v.max())
        v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    v = np.clip(v, 0.0, 1.0)
    h, w = v.shape
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        v = cv2.resize(v, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return Heatmap(data=np.rint(v * 255).astype(np.uint8), roi=roi, class_id=class_id, kind=kind)


def content_fractions(mapping: InputMapping) -> tuple[float, float, float, float] | None:
    """The letterbox content as fractions of the model input (``None`` when it fills it)."""
    x, y, w, h = mapping.content
    mh, mw = mapping.model_size
    if (x, y, w, h) == (0, 0, mw, mh):
        return None
    return x / mw, y / mh, w / mw, h / mh


def refuse_task(contract: ModelContract, why: str) -> ContractError:
    return ContractError(f"model {contract.model_id}: {why}", "fix the contract (docs/MODEL_CONTRACT.md)")
