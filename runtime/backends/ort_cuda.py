"""ONNX Runtime on the GPU without TensorRT: the CUDA execution provider with IO binding and CUDA graphs.

Why a separate backend from :class:`~medstream.runtime.backends.onnxruntime_backend.OnnxRuntimeBackend`:
``session.run`` with numpy arrays copies the input to the GPU and every output back on each call,
and allocates. Here the input and output tensors are ``OrtValue``s allocated once on the device and
bound with IO binding, so

* the GPU preprocessor writes the model input straight into the bound input buffer, and the GPU
  postprocessor reads the logits where the model wrote them (only the uint8 mask crosses PCIe);
* the addresses never change, which is what ONNX Runtime's CUDA graph mode (``enable_cuda_graph``)
  requires: the whole model becomes one graph launch. On the lent H100 that took a 256x256 U-Net
  from 1.07 ms to 0.47 ms (fp32) and 0.32 ms (fp16 ONNX).

Provider options: ``cudnn_conv_algo_search=EXHAUSTIVE`` (benchmarks every conv algorithm once at
start), ``prefer_nhwc=1`` (tensor-core friendly layout inside the EP), ``enable_cuda_graph=1``, and
``user_compute_stream`` set to our own stream so pre-, inference and postprocessing are ordered on
one stream. Each is tried in that order and dropped, with a log line, if this model or build cannot
take it. Where TensorRT's libraries are present the TensorRT execution provider goes first with an
engine cache, fp16 when asked, and int8 for QDQ models.

CUDA: through the one CUDA layer, :mod:`medstream.runtime.gpu.cuda` (cuda-python), as the TensorRT
backend does: our non-blocking stream (handed to ONNX Runtime as ``user_compute_stream``), the two
timing events, and host/device copies into the bound ``OrtValue``s (:class:`~medstream.runtime.gpu.cuda.DeviceView`).
CuPy is only the kernel library of the GPU pre/postprocessors, given our stream as an
``ExternalStream``. Without cuda-python (it comes with the ``[gpu]`` extra) inputs go in with
``OrtValue.update_inplace`` on ONNX Runtime's own stream and the GPU stages stay off.
Not run on hardware in this tree's CI (no GPU): ``tests/runtime/backends/test_ort_cuda.py`` checks
these calls against the real ``cuda.bindings`` signatures; ``benchmarks/gpu_device_check.py`` runs
this backend on a GPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.backends.base import Backend
from medstream.runtime.backends.onnxruntime_backend import check_session_against_contract, make_session
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import BackendError, MissingDependencyError, ModelLoadError
from medstream.runtime.gpu import cuda
from medstream.runtime.machine import tensorrt_libs_present

log = logging.getLogger("medstream.backend.ort_cuda")

_NP_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def cuda_ep_available() -> tuple[bool, str]:
    """Whether onnxruntime here has the CUDA execution provider and a GPU to run it on."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, f"onnxruntime {ort.__version__} is the CPU build (no CUDAExecutionProvider)"
    if cuda.bindings_version() is None:  # cannot verify a device without cuda-python: trust the provider list
        return True, (f"onnxruntime {ort.__version__} with CUDAExecutionProvider (device not verified: cuda-python "
                      "not installed)")
    if cuda.device_count() == 0:
        return False, f"onnxruntime {ort.__version__} has the CUDA provider but no CUDA device is usable"
    return True, f"onnxruntime {ort.__version__} with CUDAExecutionProvider and a CUDA device"


def cuda_provider_options(device_id: int = 0, cuda_graph: bool = True, conv_algo_search: str = "EXHAUSTIVE",
                          prefer_nhwc: bool = True, user_stream: int | None = None) -> dict[str, str]:
    """CUDA EP options as ONNX Runtime's Python API takes them (strings)."""
    if conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        raise ValueError(f"cudnn_conv_algo_search must be EXHAUSTIVE, HEURISTIC or DEFAULT, not {conv_algo_search!r}")
    opts = {"device_id": str(device_id), "cudnn_conv_algo_search": conv_algo_search,
            "prefer_nhwc": "1" if prefer_nhwc else "0", "enable_cuda_graph": "1" if cuda_graph else "0"}
    if user_stream is not None:
        opts["has_user_compute_stream"] = "1"
        opts["user_compute_stream"] = str(int(user_stream))
    return opts


