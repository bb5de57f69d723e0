"""Inference backends behind one interface (:class:`~medstream.runtime.backends.base.Backend`).

``load_backend("auto" | "onnxruntime" | "tensorrt", ...)`` picks and constructs one; heavy modules
(tensorrt, cuda.bindings) are imported only when their backend is asked for.

``onnxruntime`` means the GPU path (:class:`~medstream.runtime.backends.ort_cuda.OrtCudaBackend`: CUDA
execution provider, IO binding, CUDA graphs) when onnxruntime-gpu sees a CUDA device and no
``providers`` option pins something else; ``onnxruntime-cuda`` asks for that path explicitly.
"""

from __future__ import annotations

from typing import Any

from medstream.runtime.backends.base import Backend
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError

BACKENDS = ("auto", "onnxruntime", "tensorrt", "onnxruntime-cuda")


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
    if name == "onnxruntime-cuda" or (name == "onnxruntime" and options.get("providers") is None
                                      and _ort_cuda_usable()):
        from medstream.runtime.backends.ort_cuda import OrtCudaBackend

        return OrtCudaBackend(model_path, contract, **options)
    from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model_path, contract, **options)


def _ort_cuda_usable() -> bool:
    """onnxruntime-gpu with a CUDA device here (cheap: no session is created)."""
    try:
        from medstream.runtime.backends.ort_cuda import cuda_ep_available

        return cuda_ep_available()[0]
    except Exception:
        return False


__all__ = ["Backend", "BACKENDS", "choose_backend", "load_backend"]
