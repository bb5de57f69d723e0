"""OpenVINO backend: the CPU path on Intel (x86-64) machines without an NVIDIA GPU.

Why a second CPU backend: on this project's 2-core Xeon (AVX512-VNNI, AMX-BF16) the ultrasound U-Net
(256x256, 2 threads, onnxruntime 1.32, openvino 2026.4.1) takes, floor per inference, rows interleaved:

=====================================  =================  ==========================================
file                                   ONNX Runtime       OpenVINO
=====================================  =================  ==========================================
``M.onnx`` (FP32)                      19.3 ms / 39.6     19.1 / 33.7 (f32 hint), **5.0 / 7.4 (bf16)**
``M.int8.onnx`` (S8S8 QDQ)             16.9 ms / -        **4.5 / 6.8** (int8, f32 elsewhere)
``M.int8-cpu.onnx`` (U8S8 QDQ twin)    10.8 ms / 17.2     4.5 / 6.7
=====================================  =================  ==========================================

(first figure: a quiet minute, medians of 15 rounds x 5 runs; second: a loaded one, median of 40 round
medians x 10 runs, ``python -m medstream.benchmarks.backend_table --rounds 40``, benchmarks/results/
backends.json; issue 16 recorded 20.5 / 10.9 / 10.0 / 9.0 ms on another day. The ratios carry over, the
absolute figures do not.) INT8 on OpenVINO is 4.3-5.8x faster than FP32 ONNX Runtime, Dice within 0.03
points of it.

Which INT8 file: OpenVINO runs the S8S8 file (``M.int8.onnx``: the one TensorRT also runs and the
calibration gate judged) about as fast as the U8S8 twin: the twin was 1-3 % faster in each of three
runs (4.47 vs 4.53, 6.67 vs 6.78 ms ultrasound, 6.73 vs 6.94 fluoroscopy), inside this machine's drift
and well under the 4-6x that both give. OpenVINO therefore runs ``M.int8.onnx`` itself; the twin stays
ONNX Runtime's (where it is 1.6x faster than S8S8).

Precision (config ``model.precision``, ``--precision``), decided once in :func:`resolve_precision`:

* ``int8``: the calibrated QDQ file (the model loader gives ``M.int8.onnx`` for ``M.onnx``); the layers
  left in floating point run in f32.
* ``bf16``: the FP32 file with OpenVINO's bf16 inference-precision hint; only where the CPU computes
  bf16 natively (AMX-BF16 or AVX512-BF16), else refused (emulated bf16 would be slower than f32).
* ``fp32``: the FP32 file with the f32 hint: the same masks as ONNX Runtime FP32.
* ``auto``: an INT8 file runs as int8; an FP32 file runs in bf16 where the CPU has it, else f32.
  (OpenVINO's own default on such CPUs is bf16 too.) Both bf16 and int8 passed the accuracy gate on
  the bundled models (Dice drop <= 1 point per class against FP32 on held-out phantom frames;
  ``tests/runtime/backends/test_openvino_backend.py`` and benchmarks/results/backends.json).

Preprocessing is *not* fused into the graph: OpenVINO's PrePostProcessor can take the uint8 frame and
normalise inside the model, but the numpy path costs 0.025 ms per 256x256 frame here, and fused vs not
measured 4.82 vs 4.88 ms per frame (1 %, inside the drift), while fusing would give the runtime a second
preprocessing path that calibration and evaluation do not share. Not worth it.

Compiled models are cached on disk (OpenVINO's ``CACHE_DIR``; default
``$MEDSTREAM_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/medstream/openvino``, else
``~/.cache/medstream/openvino``): compiling the INT8 U-Net costs 0.26 s cold, 0.03-0.05 s from the cache.

Devices: this backend runs on the CPU. An Intel iGPU or NPU that OpenVINO sees is named in the log and in
:meth:`OpenVinoBackend.describe` but not used: the accuracy gate and the latency figures above were
measured on the CPU only, and no machine of this project has such a device to measure one.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

from medstream.runtime.backends.base import Backend
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import (
    BackendError,
    ConfigError,
    ContractError,
    MissingDependencyError,
    ModelLoadError,
    require,
)

log = logging.getLogger("medstream.backends.openvino")

PRECISIONS = ("auto", "fp32", "bf16", "int8")
X86 = ("x86_64", "amd64", "i686", "x86")
#: CPU flags (runtime/machine.py) with which the CPU computes bf16 natively.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def available() -> tuple[bool, str]:
    """Whether ``auto`` should pick OpenVINO here, and why (cheap: the module is found, not imported)."""
    from medstream.runtime.machine import package_version

    try:
        require_installed()
    except MissingDependencyError:
        return False, "OpenVINO is not installed (pip install 'medstream[openvino]': about 4x faster CPU inference on Intel CPUs)"
    arch = platform.machine().lower()
    if arch not in X86:
        return False, f"OpenVINO is installed but this CPU is {arch}, not x86-64: ONNX Runtime runs the CPU path"
    version = package_version("openvino") or "?"
    ok, why = bf16_capable()
    return True, (f"OpenVINO {version} is installed on this x86-64 CPU: it runs the CPU path "
                  f"(an FP32 model in {'bf16' if ok else 'fp32'}, as {why}; an INT8 model as int8)")


def require_installed() -> None:
    """Raise :class:`MissingDependencyError` (naming the extra) unless OpenVINO can be found; imports nothing."""
    import importlib.util

    try:
        found = importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencyError("openvino", "openvino", "the OpenVINO backend (--backend openvino)")


def bf16_capable() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16), with the flags that say so."""
    from medstream.runtime.machine import cpu_facts

    flags = [f for f in BF16_FLAGS if f in cpu_facts().flags]
    if flags:
        return True, f"this CPU has {' and '.join(f.upper().replace('_', '-') for f in flags)}"
    return False, "this CPU has neither AMX-BF16 nor AVX512-BF16"


