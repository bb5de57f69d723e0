"""The one CUDA layer of medstream: a thin, explicit wrapper over NVIDIA's ``cuda.bindings.runtime``.

Both GPU backends use it, as Polygraphy's runners share ``polygraphy.cuda``: the TensorRT backend
for its device and pinned buffers, stream, events and CUDA graph; the ONNX Runtime CUDA backend for
the stream it hands to ONNX Runtime (``user_compute_stream``), its timing events and the copies into
its bound ``OrtValue``s (:class:`DeviceView`). CuPy is used only where it does something this layer
does not, compiling and launching the pre/postprocessing kernels (:mod:`medstream.runtime.gpu.prepost`),
and it is handed our stream as a ``cupy.cuda.ExternalStream``; it never owns a stream, event or copy
on the inference path. Machine facts (``medstream doctor``) read devices through
:func:`device_count`/:func:`device_info` too (:mod:`medstream.runtime.machine`).

Not run on hardware from this tree's CI (no GPU there): the contract tests check every call below
against the installed bindings' signatures; ``benchmarks/gpu_device_check.py`` is the on-GPU check.

Why not PyCUDA or CuPy for this part: TensorRT's own samples use ``cuda.bindings``, it is the one
NVIDIA ships for CUDA 12 and 13 on x86-64 and Jetson, and it exposes streams, events and graph
capture one-to-one with the C API, which is what a CUDA-graph replay of ``execute_async_v3`` needs.

Every ``cuda.bindings`` call returns a tuple ``(error, *values)``; :func:`check` turns a non-zero
error into a :class:`CudaError` that names the call, the CUDA error and what to do about it.
Objects here own one CUDA resource each and free it in :meth:`close` (also on garbage collection,
so a dropped backend does not leak pinned memory).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from medstream.runtime.errors import BackendError, require

log = logging.getLogger("medstream.gpu")

_PURPOSE = "The GPU path (CUDA memory, streams, events, graphs)"

# Fixes for the errors a clinical engineer actually meets; anything else gets the generic one.
_FIXES = {
    "cudaErrorNoDevice": "no NVIDIA GPU is visible: check 'nvidia-smi' (or CUDA_VISIBLE_DEVICES), "
                         "or run with --backend onnxruntime on the CPU",
    "cudaErrorInsufficientDriver": "the NVIDIA driver is missing or older than this CUDA runtime: install or "
                                   "upgrade the driver (or JetPack), or run with --backend onnxruntime",
    "cudaErrorMemoryAllocation": "the GPU is out of memory: stop other GPU processes ('nvidia-smi') or use a "
                                 "smaller model/input size",
    "cudaErrorStreamCaptureUnsupported": "an operation is not allowed during CUDA graph capture; medstream "
                                         "falls back to plain enqueue",
    "cudaErrorLaunchFailure": "a GPU kernel crashed: restart the service; if it repeats, rebuild the engine "
                              "and check 'medstream doctor'",
}


def cudart() -> Any:
    """The ``cuda.bindings.runtime`` module, or :class:`MissingDependencyError` naming the extra."""
    return require("cuda.bindings.runtime", "gpu", _PURPOSE)


class CudaError(BackendError):
    """A CUDA runtime call failed. ``name`` is the CUDA error name (e.g. ``cudaErrorMemoryAllocation``)."""

    def __init__(self, call: str, name: str, detail: str) -> None:
        fix = _FIXES.get(name, "check 'medstream doctor' for the GPU, driver and CUDA versions; restart the service")
        super().__init__(f"CUDA call {call} failed: {name} ({detail})", fix)
        self.call = call
        self.name = name


def _error_name(err: Any) -> tuple[str, str]:
    rt = cudart()
    try:
        name = rt.cudaGetErrorName(err)[1]
        text = rt.cudaGetErrorString(err)[1]
        return (name.decode() if isinstance(name, bytes) else str(name),
                text.decode() if isinstance(text, bytes) else str(text))
    except Exception:  # a driver-API CUresult, or a bindings version without the helper
        return getattr(err, "name", str(err)), f"code {int(err)}"


def check(result: Any, call: str = "CUDA call") -> Any:
    """Unpack a ``cuda.bindings`` result tuple; raise :class:`CudaError` when its error is not success.

    Returns ``None`` for calls that return only an error, the value for one value, else the tuple.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        name, text = _error_name(err)
        raise CudaError(call, name, text)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def bindings_version() -> str | None:
    """The installed cuda-python (``cuda.bindings``) version, ``None`` when it is not installed."""
    try:
        import cuda.bindings
    except ImportError:
        return None
    return str(getattr(cuda.bindings, "__version__", "?"))


