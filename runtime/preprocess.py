"""Preprocessing: a captured frame becomes the model's input tensor, as the model contract says.

This is the one code path that turns pixels into model input. The runtime, ``evaluate``,
``calibrate`` and the benchmarks all call :class:`Preprocessor`, so calibration statistics are
collected on exactly what the model sees in production.

Buffers are allocated once per input geometry and reused: in steady state a frame costs a colour
conversion, a resize and a normalisation written into preallocated arrays.

Resize modes (contract ``input.resize``, version 2): ``stretch`` (v1, the fast path), ``letterbox``
(aspect kept, border of ``pad_value``) and ``center_crop``. :func:`input_mapping` says, for a frame size
and ROI, which part of the frame lands where in the model input; decoders use it to put boxes, points
and masks back into source-frame pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from medstream.runtime.contract import InputSpec, ModelContract
from medstream.runtime.errors import ContractError

_TO_GRAY = {"bgr": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_RGB2GRAY, "bgra": cv2.COLOR_BGRA2GRAY, "rgba": cv2.COLOR_RGBA2GRAY}
_TO_RGB = {"gray": cv2.COLOR_GRAY2RGB, "bgr": cv2.COLOR_BGR2RGB, "bgra": cv2.COLOR_BGRA2RGB, "rgba": cv2.COLOR_RGBA2RGB}
_TO_BGR = {"gray": cv2.COLOR_GRAY2BGR, "rgb": cv2.COLOR_RGB2BGR, "bgra": cv2.COLOR_BGRA2BGR, "rgba": cv2.COLOR_RGBA2BGR}


class FrameMismatch(ContractError):
    """A frame that cannot be made to fit the model (counted as ``invalid``, reason ``contract_mismatch``)."""


@dataclass(frozen=True, slots=True)
class InputMapping:
    """Where the model input's pixels come from in the source frame.

    ``region`` ``(x, y, w, h)``: the part of the source frame the model sees (the config's ROI, narrowed by a
    centre crop). ``content`` ``(x, y, w, h)``: where that region lies in the model input (all of it, or
    inside the letterbox border). Coordinates are continuous (pixel ``i`` spans ``[i, i + 1)``).
    """

    region: tuple[int, int, int, int]
    content: tuple[int, int, int, int]
    model_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Source-frame pixels per model pixel, ``(x, y)``."""
        return self.region[2] / self.content[2], self.region[3] / self.content[3]

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Model-input coordinates ``(..., 2)`` as ``(x, y)`` -> source-frame coordinates (float64)."""
        rx, ry, _, _ = self.region
        cx, cy, _, _ = self.content
        sx, sy = self.scale
        out = np.asarray(xy, np.float64).copy()
        out[..., 0] = rx + (out[..., 0] - cx) * sx
        out[..., 1] = ry + (out[..., 1] - cy) * sy
        return out

    def boxes_to_frame(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes ``(N, 4)`` ``x0, y0, x1, y1`` in model-input pixels -> source-frame pixels, clipped to ``region``."""
        out = self.to_frame(np.asarray(xyxy, np.float64).reshape(-1, 2, 2)).reshape(-1, 4)
        rx, ry, rw, rh = self.region
        np.clip(out[:, 0::2], rx, rx + rw, out=out[:, 0::2])
        np.clip(out[:, 1::2], ry, ry + rh, out=out[:, 1::2])
        return out


