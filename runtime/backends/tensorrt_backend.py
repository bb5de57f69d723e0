"""TensorRT backend: a prebuilt (or built-and-cached) engine run from fixed buffers with a CUDA graph.

Start-up (``activate``): find the engine for this model and device in the engine cache, validating
its manifest (or build it; see :mod:`medstream.runtime.engine.resolve`), deserialize it with
``tensorrt`` or, where only the runtime is installed, ``tensorrt_lean``; discover inputs and outputs
by name and mode; set the input shape from the contract (dynamic profiles); allocate one device
buffer per tensor plus pinned host buffers and bind them with ``set_tensor_address``; enqueue once
(TensorRT finishes its lazy set-up on the first enqueue) and then capture ``execute_async_v3`` on
our non-default stream into a CUDA graph. When capture fails the backend logs it and enqueues
directly: same results, a little more CPU per frame.

Per frame (``infer``): the input is already on the device (GPU preprocessing writes straight into
the bound buffer) or is copied there from pinned memory; the graph is launched between two CUDA
events, whose elapsed time is ``last_compute_ms`` (GPU time, read lazily so no extra sync is
added); outputs stay on the device when the GPU postprocessor is in use, else come back to pinned
host buffers.

TensorRT versions: the name-based I/O API used here (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_tensor_address``, ``execute_async_v3``, ``set_input_shape``) exists since
8.5 and is the only one in 10 and 11; the binding-index API (``get_binding_*``, ``execute_v2`` with
bindings) was removed in 10. TensorRT 11 removed ``ICudaEngine.device_memory_size`` (not used here)
and weak typing (a build-side matter). Both 10 and 11 are supported; 8.x is refused with a clear message.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.backends.base import Backend
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import BackendError, ContractError, MissingDependencyError, ModelLoadError

log = logging.getLogger("medstream.backend.tensorrt")

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def import_tensorrt() -> tuple[Any, str]:
    """``(module, "full" | "lean")``: the full package when installed (it can also build), else the lean runtime."""
    try:
        import tensorrt as trt

        return trt, "full"
    except ImportError:
        pass
    try:
        import tensorrt_lean as trt

        return trt, "lean"
    except ImportError:
        raise MissingDependencyError("tensorrt", "tensorrt", "The TensorRT backend") from None


def available() -> tuple[bool, str]:
    """Whether ``auto`` should pick TensorRT here, and why (printed by ``medstream doctor``). Never raises."""
    try:
        trt, flavour = import_tensorrt()
    except Exception:
        return False, "TensorRT is not installed (neither 'tensorrt' nor 'tensorrt_lean' imports)"
    version = getattr(trt, "__version__", "?")
    from medstream.runtime.gpu.cuda import bindings_version, device_count

    if bindings_version() is None:
        return False, (f"TensorRT {version} ({flavour}) is installed but cuda-python is not "
                       "(pip install 'medstream[tensorrt]')")
    n = device_count()
    if n == 0:
        return False, f"TensorRT {version} ({flavour}) is installed but no CUDA device is usable (no GPU or no driver)"
    try:
        from medstream.runtime.gpu.cuda import device_info

        name = device_info(0)["name"]
    except Exception:
        name = "GPU 0"
    return True, f"TensorRT {version} ({flavour}) and CUDA device {name} found"


def _is_device_array(x: Any) -> bool:
    return hasattr(x, "__cuda_array_interface__")


class TensorRTBackend(Backend):
    """Runs a TensorRT engine.

    Parameters
    ----------
    model_path
        An ``.onnx`` file (the engine is found in, or built into, the engine cache) or an
        ``.engine``/``.plan`` file (loaded when the ``.json`` manifest beside it fits this device).
    precision, dla_core
        Which engine to use or build for an ONNX model.
    cache_dir
        Engine cache root (default: see :func:`medstream.runtime.engine.cache.default_cache_dir`).
    allow_build, no_build
        ``allow_build=False`` or ``no_build=True`` (``--no-build``): refuse instead of building when no
        valid engine is cached.
    cuda_graph
        Capture inference into a CUDA graph after the warm-up enqueue (falls back when impossible).
    zero_copy
        Use mapped pinned host memory as the engine's I/O (no copies; for Jetson's shared DRAM).
        ``None``: on when the GPU is integrated.
    device
        CUDA device index.
    """

    name = "tensorrt"
    _measures_own_compute_time = True

    def __init__(self, model_path: str, contract: ModelContract, precision: str = "fp32",
                 dla_core: int | None = None, cache_dir: str | Path | None = None, allow_build: bool = True,
                 cuda_graph: bool = True, zero_copy: bool | None = None, device: int = 0, no_build: bool = False,
                 **_: Any) -> None:
        self._pending: tuple[Any, Any] | None = None
        self._compute_ms = 0.0
        super().__init__(model_path, contract)
        self.precision = precision
        self.dla_core = dla_core
        self.cache_dir = cache_dir
        self.allow_build = allow_build and not no_build
        self.use_cuda_graph = cuda_graph
        self.zero_copy = zero_copy
        self.device_index = device
        self.flavour = ""
        self.graph = None
        self._tensors: dict[str, dict[str, Any]] = {}
        self._device_outputs = False
        self._engine_manifest: dict[str, Any] = {}

    # ---- GPU time, read lazily: reading it waits for the end event, which infer() itself never does
    @property
    def last_compute_ms(self) -> float:
        if self._pending is not None:
            from medstream.runtime.gpu.cuda import Event

            start, end = self._pending
            self._pending = None
            self._compute_ms = Event.elapsed_ms(start, end)
        return self._compute_ms

    @last_compute_ms.setter
    def last_compute_ms(self, value: float) -> None:
        self._pending = None
        self._compute_ms = float(value)

    # ---- lifecycle
    def _engine_bytes(self, trt: Any) -> bytes:
        from medstream.runtime.engine.cache import DeviceFacts, EngineCache, check_engine, make_key

        path = Path(self.model_path)
        facts = DeviceFacts.current(trt, self.device_index)
        if path.suffix.lower() in ENGINE_SUFFIXES:
            manifest_path = path.with_suffix(".json")
            verdict = check_engine(path, manifest_path)
            if verdict.ok:
                recorded = verdict.manifest["key"]
                expected = make_key(path, facts, recorded.get("precision", "fp32"), recorded.get("dla_core"),
                                    onnx_sha256=recorded.get("onnx_sha256", ""))
                verdict = check_engine(path, manifest_path, expected)
            if not verdict.ok:
                raise ModelLoadError(f"refusing to load {path}: {verdict.reason}",
                                     "rebuild it on this device: 'medstream build --model MODEL.onnx' (and point "
                                     "--model at the .onnx so the cache manages engines)")
            self._engine_manifest = verdict.manifest
            return path.read_bytes()
        if path.suffix.lower() != ".onnx":
            raise ModelLoadError(f"{path} is neither an ONNX model nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})",
                                 "point --model at the .onnx file or at a built .engine")
        from medstream.runtime.engine.resolve import obtain_engine

        data, manifest, _ = obtain_engine(
            path, self.contract, facts, cache=EngineCache(self.cache_dir), precision=self.precision,
            dla_core=self.dla_core, allow_build=self.allow_build,
            require_version_compatible=self.flavour == "lean")
        self._engine_manifest = manifest
        return data

    def _precheck_engine_file(self) -> None:
        """A prebuilt engine without a valid manifest is refused before the GPU is even touched."""
        from medstream.runtime.engine.cache import check_engine

        path = Path(self.model_path)
        if path.suffix.lower() in ENGINE_SUFFIXES:
            verdict = check_engine(path, path.with_suffix(".json"))
            if not verdict.ok:
                raise ModelLoadError(f"refusing to load {path}: {verdict.reason}",
                                     "rebuild it on this device: 'medstream build --model MODEL.onnx' (and point "
                                     "--model at the .onnx so the cache manages engines)")

    def _activate(self) -> None:
        from medstream.runtime.gpu import cuda

        trt, self.flavour = import_tensorrt()
        self._precheck_engine_file()
        cuda.set_device(self.device_index)
        info = cuda.device_info(self.device_index)
        data = self._engine_bytes(trt)
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        if self.dla_core is not None:
            self._runtime.DLA_core = int(self.dla_core)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelLoadError(
                f"TensorRT {trt.__version__} ({self.flavour}) could not deserialize the engine for {self.model_path}",
                "it was built by another TensorRT version or for another GPU (or, for the lean runtime, without "
                "--version-compatible): rebuild with 'medstream build' on this device")
        if not hasattr(self.engine, "num_io_tensors"):  # TensorRT < 8.5
            raise ModelLoadError(f"TensorRT {trt.__version__} is too old for medstream (needs the name-based I/O API)",
                                 "install TensorRT 10 or 11 (JetPack 6 or newer on Jetson)")
        self.context = self.engine.create_execution_context()
        self._discover_and_bind(trt, info)
        self.stream = cuda.Stream()
        self._start, self._end = cuda.Event(), cuda.Event()
        # One plain enqueue first: TensorRT defers some set-up to the first enqueue, which must not be captured.
        self._enqueue()
        self.stream.synchronize()
        if self.use_cuda_graph:
            self.graph = cuda.CudaGraph.try_capture(self.stream, self._enqueue, f"TensorRT engine {self.model_path}")
        manifest_precision = self._engine_manifest.get("key", {}).get("precision")
        self.precision = manifest_precision or self.precision
        self.device = f"dla:{self.dla_core}" if self.dla_core is not None else f"cuda:{self.device_index}"
        self._gpu_name = info["name"]

    def _discover_and_bind(self, trt: Any, info: dict[str, Any]) -> None:
        from medstream.runtime.gpu.cuda import DeviceBuffer, PinnedHostBuffer

        engine, ctx = self.engine, self.context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        spec = self.contract.input
        if spec.name not in inputs:
            raise ContractError(f"engine for {self.model_path} has no input {spec.name!r} (inputs: {inputs})",
                                "fix contract.input.name or rebuild the engine from the right model")
        missing = [o.name for o in self.contract.outputs if o.name not in outputs]
        if missing:
            raise ContractError(f"engine for {self.model_path} has no output(s) {missing} (outputs: {outputs})",
                                "fix contract.outputs or rebuild the engine from the right model")
        want = self.input_shape()
        for name in inputs:
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                lo, _, hi = (tuple(d) for d in engine.get_tensor_profile_shape(name, 0))
                target = want if name == spec.name else tuple(lo)
                if not all(a <= s <= b for a, s, b in zip(lo, target, hi, strict=True)):
                    raise ContractError(
                        f"input {name!r} shape {target} is outside the engine's optimization profile {lo}..{hi}",
                        "rebuild the engine ('medstream build') from the contract that names this size")
                if not ctx.set_input_shape(name, target):
                    raise ContractError(f"TensorRT refused input shape {target} for {name!r}",
                                        "rebuild the engine for this input size")
            elif name == spec.name and shape != want:
                raise ContractError(f"engine input {name!r} is {shape}, the contract needs {want}",
                                    "rebuild the engine from the model this contract belongs to")
        unresolved = ctx.infer_shapes()
        if unresolved:
            raise ContractError(f"engine shapes not fully specified: {unresolved}", "rebuild with static shapes")
        zero_copy = self.zero_copy if self.zero_copy is not None else bool(info.get("integrated"))
        self.zero_copy = zero_copy and bool(info.get("can_map_host_memory", True))
        for name in names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host = PinnedHostBuffer(shape, dtype, mapped=self.zero_copy)
            dev = None if self.zero_copy else DeviceBuffer(host.nbytes)
            ptr = host.device_ptr if self.zero_copy else dev.ptr
            if not ctx.set_tensor_address(name, ptr):
                raise ModelLoadError(f"TensorRT refused the buffer address for tensor {name!r}",
                                     "restart; if it repeats, rebuild the engine")
            self._tensors[name] = {"shape": shape, "dtype": dtype, "host": host, "device": dev, "ptr": ptr,
                                   "input": name in inputs}
        self._input_names, self._output_names = inputs, outputs

    def _enqueue(self) -> bool:
        ok = self.context.execute_async_v3(self.stream.ptr)
        if not ok:
            raise BackendError(f"TensorRT enqueue failed for {self.model_path}",
                               "the frame was dropped; if this repeats, rebuild the engine ('medstream build')")
        return True

    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        for name in self._input_names:
            if name in inputs:
                self._put_input(name, inputs[name])
        self._start.record(self.stream)
        if self.graph is not None:
            self.graph.launch(self.stream)
        else:
            self._enqueue()
        self._end.record(self.stream)
        self._pending = (self._start, self._end)
        if self._device_outputs:
            return {name: self._device_view(name) for name in self._output_names}
        for name in self._output_names:
            t = self._tensors[name]
            if t["device"] is not None:
                t["device"].download(t["host"], self.stream)
        self.stream.synchronize()
        return {name: self._tensors[name]["host"].array for name in self._output_names}

    def _put_input(self, name: str, x: Any) -> None:
        t = self._tensors[name]
        if _is_device_array(x):
            iface = x.__cuda_array_interface__
            if int(iface["data"][0]) == t["ptr"]:
                return  # the GPU preprocessor wrote straight into the bound buffer
            if tuple(x.shape) != t["shape"] or np.dtype(x.dtype) != t["dtype"]:
                raise BackendError(f"input {name!r} is {tuple(x.shape)} {x.dtype}, the engine needs {t['shape']} "
                                   f"{t['dtype']}", "the frame was dropped; check the model contract")
            t["device"].copy_from_device(int(iface["data"][0]), t["host"].nbytes, self.stream)
            return
        x = np.asarray(x)
        if x.shape != t["shape"]:
            raise BackendError(f"input {name!r} has shape {x.shape}, the engine needs {t['shape']}",
                               "the frame was dropped; check the model contract (size, layout)")
        np.copyto(t["host"].array, x, casting="same_kind")
        if t["device"] is not None:
            t["device"].upload(t["host"], self.stream)

    def _device_view(self, name: str) -> Any:
        from medstream.runtime.gpu.prepost import device_view

        t = self._tensors[name]
        return device_view(t["ptr"], t["shape"], t["dtype"], owner=self)

    def _deactivate(self) -> None:
        if getattr(self, "stream", None) is not None:
            try:
                self.stream.synchronize()
            except Exception as exc:
                log.warning("stream synchronize at shutdown failed: %s", exc)
        self._pending = None
        if self.graph is not None:
            self.graph.close()
            self.graph = None
        for t in self._tensors.values():
            if t["device"] is not None:
                t["device"].close()
            t["host"].close()
        self._tensors = {}
        for attr in ("_start", "_end", "stream"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()
                setattr(self, attr, None)
        # Context before engine before runtime: TensorRT objects must die in reverse order of creation.
        self.context = None
        self.engine = None
        self._runtime = None

    # ---- GPU stages
    def make_preprocessor(self):
        """Device-side preprocessing writing straight into the engine's input buffer (CPU one without CuPy)."""
        self.activate()
        from medstream.runtime.gpu.prepost import (
            GpuPreprocessor,
            cupy_available,
            device_view,
            external_stream,
        )

        if not cupy_available():
            log.info("CuPy not available: preprocessing on the CPU, input copied to the GPU from pinned memory")
            return super().make_preprocessor()
        t = self._tensors[self.contract.input.name]
        out = device_view(t["ptr"], t["shape"], t["dtype"], owner=self)
        return GpuPreprocessor(self.contract, out=out, stream=external_stream(self.stream.ptr))

    def make_postprocessor(self):
        """Argmax on the device, uint8 class map downloaded (CPU postprocessor without CuPy)."""
        self.activate()
        from medstream.runtime.gpu.prepost import GpuPostprocessor, cupy_available, external_stream

        if not cupy_available():
            return super().make_postprocessor()
        self._device_outputs = True
        return GpuPostprocessor(self.contract, stream=external_stream(self.stream.ptr))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"tensorrt": self.flavour, "cuda_graph": self.graph is not None,
                     "zero_copy": bool(self.zero_copy), "engine": self._engine_manifest.get("key", {})})
        if self.is_active:
            info["gpu"] = getattr(self, "_gpu_name", "")
        return info


