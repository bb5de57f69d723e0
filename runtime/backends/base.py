"""The backend interface: one small base every inference engine shares.

Modelled on Polygraphy's runners: ``activate()`` loads and warms up, ``infer()`` runs one batch,
``deactivate()`` frees. A backend also says what it is (``device``, ``precision``) and how long its
last call spent computing (``last_compute_ms``: for GPU backends measured with CUDA events, so it is
the device time the benchmark's ``floor`` scenario reports).

Pre- and postprocessing hooks (:meth:`Backend.make_preprocessor`, :meth:`Backend.make_postprocessor`)
default to the CPU implementations; a GPU backend returns device-side ones so the frame is uploaded
once as uint8 and only the uint8 mask comes back. The pipeline does not know the difference.
"""

from __future__ import annotations

import abc
import time
from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract


class Backend(abc.ABC):
    """Base class of every inference backend.

    Subclasses implement :meth:`_activate`, :meth:`_infer` and :meth:`_deactivate`; this class adds
    the lifecycle checks and the timing, so every backend behaves the same to the pipeline.
    """

    name: str = "base"

    def __init__(self, model_path: str, contract: ModelContract) -> None:
        self.model_path = str(model_path)
        self.contract = contract
        self.is_active = False
        self.last_compute_ms = 0.0
        self.device = "cpu"
        self.precision = "fp32"

    # ---- lifecycle
    def activate(self) -> Backend:
        """Load the model and prepare buffers. Idempotent. Returns ``self`` for chaining."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # ---- inference
    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run one inference. ``inputs`` maps input names to arrays (host or device, per backend).

        Raises
        ------
        medstream.runtime.errors.BackendError
            When the engine fails on this input; the pipeline drops the frame and goes on.
        """
        if not self.is_active:
            raise RuntimeError(f"{self.name} backend used before activate()")
        start = time.perf_counter_ns()
        outputs = self._infer(inputs)
        if not self._measures_own_compute_time:
            self.last_compute_ms = (time.perf_counter_ns() - start) / 1e6
        return outputs

    def warm_up(self, runs: int = 3) -> None:
        """Run a few inferences on zeros so the first real frame pays no one-off costs."""
        shape = self.input_shape()
        dtype = np.float16 if self.contract.input.dtype == "float16" else (
            np.uint8 if self.contract.input.dtype == "uint8" else np.float32)
        zeros = {self.contract.input.name: np.zeros(shape, dtype)}
        for _ in range(runs):
            self.infer(zeros)

    def input_shape(self) -> tuple[int, ...]:
        """The input shape the contract asks for, batch 1."""
        spec = self.contract.input
        if spec.layout == "NCHW":
            return (1, spec.channels, spec.height, spec.width)
        return (1, spec.height, spec.width, spec.channels)

    # ---- stage factories (GPU backends override to keep data on the device)
    def make_preprocessor(self):
        from medstream.runtime.preprocess import Preprocessor

        return Preprocessor(self.contract)

    def make_postprocessor(self):
        from medstream.runtime.postprocess import Postprocessor

        return Postprocessor(self.contract)

    def describe(self) -> dict[str, Any]:
        """What this backend is, for logs, status and benchmark reports."""
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "model": self.model_path, "model_id": self.contract.model_id}

    # ---- for subclasses
    _measures_own_compute_time = False

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...