def input_mapping(spec: InputSpec, frame_hw: tuple[int, int],
                  roi: tuple[int, int, int, int] | None = None) -> InputMapping:
    """The :class:`InputMapping` of a ``frame_hw = (height, width)`` frame for the model input ``spec``."""
    h, w = spec.height, spec.width
    rx, ry, rw, rh = roi if roi is not None else (0, 0, int(frame_hw[1]), int(frame_hw[0]))
    if spec.resize == "letterbox":
        s = min(w / rw, h / rh)
        nw, nh = max(1, min(w, round(rw * s))), max(1, min(h, round(rh * s)))
        return InputMapping((rx, ry, rw, rh), ((w - nw) // 2, (h - nh) // 2, nw, nh), (h, w))
    if spec.resize == "center_crop":
        if rw * h > rh * w:  # wider than the model: keep the full height
            cw, ch = max(1, round(rh * w / h)), rh
        else:
            cw, ch = rw, max(1, round(rw * h / w))
        return InputMapping((rx + (rw - cw) // 2, ry + (rh - ch) // 2, cw, ch), (0, 0, w, h), (h, w))
    return InputMapping((rx, ry, rw, rh), (0, 0, w, h), (h, w))


def infer_color_order(image: np.ndarray, declared: str) -> str:
    """The colour order of ``image``: as declared, except that a 2-D array is always grey."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return "gray"
    channels = image.shape[2]
    if channels == 3 and declared in ("bgr", "rgb"):
        return declared
    if channels == 4 and declared in ("bgra", "rgba"):
        return declared
    return {3: "bgr", 4: "bgra"}.get(channels, declared)


class Preprocessor:
    """Frame pixels to a batch-1 input tensor for one model.

    Parameters
    ----------
    contract
        Gives size, layout, channels, colour order, dtype and normalisation.
    roi
        Optional ``(x, y, w, h)`` crop applied first, in frame pixels: for scanner screen grabs, the
        image region inside the vendor's text and logos.
    """

    def __init__(self, contract: ModelContract, roi: tuple[int, int, int, int] | None = None) -> None:
        self.contract = contract
        spec = contract.input
        self.roi = roi
        self._hw = (spec.height, spec.width)
        self._resized = np.empty((spec.height, spec.width, spec.channels), np.uint8)
        norm = spec.normalization
        c = spec.channels
        if norm.kind == "scale_mean_std":
            mean = np.resize(np.asarray(norm.mean, np.float32), c)
            std = np.resize(np.asarray(norm.std, np.float32), c)
            # x = (p * scale - mean) / std  ==  p * a + b, one fused multiply-add per pixel
            self._a = (norm.scale / std).astype(np.float32)
            self._b = (-mean / std).astype(np.float32)
        elif norm.kind == "range":
            lo, hi = norm.value_range
            self._a = np.full(c, (hi - lo) / 255.0, np.float32)
            self._b = np.full(c, lo, np.float32)
        elif norm.kind == "per_image":  # a and b are set per frame from the image's own statistics
            self._a = np.ones(c, np.float32)
            self._b = np.zeros(c, np.float32)
        else:
            span = norm.high - norm.low
            self._a = np.full(c, 1.0 / span, np.float32)
            self._b = np.full(c, -norm.low / span, np.float32)
        self._clip = norm.kind == "window"
        self._per_image = norm.kind == "per_image"
        self._hwc = np.empty((spec.height, spec.width, c), np.float32)
        self._canvas: np.ndarray | None = None  # letterbox: the padded input, border filled once
        self._canvas_content: tuple[int, int, int, int] | None = None
        out_dtype = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[spec.dtype]
        shape = (1, c, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, c)
        self.output = np.empty(shape, out_dtype)

    def convert_color(self, image: np.ndarray, color_order: str) -> np.ndarray:
        """Channels and order as the model wants them (``HxWxC``, uint8/uint16)."""
        want = self.contract.input.color_order
        have = infer_color_order(image, color_order)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if have == want:
            out = image
        elif want == "gray":
            out = cv2.cvtColor(image, _TO_GRAY[have])
        elif want == "rgb":
            out = cv2.cvtColor(image, _TO_RGB[have])
        else:
            out = cv2.cvtColor(image, _TO_BGR[have])
        return out if out.ndim == 3 else out[:, :, None]

    def __call__(self, image: np.ndarray, color_order: str = "gray") -> np.ndarray:
        """Return the model input for ``image`` (a view on a reused buffer: copy it to keep it)."""
        if image.ndim not in (2, 3) or image.dtype not in (np.uint8, np.uint16):
            raise FrameMismatch(f"frame of shape {image.shape} and dtype {image.dtype} cannot be preprocessed",
                                "send HxW or HxWxC uint8/uint16 frames")
        if self.roi is not None:
            x, y, w, h = self.roi
            if x + w > image.shape[1] or y + h > image.shape[0]:
                raise FrameMismatch(f"roi {self.roi} does not fit a {image.shape[1]}x{image.shape[0]} frame",
                                    "fix 'roi' in the config to lie inside the frame")
            image = image[y:y + h, x:x + w]
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        spec = self.contract.input
        content = None
        if spec.resize != "stretch":
            mapping = input_mapping(spec, image.shape[:2])
            if spec.resize == "center_crop":
                x, y, w, h = mapping.region
                image = image[y:y + h, x:x + w]
            else:
                content = mapping.content
        image = self.convert_color(image, color_order)
        resized = self._resize(image, self._hw) if content is None else self._letterbox(image, content)
        if spec.dtype == "uint8":
            hwc_out = resized
        else:
            if self._per_image:
                self._standardise(resized if content is None else
                                  resized[content[1]:content[1] + content[3], content[0]:content[0] + content[2]])
            np.multiply(resized, self._a, out=self._hwc)
            np.add(self._hwc, self._b, out=self._hwc)
            if self._clip:
                np.clip(self._hwc, 0.0, 1.0, out=self._hwc)
            hwc_out = self._hwc
        if spec.layout == "NCHW":
            np.copyto(self.output[0], hwc_out.transpose(2, 0, 1), casting="unsafe")
        else:
            np.copyto(self.output[0], hwc_out, casting="unsafe")
        return self.output

    @staticmethod
    def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        h, w = hw
        if image.shape[0] == h and image.shape[1] == w:
            return image
        # INTER_AREA when shrinking keeps thin structures (needles, wires) visible.
        interp = cv2.INTER_AREA if image.shape[0] > h else cv2.INTER_LINEAR
        resized = cv2.resize(image, (w, h), interpolation=interp)
        return resized[:, :, None] if resized.ndim == 2 else resized

    def _letterbox(self, image: np.ndarray, content: tuple[int, int, int, int]) -> np.ndarray:
        """The image scaled into ``content`` of a canvas whose border is ``pad_value`` (filled once per geometry)."""
        spec = self.contract.input
        if self._canvas is None or self._canvas_content != content:
            self._canvas = np.full((spec.height, spec.width, spec.channels), spec.pad_value, np.uint8)
            self._canvas_content = content
        x, y, w, h = content
        self._canvas[y:y + h, x:x + w] = self._resize(image, (h, w))
        return self._canvas

    def _standardise(self, pixels: np.ndarray) -> None:
        """Per-image standardisation: ``a, b`` so that ``p * a + b = (p - mean) / max(std, 1/sqrt(N))``."""
        norm = self.contract.input.normalization
        data = pixels.reshape(-1, pixels.shape[-1]).astype(np.float32)
        if norm.per_channel:
            mean, std = data.mean(axis=0), data.std(axis=0)
            floor = 1.0 / math.sqrt(data.shape[0])
        else:
            mean, std = np.full(data.shape[1], data.mean()), np.full(data.shape[1], data.std())
            floor = 1.0 / math.sqrt(data.size)
        std = np.maximum(std, floor)
        self._a[:] = 1.0 / std
        self._b[:] = -mean / std

    def mapping(self, frame_hw: tuple[int, int]) -> InputMapping:
        """Where a ``frame_hw`` frame's pixels land in the model input (with this preprocessor's ROI)."""
        return input_mapping(self.contract.input, frame_hw, self.roi)

    def batch(self, images: list[np.ndarray], color_order: str = "gray") -> np.ndarray:
        """Preprocess several frames into a new ``(N, ...)`` array (calibration, evaluation)."""
        return np.concatenate([self(img, color_order).copy() for img in images], axis=0)