# Every TensorRT runtime API this backend calls, as (class, member, parameter names): the contract test
# checks each against the installed bindings' pybind11 signatures (tensorrt_lean in CI, tensorrt where present).
USED_RUNTIME_API: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Logger", "__init__", ("min_severity",)),
    ("Runtime", "__init__", ("logger",)),
    ("Runtime", "deserialize_cuda_engine", ("serialized_engine",)),
    ("Runtime", "DLA_core", ()),
    ("ICudaEngine", "num_io_tensors", ()),
    ("ICudaEngine", "get_tensor_name", ("index",)),
    ("ICudaEngine", "get_tensor_mode", ("name",)),
    ("ICudaEngine", "get_tensor_shape", ("name",)),
    ("ICudaEngine", "get_tensor_dtype", ("name",)),
    ("ICudaEngine", "get_tensor_profile_shape", ("name", "profile_index")),
    ("ICudaEngine", "create_execution_context", ()),
    ("IExecutionContext", "set_input_shape", ("name", "shape")),
    ("IExecutionContext", "infer_shapes", ()),
    ("IExecutionContext", "get_tensor_shape", ("name",)),
    ("IExecutionContext", "set_tensor_address", ("name", "memory")),
    ("IExecutionContext", "execute_async_v3", ("stream_handle",)),
    ("TensorIOMode", "INPUT", ()),
    ("TensorIOMode", "OUTPUT", ()),
    ("", "nptype", ()),
)