def resolve_precision(requested: str, *, is_int8: bool) -> tuple[str, str]:
    """The precision OpenVINO runs the model in, and why: ``(precision, reason)``.

    Raises
    ------
    ConfigError
        A precision the file or the CPU cannot give (bf16 on a CPU without it; fp32/bf16 on an INT8
        file; int8 on an FP32 file the loader found no INT8 twin for).
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}", f"use one of: {', '.join(PRECISIONS)}")
    if is_int8:
        if requested in ("auto", "int8"):
            return "int8", "the model is quantized (QDQ INT8)" + (" and int8 was asked for" if requested == "int8" else "")
        raise ConfigError(f"precision {requested} was asked for, but the model file is quantized (INT8)",
                          "point --model at the FP32 file (M.onnx, not M.int8.onnx), or use --precision int8")
    if requested == "int8":
        raise ConfigError("precision int8 was asked for, but the model file is FP32 and has no INT8 twin",
                          "calibrate it first (medstream calibrate --model M.onnx writes M.int8.onnx beside it), "
                          "or use --precision auto")
    if requested == "fp32":
        return "fp32", "fp32 was asked for"
    ok, why = bf16_capable()
    if requested == "bf16":
        if not ok:
            raise ConfigError(f"precision bf16 was asked for, but {why}: OpenVINO would emulate it, slower than fp32",
                              "use --precision fp32 (or int8 with a calibrated model) on this machine")
        return "bf16", f"bf16 was asked for and {why}"
    return ("bf16", f"auto: {why}") if ok else ("fp32", f"auto: {why}")


def default_cache_dir() -> Path:
    """Where compiled models are cached (see the module docstring)."""
    env = os.environ.get("MEDSTREAM_OPENVINO_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medstream" / "openvino"


def openvino_facts() -> dict[str, Any]:
    """OpenVINO's version and devices, for ``medstream doctor`` (imports openvino; never raises)."""
    try:
        import openvino as ov

        core = ov.Core()
        devices = list(core.available_devices)
        names = {}
        for d in devices:
            try:
                names[d] = str(core.get_property(d, "FULL_DEVICE_NAME"))
            except Exception:
                names[d] = d
        return {"version": ov.__version__, "devices": devices, "device_names": names,
                "accelerators": accelerator_note(devices)}
    except ImportError:
        return {"version": None, "devices": [], "note": "not installed (pip install 'medstream[openvino]')"}
    except Exception as exc:
        return {"version": None, "devices": [], "note": f"OpenVINO failed to start: {exc}"}


