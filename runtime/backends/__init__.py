"""Inference backends behind one interface (:class:`~medstream.runtime.backends.base.Backend`).

``load_backend("auto" | "onnxruntime" | "tensorrt", ...)`` picks and constructs one; heavy modules
(tensorrt, cuda.bindings) are imported only when their backend is asked for.
"""

from __future__ import annotations

from typing import Any

from medstream.runtime.backends.base import Backend
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError

BACKENDS = ("auto", "onnxruntime", "tensorrt")


def choose_backend(requested: str) -> tuple[str, str]:
    """Resolve ``auto`` to a concrete backend; returns ``(name, reason)`` (``doctor`` prints the reason)."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}", f"use one of: {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested, "asked for explicitly"
    try:
        from medstream.runtime.backends import tensorrt_backend
    except ImportError:
        return "onnxruntime", "TensorRT backend module not available"
    ok, why = tensorrt_backend.available()
    if ok:
        return "tensorrt", why
    return "onnxruntime", why


def load_backend(requested: str, model_path: str, contract: ModelContract, **options: Any) -> Backend:
    """Construct (not yet activate) the backend ``requested`` for ``model_path``."""
    name, _ = choose_backend(requested)
    if name == "tensorrt":
        from medstream.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, contract, **options)
    from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model_path, contract, **options)


__all__ = ["Backend", "BACKENDS", "choose_backend", "load_backend"]
