"""ONNX Runtime backend: CPU everywhere, the CUDA execution provider where onnxruntime-gpu finds a GPU.

The CPU path is what runs on a laptop, in CI and on this project's 2-core machine. The GPU path with
IO binding and device-side pre/postprocessing lives in :mod:`medstream.runtime.backends.ort_cuda`
(issue 5) and reuses this class's session construction.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.backends.base import Backend
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import BackendError, ContractError, ModelLoadError

log = logging.getLogger("medstream.backends.onnxruntime")


def default_threads() -> int:
    """Intra-op threads: every core this process may use (ORT's default ignores CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def make_session(model_path: str, providers: list[Any], intra_op_threads: int | None = None,
                 spin_after_run: bool = False):
    """Create an ``InferenceSession`` or raise :class:`ModelLoadError` naming the file and the fix.

    ONNX Runtime's intra-op threads spin while a run lasts (the bundled U-Net has 53 nodes, 23 of
    them convolutions, each a parallel section; waking sleeping threads for each costs more than
    spinning) and, by default, keep spinning after it returns. A stream runs one inference per frame and then has other work: receiving the
    next frame, publishing, and on a small machine the capture and display processes. Unless
    ``spin_after_run`` is set, the threads stop spinning as soon as each run returns
    (``session.force_spinning_stop``). The trade, measured on the 2-core development machine with
    ``python -m medstream.benchmarks.spin_after_run`` (ultrasound model, 2 threads, 18 ms idle after
    each inference, settings interleaved; benchmarks/results/spin_after_run.json): about a fifth less
    CPU per frame (55.9 vs 70.4 ms) for an inference p50 0.3-1.6 ms slower (four runs). In the
    three-process glass scenario, where the freed CPU goes to capture and display, one paired 3-round
    comparison gave the same p50 and a lower p99 per round with the threads stopped (45-53 ms vs
    55-61 ms), hence the default. Set ``spin_after_run`` when the model has the machine to itself.
    """
    import onnxruntime as ort

    path = Path(model_path)  # checked by the model loader (runtime/models/loader.py) before we get here
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spin_after_run:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
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
        ONNX Runtime execution providers; ``None`` is the CPU. The model loader chose the file and the
        device (see :mod:`medstream.runtime.models.loader`).
    intra_op_threads
        Threads for one inference; defaults to the usable cores.
    spin_after_run
        Keep the inference threads spinning between runs (see :func:`make_session`).
    """

    name = "onnxruntime"

    def __init__(self, model_path: str, contract: ModelContract, providers: list[Any] | None = None,
                 intra_op_threads: int | None = None, reuse_output_buffers: bool = False,
                 spin_after_run: bool = False) -> None:
        super().__init__(model_path, contract)
        self._spin = spin_after_run
        self._providers = providers
        self._threads = intra_op_threads
        self._reuse = reuse_output_buffers
        self.session = None
        self._output_names: list[str] = []
        self._binding = None
        self._outputs: dict[str, np.ndarray] = {}

    def _activate(self) -> None:
        # The device and the file were chosen by the model loader (runtime/models/loader.py); this
        # runner only opens what it was given. ``providers=None`` means the CPU.
        providers = self._providers or ["CPUExecutionProvider"]
        self.session = make_session(self.model_path, providers, self._threads, self._spin)
        check_session_against_contract(self.session, self.contract, self.model_path)
        used = self.session.get_providers()
        self.device = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        self.precision = _precision_of(self.session)
        self._output_names = [o.name for o in self.session.get_outputs()]
        if self._reuse and self.device == "cpu":
            self._bind_outputs()

    def _bind_outputs(self) -> None:
        """Preallocate every output once and let ONNX Runtime write into it (IO binding).

        Without this each inference allocates its outputs afresh (0.8 MB for a 3-class 256x256
        model: an mmap, page faults and an munmap per frame). Only for static output shapes.
        """
        outs = self.session.get_outputs()
        if not all(all(isinstance(d, int) for d in o.shape) for o in outs):
            return
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(uint8)": np.uint8, "tensor(int32)": np.int32}
        if not all(o.type in types for o in outs):
            return
        self._binding = self.session.io_binding()
        for o in outs:
            arr = np.empty(o.shape, types[o.type])
            self._outputs[o.name] = arr
            self._binding.bind_output(o.name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Outputs are new arrays, or with ``reuse_output_buffers`` the same buffers every call
        (valid until the next call: copy what you keep)."""
        try:
            if self._binding is not None:
                for name, value in inputs.items():
                    self._binding.bind_cpu_input(name, value)
                self.session.run_with_iobinding(self._binding)
                return self._outputs
            values = self.session.run(self._output_names, inputs)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed on {self.model_path}: {str(exc).splitlines()[0][:300]}",
                               "the frame was dropped; if this repeats, check the model's input shape and dtype") from None
        return dict(zip(self._output_names, values, strict=True))

    def _deactivate(self) -> None:
        self._binding = None
        self._outputs = {}
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