def accelerator_note(devices: list[str]) -> str:
    """What this backend says about Intel iGPU/NPU devices (it runs on the CPU only)."""
    others = [d for d in devices if not d.startswith("CPU")]
    if not others:
        return "Intel GPU/NPU: not available on this machine (OpenVINO sees the CPU only)"
    return (f"OpenVINO also sees {', '.join(others)}: not used; medstream runs OpenVINO on the CPU, where its "
            "accuracy gate and latency were measured")


class OpenVinoBackend(Backend):
    """Runs an ONNX model with OpenVINO on the CPU, on numpy arrays.

    Parameters
    ----------
    precision
        ``auto``, ``fp32``, ``bf16`` or ``int8`` (see the module docstring); the file was chosen by the model
        loader for it.
    threads
        Inference threads (``INFERENCE_NUM_THREADS``); default every usable core. ``intra_op_threads`` is
        accepted as the same (the ONNX Runtime backend's name, used by ``evaluate_model`` callers).
    cache_dir
        Compiled-model cache folder (default :func:`default_cache_dir`); ``False`` turns caching off.
    reuse_output_buffers
        Return OpenVINO's own output tensors (valid until the next call: copy what you keep) instead of copies.
    """

    name = "openvino"

    def __init__(self, model_path: str, contract: ModelContract, precision: str = "auto", threads: int | None = None,
                 cache_dir: str | Path | bool | None = None, reuse_output_buffers: bool = False,
                 intra_op_threads: int | None = None) -> None:
        super().__init__(model_path, contract)
        ov = require("openvino", "openvino", "the OpenVINO backend (--backend openvino)")
        self._ov = ov
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(self.model_path)
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO cannot read {self.model_path}: {str(exc).splitlines()[0][:300]}",
                                 "the file is corrupt, truncated or not ONNX; re-export it or restore a good copy") from None
        self._fit_shapes()
        check_model_against_contract(self._model, contract, self.model_path)
        self.is_int8 = any(op.get_type_name() == "FakeQuantize" for op in self._model.get_ops())
        self.precision, self.precision_reason = resolve_precision(precision, is_int8=self.is_int8)
        self.requested_precision = precision
        from medstream.runtime.machine import cpu_facts

        self.threads = threads or intra_op_threads or cpu_facts().usable_cores
        self._cache = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()
        self._reuse = reuse_output_buffers
        self._compiled = None
        self._request = None
        self._outputs: list[tuple[Any, str]] = []
        self.available_devices: list[str] = []
        self.inference_hint: str | None = None

    # ---- loading
    def _fit_shapes(self) -> None:
        """Static shapes from the contract where the file leaves them open (batch too, unless dynamic_batch)."""
        spec = self.contract.input
        port = _port(self._model.inputs, spec.name)
        if port is None or not port.get_partial_shape().is_dynamic or port.get_partial_shape().rank.is_dynamic:
            return
        dims = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, spec.channels)
        shape = list(port.get_partial_shape())
        if len(shape) != 4:
            return
        new = [(-1 if spec.dynamic_batch else 1) if shape[0].is_dynamic else shape[0].get_length()]
        new += [want if got.is_dynamic else got.get_length() for got, want in zip(shape[1:], dims, strict=True)]
        self._model.reshape({port: self._ov.PartialShape(new)})

    def _config(self) -> dict[str, Any]:
        hint = {"int8": "f32", "fp32": "f32", "bf16": "bf16"}[self.precision]
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                  "INFERENCE_NUM_THREADS": int(self.threads), "INFERENCE_PRECISION_HINT": hint}
        if self._cache is not None:
            try:
                self._cache.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(self._cache)
            except OSError as exc:
                log.warning("OpenVINO compiled-model cache %s cannot be created (%s): compiling without it "
                            "(about 0.3 s per start)", self._cache, exc.strerror or exc)
                self._cache = None
        return config

    def _activate(self) -> None:
        try:
            self.available_devices = list(self._core.available_devices)
        except Exception:
            self.available_devices = ["CPU"]
        try:
            self._compiled = self._core.compile_model(self._model, "CPU", self._config())
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO cannot compile {self.model_path}: {str(exc).splitlines()[0][:300]}",
                                 "try --backend onnxruntime, or --precision fp32; report the model if it persists") from None
        self._request = self._compiled.create_infer_request()
        self.inference_hint = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._outputs = [(port, _name(port)) for port in self._compiled.outputs]
        log.info("OpenVINO %s on the CPU: %s precision (%s), %d threads, cache %s; %s", self._ov.__version__.split("-")[0],
                 self.precision, self.precision_reason, self.threads, self._cache or "off",
                 accelerator_note(self.available_devices),
                 extra={"fields": {"event": "openvino_precision", "precision": self.precision,
                                   "reason": self.precision_reason, "devices": self.available_devices}})

    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Outputs are copies, or with ``reuse_output_buffers`` OpenVINO's own buffers (valid until the next call)."""
        try:
            result = self._request.infer(inputs, share_inputs=True, share_outputs=self._reuse)
            return {name: result[port] for port, name in self._outputs}
        except Exception as exc:
            raise BackendError(f"OpenVINO failed on {self.model_path}: {str(exc).splitlines()[0][:300]}",
                               "the frame was dropped; if this repeats, check the model's input shape and dtype") from None

    def _deactivate(self) -> None:
        self._request = None
        self._compiled = None
        self._outputs = []

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"precision_reason": self.precision_reason, "requested_precision": self.requested_precision,
                     "openvino": self._ov.__version__.split("-")[0], "threads": self.threads,
                     "cache_dir": str(self._cache) if self._cache else None,
                     "available_devices": self.available_devices})
        if self.inference_hint is not None:  # what the compiled model reported (after activate)
            info["inference_precision_hint"] = self.inference_hint
        return info


