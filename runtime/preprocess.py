"""Preprocessing: a captured frame becomes the model's input tensor, as the model contract says.

This is the one code path that turns pixels into model input. The runtime, ``evaluate``,
``calibrate`` and the benchmarks all call :class:`Preprocessor`, so calibration statistics are
collected on exactly what the model sees in production.

Buffers are allocated once per input geometry and reused: in steady state a frame costs a colour
conversion, a resize and a normalisation written into preallocated arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ContractError

_TO_GRAY = {"bgr": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_RGB2GRAY, "bgra": cv2.COLOR_BGRA2GRAY, "rgba": cv2.COLOR_RGBA2GRAY}
_TO_RGB = {"gray": cv2.COLOR_GRAY2RGB, "bgr": cv2.COLOR_BGR2RGB, "bgra": cv2.COLOR_BGRA2RGB, "rgba": cv2.COLOR_RGBA2RGB}
_TO_BGR = {"gray": cv2.COLOR_GRAY2BGR, "rgb": cv2.COLOR_RGB2BGR, "bgra": cv2.COLOR_BGRA2BGR, "rgba": cv2.COLOR_RGBA2BGR}


class FrameMismatch(ContractError):
    """A frame that cannot be made to fit the model (counted as ``invalid``, reason ``contract_mismatch``)."""


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
        else:
            span = norm.high - norm.low
            self._a = np.full(c, 1.0 / span, np.float32)
            self._b = np.full(c, -norm.low / span, np.float32)
        self._clip = norm.kind == "window"
        self._hwc = np.empty((spec.height, spec.width, c), np.float32)
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
        image = self.convert_color(image, color_order)
        h, w = self._hw
        if image.shape[0] == h and image.shape[1] == w:
            resized = image
        else:
            # INTER_AREA when shrinking keeps thin structures (needles, wires) visible.
            interp = cv2.INTER_AREA if image.shape[0] > h else cv2.INTER_LINEAR
            resized = cv2.resize(image, (w, h), interpolation=interp)
            if resized.ndim == 2:
                resized = resized[:, :, None]
        spec = self.contract.input
        if spec.dtype == "uint8":
            hwc_out = resized
        else:
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

    def batch(self, images: list[np.ndarray], color_order: str = "gray") -> np.ndarray:
        """Preprocess several frames into a new ``(N, ...)`` array (calibration, evaluation)."""
        return np.concatenate([self(img, color_order).copy() for img in images], axis=0)