def tensorrt_provider_options(device_id: int = 0, precision: str = "fp32", quantized: bool = False,
                              cache_dir: str | Path | None = None, dla_core: int | None = None) -> dict[str, Any]:
    """TensorRT EP options: persistent engine + timing caches, fp16 on request, int8 from a QDQ model."""
    from medstream.runtime.engine.cache import default_cache_dir

    cache = str(Path(cache_dir) if cache_dir is not None else default_cache_dir() / "ort-trt")
    opts: dict[str, Any] = {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
                            "trt_fp16_enable": precision in ("fp16", "int8"),
                            "trt_int8_enable": bool(quantized)}  # QDQ scales: no calibration table needed
    if dla_core is not None:
        opts.update({"trt_dla_enable": True, "trt_dla_core": int(dla_core)})
    return opts


class OrtCudaBackend(Backend):
    """ONNX Runtime CUDA EP with device-resident, fixed IO buffers (see the module docstring).

    Parameters
    ----------
    cuda_graph, conv_algo_search, prefer_nhwc
        CUDA EP options (each dropped with a log line when the model or build cannot take it).
    tensorrt_ep
        Put the TensorRT EP first: ``None`` = when libnvinfer is present, ``True``/``False`` to force.
    precision, trt_cache_dir, dla_core
        For the TensorRT EP.
    """

    name = "onnxruntime-cuda"
    _measures_own_compute_time = True

    def __init__(self, model_path: str, contract: ModelContract, device_id: int = 0, cuda_graph: bool = True,
                 conv_algo_search: str = "EXHAUSTIVE", prefer_nhwc: bool = True, tensorrt_ep: bool | None = None,
                 precision: str = "fp32", trt_cache_dir: str | Path | None = None, dla_core: int | None = None,
                 intra_op_threads: int | None = None, **_: Any) -> None:
        self._pending: tuple[Any, Any] | None = None
        self._compute_ms = 0.0
        super().__init__(model_path, contract)
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        self.conv_algo_search = conv_algo_search
        self.prefer_nhwc = prefer_nhwc
        self.tensorrt_ep = tensorrt_ep
        self.trt_precision = precision
        self.trt_cache_dir = trt_cache_dir
        self.dla_core = dla_core
        self._threads = intra_op_threads
        self.session = None
        self.shared_stream = False
        self.graph_enabled = False
        self._device_outputs = False
        self.stream: cuda.Stream | None = None
        self._start: cuda.Event | None = None
        self._end: cuda.Event | None = None
        self.variant = ""

    @property
    def last_compute_ms(self) -> float:
        if self._pending is not None:
            start, end = self._pending
            self._pending = None
            self._compute_ms = cuda.Event.elapsed_ms(start, end)
        return self._compute_ms

    @last_compute_ms.setter
    def last_compute_ms(self, value: float) -> None:
        self._pending = None
        self._compute_ms = float(value)

    # ---- set-up
    def _variants(self, stream_ptr: int | None) -> list[dict[str, Any]]:
        """Configurations to try, best first: graph + shared stream, graph, shared stream, plain."""
        out = []
        for graph in ((True, False) if self.cuda_graph else (False,)):
            for shared in ((True, False) if stream_ptr is not None else (False,)):
                out.append({"graph": graph, "shared": shared})
        return out

    def _providers(self, variant: dict[str, Any], stream_ptr: int | None) -> list[Any]:
        providers: list[Any] = []
        use_trt = self.tensorrt_ep if self.tensorrt_ep is not None else tensorrt_libs_present()
        import onnxruntime as ort

        if use_trt and "TensorrtExecutionProvider" in ort.get_available_providers():
            import onnx

            from medstream.runtime.engine.fp16 import has_qdq

            quantized = has_qdq(onnx.load(self.model_path, load_external_data=False))
            providers.append(("TensorrtExecutionProvider", tensorrt_provider_options(
                self.device_id, self.trt_precision, quantized, self.trt_cache_dir, self.dla_core)))
        providers.append(("CUDAExecutionProvider", cuda_provider_options(
            self.device_id, variant["graph"], self.conv_algo_search, self.prefer_nhwc,
            stream_ptr if variant["shared"] else None)))
        providers.append("CPUExecutionProvider")
        return providers

    def _activate(self) -> None:
        import onnxruntime as ort

        ok, why = cuda_ep_available()
        if not ok:
            raise ModelLoadError(f"the ONNX Runtime CUDA backend cannot start: {why}",
                                 "pip install onnxruntime-gpu (in place of onnxruntime) on a machine with an NVIDIA "
                                 "GPU, or use --backend onnxruntime (CPU)")
        try:
            cuda.set_device(self.device_id)
            self.stream = cuda.Stream()
            self._start, self._end = cuda.Event(), cuda.Event()
        except MissingDependencyError:
            self.stream = self._start = self._end = None
            log.info("cuda-python not installed: inputs are copied with OrtValue.update_inplace on ONNX Runtime's "
                     "own stream, outputs come back to the host; GPU pre/postprocessing is off")
        stream_ptr = self.stream.ptr if self.stream is not None else None
        errors = []
        for variant in self._variants(stream_ptr):
            try:
                self._open(ort, variant, stream_ptr)
                break
            except Exception as exc:
                errors.append(f"{variant}: {str(exc).splitlines()[0][:200]}")
                log.warning("ONNX Runtime CUDA set-up %s failed (%s); trying a simpler one", variant,
                            str(exc).splitlines()[0][:200])
                self.session = None
        else:
            raise ModelLoadError(f"ONNX Runtime could not run {self.model_path} on the GPU: {' | '.join(errors)}",
                                 "check 'medstream doctor' (driver, CUDA, onnxruntime-gpu versions) or use "
                                 "--backend onnxruntime")
        self.device = f"cuda:{self.device_id}"

    def _open(self, ort: Any, variant: dict[str, Any], stream_ptr: int | None) -> None:
        self.session = make_session(self.model_path, self._providers(variant, stream_ptr), self._threads)
        check_session_against_contract(self.session, self.contract, self.model_path)
        used = self.session.get_providers()
        if "CUDAExecutionProvider" not in used and "TensorrtExecutionProvider" not in used:
            raise ModelLoadError("ONNX Runtime fell back to the CPU", "check the CUDA/cuDNN libraries")
        self.graph_enabled, self.shared_stream = variant["graph"], variant["shared"]
        self._bind(ort)
        # Warm-up: with CUDA graphs, ONNX Runtime captures during these first runs.
        for _ in range(3):
            self._run()
        if self.stream is not None:
            self.stream.synchronize()
        self.variant = ("cuda-graph" if self.graph_enabled else "no-graph") + \
            (", shared stream" if self.shared_stream else "") + \
            (", TensorRT EP" if used[0] == "TensorrtExecutionProvider" else "")
        log.info("ONNX Runtime GPU path for %s: %s (providers %s)", self.model_path, self.variant, used)

    def _bind(self, ort: Any) -> None:
        spec = self.contract.input
        self.binding = self.session.io_binding()
        self._values: dict[str, Any] = {}
        self._shapes: dict[str, tuple[tuple[int, ...], Any]] = {}
        in_meta = {i.name: i for i in self.session.get_inputs()}
        symbols: dict[str, int] = {}
        for name, meta in in_meta.items():
            shape = self.input_shape() if name == spec.name else tuple(d if isinstance(d, int) else 1 for d in meta.shape)
            for d, v in zip(meta.shape, shape, strict=True):
                if not isinstance(d, int) and d:
                    symbols[str(d)] = int(v)
            dtype = _NP_OF_ORT.get(meta.type, np.float32)
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", self.device_id)
            self.binding.bind_ortvalue_input(name, value)
            self._values[name], self._shapes[name] = value, (tuple(shape), np.dtype(dtype))
        self._output_names = [o.name for o in self.session.get_outputs()]
        for meta in self.session.get_outputs():
            dims = [d if isinstance(d, int) else symbols.get(str(d)) for d in meta.shape]
            dtype = _NP_OF_ORT.get(meta.type, np.float32)
            if any(d is None for d in dims):
                if self.graph_enabled:
                    raise ModelLoadError(f"output {meta.name!r} has unresolved dims {meta.shape}",
                                         "CUDA graphs need fixed output shapes; export with static shapes")
                self.binding.bind_output(meta.name, "cuda", self.device_id)
                continue
            value = ort.OrtValue.ortvalue_from_shape_and_type(dims, dtype, "cuda", self.device_id)
            self.binding.bind_ortvalue_output(meta.name, value)
            self._values[meta.name], self._shapes[meta.name] = value, (tuple(dims), np.dtype(dtype))

    def _run(self) -> None:
        self.session.run_with_iobinding(self.binding)

    # ---- per frame
    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        for name, x in inputs.items():
            if name in self._values:
                self._put_input(name, x)
        timed = self.stream is not None and self.shared_stream
        if self.stream is not None and not self.shared_stream:
            self.stream.synchronize()  # ORT runs on its own stream: the input must be complete first
        t0 = time.perf_counter_ns()
        if timed:
            self._start.record(self.stream)
        try:
            self._run()
        except Exception as exc:
            raise BackendError(f"ONNX Runtime (CUDA) failed on {self.model_path}: {str(exc).splitlines()[0][:300]}",
                               "the frame was dropped; if this repeats, check 'medstream doctor'") from None
        if timed:
            self._end.record(self.stream)
            self._pending = (self._start, self._end)
        else:  # ORT's run returns after its stream is synchronised: wall time is GPU time plus launch overhead
            self.last_compute_ms = (time.perf_counter_ns() - t0) / 1e6
        if self._device_outputs:
            return {name: self._output_view(name) for name in self._output_names}
        if any(name not in self._values for name in self._output_names):
            outs = self.binding.get_outputs()
            return {name: v.numpy() for name, v in zip(self._output_names, outs, strict=True)}
        return {name: self._values[name].numpy() for name in self._output_names}

    def _put_input(self, name: str, x: Any) -> None:
        value = self._values[name]
        shape, dtype = self._shapes[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if hasattr(x, "__cuda_array_interface__"):
            iface = x.__cuda_array_interface__
            if int(iface["data"][0]) == int(value.data_ptr()):
                return  # written in place by the GPU preprocessor
            if (tuple(x.shape) != shape or np.dtype(x.dtype) != dtype or iface.get("strides") is not None
                    or self.stream is None):
                raise BackendError(f"input {name!r} is a {tuple(x.shape)} {x.dtype} device array (strided: "
                                   f"{iface.get('strides') is not None}), the session is bound to {shape} {dtype}",
                                   "the frame was dropped; check the model contract")
            cuda.DeviceView(int(value.data_ptr()), nbytes).copy_from_device(int(iface["data"][0]), nbytes, self.stream)
            return
        x = np.ascontiguousarray(x, dtype=dtype)
        if x.shape != shape:
            raise BackendError(f"input {name!r} has shape {x.shape}, the session is bound to {shape}",
                               "the frame was dropped; check the model contract (size, layout)")
        if self.stream is not None:
            cuda.DeviceView(int(value.data_ptr()), nbytes).upload(x, self.stream)
        else:
            value.update_inplace(x)

    def _view(self, name: str) -> Any:
        from medstream.runtime.gpu.prepost import device_view

        shape, dtype = self._shapes[name]
        return device_view(int(self._values[name].data_ptr()), shape, dtype, owner=self._values[name])

    def _output_view(self, name: str) -> Any:
        if name in self._values:
            return self._view(name)
        return self.binding.get_outputs()[self._output_names.index(name)].numpy()

    def _deactivate(self) -> None:
        if self.stream is not None:
            try:
                self.stream.synchronize()
            except Exception as exc:
                log.warning("stream synchronize at shutdown failed: %s", exc)
        self._pending = None
        self.binding = None
        self._values = {}
        self.session = None
        for attr in ("_start", "_end", "stream"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()
                setattr(self, attr, None)

    # ---- GPU stages
    def make_preprocessor(self):
        self.activate()
        from medstream.runtime.gpu.prepost import GpuPreprocessor, cupy_available, external_stream

        if self.stream is None or not cupy_available():
            return super().make_preprocessor()
        return GpuPreprocessor(self.contract, out=self._view(self.contract.input.name),
                               stream=external_stream(self.stream.ptr))

    def make_postprocessor(self):
        self.activate()
        from medstream.runtime.gpu.prepost import GpuPostprocessor, cupy_available, external_stream

        if self.stream is None or not cupy_available() or self.contract.primary_output.name not in self._values:
            return super().make_postprocessor()
        self._device_outputs = True
        return GpuPostprocessor(self.contract, stream=external_stream(self.stream.ptr))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"variant": self.variant, "cuda_graph": self.graph_enabled, "shared_stream": self.shared_stream})
        if self.session is not None:
            info["providers"] = self.session.get_providers()
        return info
