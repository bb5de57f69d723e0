"""Inference backends (the runners) behind one interface (:class:`~medstream.runtime.backends.base.Backend`).

:func:`choose_backend` is the one place the device is decided (TensorRT, ONNX Runtime's CUDA execution
provider, or ONNX Runtime on the CPU); :func:`medstream.runtime.models.loader.load_model` calls it
once and :func:`load_backend` constructs the runner for what the loader returned. Heavy modules
(tensorrt, cuda.bindings, onnxruntime-gpu's CUDA path) are imported only when their backend is asked for.

Backend names: ``auto``; ``onnxruntime`` (ONNX Runtime: the CUDA path when onnxruntime-gpu sees a CUDA
device, else the CPU); ``onnxruntime-cuda`` (the CUDA path, explicitly); ``tensorrt``; ``openvino`` (OpenVINO on the CPU: ``auto``
picks it on an x86-64 machine without a usable NVIDIA GPU when the ``[openvino]`` extra is installed); ``triton``
(a remote Triton Inference Server, only when asked for: ``--triton-url``). A chosen
backend is always concrete: ``onnxruntime`` then means the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medstream.runtime.backends.base import Backend
from medstream.runtime.errors import ConfigError

if TYPE_CHECKING:
    from medstream.runtime.models.loader import LoadedModel

BACKENDS = ("auto", "onnxruntime", "tensorrt", "onnxruntime-cuda", "openvino", "triton")


def choose_backend(requested: str) -> tuple[str, str]:
    """The concrete backend for ``requested`` and why: ``(name, reason)`` (``doctor`` prints the reason).

    ``name`` is ``tensorrt``, ``onnxruntime-cuda`` or ``onnxruntime`` (the CPU).
    """
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}", f"use one of: {', '.join(BACKENDS)}")
    if requested == "auto":
        ok, why = _tensorrt_available()
        if ok:
            return "tensorrt", why
        cuda_ok, cuda_why = _ort_cuda_usable()
        if cuda_ok:
            return "onnxruntime-cuda", f"{why}; {cuda_why}"
        ov_ok, ov_why = _openvino_usable()
        return ("openvino" if ov_ok else "onnxruntime"), f"{why}; {ov_why}"
    if requested == "onnxruntime":
        cuda_ok, cuda_why = _ort_cuda_usable()
        if cuda_ok:
            return "onnxruntime-cuda", f"asked for ONNX Runtime; {cuda_why}"
    if requested == "openvino":
        from medstream.runtime.backends.openvino_backend import require_installed

        require_installed()
    return requested, "asked for explicitly"


def load_backend(model: LoadedModel, **options: Any) -> Backend:
    """Construct (not yet activate) the runner for ``model`` on the backend the loader chose."""
    path, contract = str(model.run_path), model.contract
    if model.backend == "tensorrt":
        from medstream.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, contract, **options)
    if model.backend == "onnxruntime-cuda":
        from medstream.runtime.backends.ort_cuda import OrtCudaBackend

        return OrtCudaBackend(path, contract, **options)
    if model.backend == "onnxruntime":
        from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        options.setdefault("providers", ["CPUExecutionProvider"])
        return OnnxRuntimeBackend(path, contract, **options)
    if model.backend == "openvino":
        from medstream.runtime.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, contract, **options)
    if model.backend == "triton":  # remote (never chosen by auto): the loader decided contract and server
        from medstream.runtime.backends.triton_backend import TritonBackend

        local = model.run_path.is_file()
        return TritonBackend(path, contract, target=model.remote, model_sha256=model.sha256() if local else None,
                             **options)
    raise ConfigError(f"unknown backend {model.backend!r}", f"use one of: {', '.join(BACKENDS)}")


def _tensorrt_available() -> tuple[bool, str]:
    try:
        from medstream.runtime.backends import tensorrt_backend
    except ImportError:
        return False, "TensorRT backend module not available"
    return tensorrt_backend.available()


def _openvino_usable() -> tuple[bool, str]:
    """OpenVINO installed on an x86-64 CPU (cheap: the module is found, not imported)."""
    from medstream.runtime.backends.openvino_backend import available

    return available()


def _ort_cuda_usable() -> tuple[bool, str]:
    """onnxruntime-gpu with a CUDA device here (cheap: no session is created)."""
    try:
        from medstream.runtime.backends.ort_cuda import cuda_ep_available

        return cuda_ep_available()
    except Exception as exc:
        return False, f"ONNX Runtime's CUDA path is not usable ({exc})"


__all__ = ["Backend", "BACKENDS", "choose_backend", "load_backend"]
