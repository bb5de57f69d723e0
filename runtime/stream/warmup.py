"""Warm-up of one model before the first frame, shared by the primary model and every further model."""

from __future__ import annotations

from typing import Any

import numpy as np

from medstream.runtime.backends.base import Backend
from medstream.runtime.decoders import refine
from medstream.runtime.errors import MedstreamError, ModelLoadError


def warm_up_and_refine(backend: Backend, decoder: Any, runs: int, *, what: str = "model") -> Any:
    """Run ``runs`` inferences on zeros of the contract's input size and dtype, check the real output shapes
    against the contract (dynamic axes are concrete now) and return the decoder they call for.

    A failure here is the model's or the contract's, not a frame's: it is refused with what was fed.
    """
    contract = backend.contract
    shape = backend.input_shape()
    dtype = {"float16": np.float16, "uint8": np.uint8}.get(contract.input.dtype, np.float32)
    try:
        if runs > 1:
            backend.warm_up(runs - 1)
        outputs = backend.infer({contract.input.name: np.zeros(shape, dtype)})
    except Exception as exc:
        reason = exc.what if isinstance(exc, MedstreamError) else f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(
            f"{what} {backend.model_path} failed its warm-up inference, before any frame, on zeros of "
            f"shape {list(shape)} {np.dtype(dtype).name} (contract input {contract.input.height}x"
            f"{contract.input.width} {contract.input.layout}): {reason.splitlines()[0][:300]}",
            "check contract.input (height, width, layout, dtype) against the model: models with dynamic "
            "sizes often need sides that are multiples of 32") from None
    return refine(decoder, outputs)


__all__ = ["warm_up_and_refine"]
