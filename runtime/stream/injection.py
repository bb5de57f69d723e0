"""Fault and delay injection (config ``inject:``), as wrappers around the stages: never inside the worker.

The benchmark harness and the fault-matrix tests drive the real ``medstream run`` process with delays
and failures planted here. With injection off (production) nothing is wrapped and the worker calls the
real stages directly: zero cost. The start-up log says when it is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from medstream.runtime.backends.base import Backend
from medstream.runtime.config import InjectConfig
from medstream.runtime.errors import BackendError


def delayed(fn: Callable[..., Any], ms: float | None) -> Callable[..., Any]:
    """``fn`` preceded by a sleep of ``ms`` (``fn`` itself when there is none)."""
    if not ms:
        return fn
    seconds = ms / 1000.0

    def call(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return call


class InjectingBackend(Backend):
    """Wraps a backend: sleeps before inference, hangs on one frame, fails every N-th call.

    The frame's ``seq`` is told through :meth:`at_frame` before each inference (``hang_at_seq``).
    """

    def __init__(self, inner: Backend, inject: InjectConfig) -> None:
        super().__init__(inner.model_path, inner.contract)
        self.inner = inner
        self.name = inner.name
        self.inject = inject
        self._calls = 0
        self._seq = -1
        self._delay_s = inject.delay_ms.get("infer", 0.0) / 1000.0

    def at_frame(self, seq: int) -> None:
        self._seq = seq

    # The wrapper shares the inner backend's identity and stage factories.
    @property
    def device(self) -> str:  # type: ignore[override]
        return self.inner.device

    @device.setter
    def device(self, value: str) -> None:
        pass

    @property
    def precision(self) -> str:  # type: ignore[override]
        return self.inner.precision

    @precision.setter
    def precision(self, value: str) -> None:
        pass

    @property
    def last_compute_ms(self) -> float:  # type: ignore[override]
        return self.inner.last_compute_ms

    @last_compute_ms.setter
    def last_compute_ms(self, value: float) -> None:
        pass

    _measures_own_compute_time = True

    def _activate(self) -> None:
        self.inner.activate()

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def warm_up(self, runs: int = 3) -> None:
        self.inner.warm_up(runs)

    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self._delay_s:
            time.sleep(self._delay_s)
        self._calls += 1
        if self.inject.hang_at_seq is not None and self._seq == self.inject.hang_at_seq:
            time.sleep(self.inject.hang_s)
        if self.inject.error_every and self._calls % self.inject.error_every == 0:
            raise BackendError(f"injected failure on frame {self._seq}", "test injection (config 'inject')")
        return self.inner.infer(inputs)

    def make_preprocessor(self):
        return self.inner.make_preprocessor()

    def make_postprocessor(self):
        return self.inner.make_postprocessor()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "inject": self.inject.model_dump(exclude_defaults=True)}


__all__ = ["InjectingBackend", "delayed"]