def driver_version() -> str | None:
    """The CUDA version the installed driver supports (e.g. ``"13.0"``), ``None`` without driver or bindings."""
    try:
        err, v = cudart().cudaDriverGetVersion()
    except Exception:
        return None
    return _version_string(int(v)) if int(err) == 0 and v else None


def set_device(index: int) -> None:
    """Make device ``index`` current for this thread (before creating streams or buffers on it)."""
    check(cudart().cudaSetDevice(int(index)), f"cudaSetDevice({index})")


def device_count() -> int:
    """How many CUDA devices this process can use; 0 when the driver or the bindings are missing."""
    try:
        rt = cudart()
        err, n = rt.cudaGetDeviceCount()
        return int(n) if int(err) == 0 else 0
    except Exception:  # no bindings, no driver library (cuda.pathfinder raises), ...
        return 0


def device_info(index: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory and driver/runtime versions of one device (for cache keys and doctor)."""
    rt = cudart()
    props = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    driver = check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
    runtime = check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return {
        "index": index,
        "name": name.strip("\x00 "),
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_bytes": int(props.totalGlobalMem),
        "integrated": bool(props.integrated),  # True on Jetson: host and device share DRAM
        "can_map_host_memory": bool(props.canMapHostMemory),
        "cuda_driver_version": _version_string(driver),
        "cuda_runtime_version": _version_string(runtime),
    }


def _version_string(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


class _Resource:
    """One owned CUDA handle, freed once by :meth:`close` (or at garbage collection)."""

    _closed = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._release()
            except Exception as exc:  # freeing during interpreter shutdown must never raise
                log.debug("releasing %s failed: %s", type(self).__name__, exc)

    def _release(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class Stream(_Resource):
    """A non-blocking CUDA stream (never the legacy default stream, which cannot be graph-captured)."""

    def __init__(self) -> None:
        rt = cudart()
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self._closed = False

    @property
    def ptr(self) -> int:
        """The raw ``cudaStream_t`` as an int (what TensorRT's ``execute_async_v3`` and CuPy take)."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def _release(self) -> None:
        cudart().cudaStreamDestroy(self.handle)


class Event(_Resource):
    """A CUDA event with timing enabled; ``Event.elapsed_ms(a, b)`` is the GPU time between two records."""

    def __init__(self) -> None:
        self.handle = check(cudart().cudaEventCreate(), "cudaEventCreate")
        self._closed = False

    def record(self, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    @staticmethod
    def elapsed_ms(start: Event, end: Event) -> float:
        """Milliseconds of GPU time from ``start`` to ``end`` (waits for ``end`` to complete)."""
        end.synchronize()
        return float(check(cudart().cudaEventElapsedTime(start.handle, end.handle), "cudaEventElapsedTime"))

    def _release(self) -> None:
        cudart().cudaEventDestroy(self.handle)


class DeviceView:
    """``nbytes`` of device memory at ``ptr`` owned by someone else (an ONNX Runtime ``OrtValue``, a
    TensorRT binding): copies in and out on a stream, nothing freed. Polygraphy's ``DeviceView``.

    Host-to-device copies from pageable (plain numpy) memory are staged by CUDA before
    ``cudaMemcpyAsync`` returns, so the caller may reuse the array at once; pinned memory
    (:class:`PinnedHostBuffer`) makes the copy truly asynchronous.
    """

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)

    def upload(self, host: np.ndarray | PinnedHostBuffer, stream: Stream) -> None:
        """Copy host memory to this buffer asynchronously on ``stream``."""
        src, n = _host_ptr(host)
        _fits(n, self.nbytes, "upload")
        rt = cudart()
        check(rt.cudaMemcpyAsync(self.ptr, src, n, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
              "cudaMemcpyAsync(HostToDevice)")

    def download(self, host: np.ndarray | PinnedHostBuffer, stream: Stream) -> None:
        """Copy this buffer into host memory asynchronously; synchronize ``stream`` before reading it."""
        dst, n = _host_ptr(host)
        _fits(n, self.nbytes, "download")
        rt = cudart()
        check(rt.cudaMemcpyAsync(dst, self.ptr, n, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
              "cudaMemcpyAsync(DeviceToHost)")

    def copy_from_device(self, src_ptr: int, nbytes: int, stream: Stream) -> None:
        """Copy ``nbytes`` from device address ``src_ptr`` into this buffer on ``stream``."""
        _fits(nbytes, self.nbytes, "device copy")
        rt = cudart()
        check(rt.cudaMemcpyAsync(self.ptr, int(src_ptr), int(nbytes), rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                 stream.handle), "cudaMemcpyAsync(DeviceToDevice)")


class DeviceBuffer(DeviceView, _Resource):
    """``nbytes`` of device memory from ``cudaMalloc``, owned and freed here; ``ptr`` is the address to bind."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(0, nbytes)
        self.ptr = int(check(cudart().cudaMalloc(max(1, self.nbytes)), f"cudaMalloc({self.nbytes})"))
        self._closed = False

    def _release(self) -> None:
        cudart().cudaFree(self.ptr)


class PinnedHostBuffer(_Resource):
    """Page-locked host memory (``cudaHostAlloc``) seen from numpy as ``array``.

    Parameters
    ----------
    mapped
        Allocate with ``cudaHostAllocMapped`` and expose ``device_ptr``: the GPU reads and writes this
        host memory directly (zero-copy). On a Jetson, where CPU and GPU share DRAM, that removes the
        copies altogether; on a discrete GPU every access crosses PCIe, so leave it off there.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, mapped: bool = False) -> None:
        rt = cudart()
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        flags = rt.cudaHostAllocMapped if mapped else rt.cudaHostAllocDefault
        self.ptr = int(check(rt.cudaHostAlloc(max(1, self.nbytes), flags), f"cudaHostAlloc({self.nbytes})"))
        self._closed = False
        self.mapped = mapped
        self.device_ptr = int(check(rt.cudaHostGetDevicePointer(self.ptr, 0), "cudaHostGetDevicePointer")) \
            if mapped else None
        raw = (ctypes.c_uint8 * max(1, self.nbytes)).from_address(self.ptr)
        self.array = np.frombuffer(raw, np.uint8, count=self.nbytes).view(self.dtype).reshape(self.shape)

    def _release(self) -> None:
        self.array = None  # no numpy view may outlive the memory
        cudart().cudaFreeHost(self.ptr)


def _host_ptr(host: np.ndarray | PinnedHostBuffer) -> tuple[int, int]:
    if isinstance(host, PinnedHostBuffer):
        return host.ptr, host.nbytes
    if not host.flags.c_contiguous:
        raise ValueError("host array for a CUDA copy must be C-contiguous")
    return int(host.ctypes.data), int(host.nbytes)


def _fits(n: int, capacity: int, what: str) -> None:
    if n > capacity:
        raise ValueError(f"{what} of {n} bytes does not fit a device buffer of {capacity} bytes")


class CudaGraph(_Resource):
    """Record the work one callable enqueues on a stream into a CUDA graph, then replay it with one launch.

    A replay skips every per-kernel launch cost on the CPU (for a small U-Net: dozens of kernels, a
    large share of a sub-millisecond inference). The recorded work reads and writes the same device
    addresses every time, so callers keep their buffers fixed. Use :meth:`try_capture`: when capture
    is not possible (an engine that allocates or synchronizes during enqueue, old drivers) it logs
    why and returns ``None``, and the caller keeps calling its enqueue directly.
    """

    def __init__(self, graph: Any, graph_exec: Any) -> None:
        self._graph = graph
        self._exec = graph_exec
        self._closed = False

    @classmethod
    def capture(cls, stream: Stream, enqueue: Callable[[], Any]) -> CudaGraph:
        """Capture ``enqueue()``'s work on ``stream`` and instantiate it; raises :class:`CudaError`."""
        rt = cudart()
        check(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")
        graph = None
        try:
            ok = enqueue()
        finally:
            # End the capture even when enqueue raised: a stream left in capture mode breaks every later call.
            graph = check(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        if ok is False:
            rt.cudaGraphDestroy(graph)
            raise CudaError("enqueue during capture", "cudaErrorStreamCaptureUnsupported",
                            "the enqueue function reported failure while capturing")
        try:
            graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except CudaError:
            rt.cudaGraphDestroy(graph)
            raise
        return cls(graph, graph_exec)

    @classmethod
    def try_capture(cls, stream: Stream, enqueue: Callable[[], Any], what: str = "inference") -> CudaGraph | None:
        """:meth:`capture`, or ``None`` with a warning when this work cannot be captured."""
        try:
            graph = cls.capture(stream, enqueue)
        except Exception as exc:
            log.warning("CUDA graph capture of %s failed (%s); running without a graph (a little more CPU per "
                        "frame, same results)", what, str(exc).splitlines()[0])
            return None
        log.info("CUDA graph captured for %s", what)
        return graph

    def launch(self, stream: Stream) -> None:
        check(cudart().cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def _release(self) -> None:
        rt = cudart()
        rt.cudaGraphExecDestroy(self._exec)
        rt.cudaGraphDestroy(self._graph)


# Every cuda.bindings.runtime function this module calls: the contract test checks each exists with
# these parameter names in the installed bindings (CUDA 12 and 13 bindings agree on all of them).
USED_RUNTIME_API: dict[str, tuple[str, ...]] = {
    "cudaGetErrorName": ("error",),
    "cudaGetErrorString": ("error",),
    "cudaGetDeviceCount": (),
    "cudaSetDevice": ("device",),
    "cudaGetDeviceProperties": ("device",),
    "cudaDriverGetVersion": (),
    "cudaRuntimeGetVersion": (),
    "cudaStreamCreateWithFlags": ("flags",),
    "cudaStreamSynchronize": ("stream",),
    "cudaStreamDestroy": ("stream",),
    "cudaEventCreate": (),
    "cudaEventRecord": ("event", "stream"),
    "cudaEventSynchronize": ("event",),
    "cudaEventElapsedTime": ("start", "end"),
    "cudaEventDestroy": ("event",),
    "cudaMalloc": ("size",),
    "cudaFree": ("devPtr",),
    "cudaHostAlloc": ("size", "flags"),
    "cudaHostGetDevicePointer": ("pHost", "flags"),
    "cudaFreeHost": ("ptr",),
    "cudaMemcpyAsync": ("dst", "src", "count", "kind", "stream"),
    "cudaStreamBeginCapture": ("stream", "mode"),
    "cudaStreamEndCapture": ("stream",),
    "cudaGraphInstantiate": ("graph", "flags"),
    "cudaGraphLaunch": ("graphExec", "stream"),
    "cudaGraphExecDestroy": ("graphExec",),
    "cudaGraphDestroy": ("graph",),
}
