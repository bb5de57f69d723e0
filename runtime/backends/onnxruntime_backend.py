"""ONNX Runtime backend: CPU everywhere, the CUDA execution provider where onnxruntime-gpu finds a GPU.

The CPU path is what runs on a laptop, in CI and on this project's 2-core machine. The GPU path with
IO binding and device-side pre/postprocessing lives in :mod:`medstream.runtime.backends.ort_cuda`
(issue 5) and reuses this class's session construction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.backends.base import Backend
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import BackendError, ContractError, ModelLoadError


def default_threads() -> int:
    """Intra-op threads: every core this process may use (ORT's default ignores CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def make_session(model_path: str, providers: list[Any], intra_op_threads: int | None = None):
    """Create an ``InferenceSession`` or raise :class:`ModelLoadError` naming the file and the fix."""
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist",
                             "check --model (or 'model:' in the config); bundled models: ultrasound, fluoroscopy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise ModelLoadError(
            f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}",
            "the file is corrupt, truncated or not ONNX; re-export it with 'medstream export' or restore a good copy",
        ) from None


def check_session_against_contract(session: Any, contract: ModelContract, model_path: str) -> None:
    """Refuse, before the stream starts, a contract whose names or shapes the model does not have."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    spec = contract.input
    if spec.name not in inputs:
        raise ContractError(f"model {model_path} has no input named {spec.name!r} (it has {sorted(inputs)})",
                            "fix contract.input.name in the config or re-export the model")
    missing = [o.name for o in contract.outputs if o.name not in outputs]
    if missing:
        raise ContractError(f"model {model_path} has no output(s) {missing} (it has {sorted(outputs)})",
                            "fix contract.outputs in the config or re-export the model")
    shape = inputs[spec.name].shape
    expected = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, spec.channels)
    if len(shape) != 4:
        raise ContractError(f"model {model_path} input {spec.name!r} has rank {len(shape)}, the contract expects 4 ({spec.layout})",
                            "check contract.input.layout")
    for got, want, axis in zip(shape[1:], expected, spec.layout[1:], strict=True):
        if isinstance(got, int) and got != want:
            raise ContractError(
                f"model {model_path} input {spec.name!r} has {axis}={got}, the contract says {want} (layout {spec.layout})",
                "fix contract.input (height/width/channels/layout) to match the model",
            )


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model with ONNX Runtime on numpy arrays.

    Parameters
    ----------
    providers
        ``None`` picks CUDA when onnxruntime-gpu sees a GPU, else CPU.
    intra_op_threads
        Threads for one inference; defaults to the usable cores.
    """

    name = "onnxruntime"

    def __init__(self, model_path: str, contract: ModelContract, providers: list[Any] | None = None,
                 intra_op_threads: int | None = None) -> None:
        super().__init__(model_path, contract)
        self._providers = providers
        self._threads = intra_op_threads
        self.session = None
        self._output_names: list[str] = []

    def _activate(self) -> None:
        import onnxruntime as ort

        providers = self._providers
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available \
                else ["CPUExecutionProvider"]
        self.session = make_session(self.model_path, providers, self._threads)
        check_session_against_contract(self.session, self.contract, self.model_path)
        used = self.session.get_providers()
        self.device = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        self.precision = _precision_of(self.session)
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            values = self.session.run(self._output_names, inputs)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed on {self.model_path}: {str(exc).splitlines()[0][:300]}",
                               "the frame was dropped; if this repeats, check the model's input shape and dtype") from None
        return dict(zip(self._output_names, values, strict=True))

    def _deactivate(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.session is not None:
            info["providers"] = self.session.get_providers()
            info["intra_op_threads"] = self._threads or default_threads()
        return info


def _precision_of(session: Any) -> str:
    types = {i.type for i in session.get_inputs()}
    if "tensor(float16)" in types:
        return "fp16"
    meta = session.get_modelmeta().custom_metadata_map
    return meta.get("medstream.precision", "fp32")


def numpy_dtype(contract: ModelContract) -> np.dtype:
    return np.dtype({"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[contract.input.dtype])