def _name(port: Any) -> str:
    try:
        return port.get_any_name()
    except RuntimeError:  # an unnamed output: OpenVINO's own node name
        return port.get_node().get_friendly_name()


def _port(ports: Any, name: str) -> Any:
    for p in ports:
        if name in p.get_names():
            return p
    return None


def check_model_against_contract(model: Any, contract: ModelContract, model_path: str) -> None:
    """Refuse, before the stream starts, a contract whose names or shapes the model does not have."""
    spec = contract.input
    inputs = sorted(n for p in model.inputs for n in p.get_names())
    outputs = {n for p in model.outputs for n in p.get_names()}
    port = _port(model.inputs, spec.name)
    if port is None:
        raise ContractError(f"model {model_path} has no input named {spec.name!r} (it has {inputs})",
                            "fix contract.input.name in the config or re-export the model")
    missing = [o.name for o in contract.outputs if o.name not in outputs]
    if missing:
        raise ContractError(f"model {model_path} has no output(s) {missing} (it has {sorted(outputs)})",
                            "fix contract.outputs in the config or re-export the model")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        raise ContractError(f"model {model_path} input {spec.name!r} has shape {shape}, the contract expects rank 4 "
                            f"({spec.layout})", "check contract.input.layout")
    expected = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, spec.channels)
    for got, want, axis in zip(list(shape)[1:], expected, spec.layout[1:], strict=True):
        if got.is_static and got.get_length() != want:
            raise ContractError(
                f"model {model_path} input {spec.name!r} has {axis}={got.get_length()}, the contract says {want} "
                f"(layout {spec.layout})", "fix contract.input (height/width/channels/layout) to match the model")


__all__ = ["BF16_FLAGS", "OpenVinoBackend", "PRECISIONS", "accelerator_note", "available", "bf16_capable",
           "default_cache_dir", "openvino_facts", "require_installed", "resolve_precision"]
