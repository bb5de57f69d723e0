"""One CUDA layer for both GPU backends: every CUDA call goes through medstream.runtime.gpu.cuda, and the
calls the ONNX Runtime CUDA backend makes per frame have the real ``cuda.bindings`` signatures.

No GPU here, so the last tests replace the CUDA runtime module with a recorder that checks each call's
arguments against the installed bindings' own signature line (a stand-in for the GPU, said so). What
has run on hardware: benchmarks/gpu_device_check.py on a lent GPU (see docs/GPU.md).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest

rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed (pip install cuda-python)")

from medstream.runtime.gpu import cuda  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
GPU_BACKENDS = ("runtime/backends/ort_cuda.py", "runtime/backends/tensorrt_backend.py")


def _params(name: str) -> list[str]:
    first = (getattr(rt, name).__doc__ or "").strip().splitlines()[0]
    m = re.match(rf"{name}\((.*)\)", first)
    assert m, f"unexpected signature line for {name}: {first!r}"
    return [p.split(":")[0].strip().split()[-1] for p in m.group(1).split(",") if p.strip()]


def test_every_runtime_call_in_the_cuda_layer_is_in_its_contract_list():
    source = (REPO / "runtime/gpu/cuda.py").read_text()
    called = set(re.findall(r"\.(cuda[A-Z]\w+)\(", source))
    assert called, "the scan found no CUDA calls"
    assert called <= set(cuda.USED_RUNTIME_API), f"not in USED_RUNTIME_API: {sorted(called - set(cuda.USED_RUNTIME_API))}"


@pytest.mark.parametrize("path", GPU_BACKENDS)
def test_gpu_backends_reach_cuda_only_through_the_cuda_layer(path):
    code = "\n".join(line.split("#", 1)[0] for line in (REPO / path).read_text().splitlines())
    for pattern in (r"\bimport cupy\b", r"\bcp\.cuda\b", r"(import|from) cuda\.bindings", r"\bcudart\(\)", r"\brt\.cuda[A-Z]"):
        assert not re.search(pattern, code), f"{path} calls CUDA directly ({pattern}); use medstream.runtime.gpu.cuda"
    assert "from medstream.runtime.gpu import cuda" in code or "from medstream.runtime.gpu.cuda import" in code


class RecordingRuntime:
    """``cuda.bindings.runtime`` without a GPU: each call is checked against the real signature, recorded,
    and answered with success (and a fresh handle or value where the real call returns one)."""

    RETURNS = {"cudaStreamCreateWithFlags", "cudaEventCreate", "cudaMalloc", "cudaHostAlloc",
               "cudaEventElapsedTime", "cudaGetDeviceCount"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self._handles = itertools.count(0x1000, 0x100)

    def __getattr__(self, name: str):
        real = getattr(rt, name)
        if not name.startswith("cuda") or not callable(real) or isinstance(real, type):
            return real  # enums and flag constants: the real ones

        def call(*args):
            params = _params(name)
            assert len(args) == len(params), f"{name}{tuple(args)} but the bindings take {params}"
            self.calls.append((name, args))
            if name == "cudaEventElapsedTime":
                return rt.cudaError_t.cudaSuccess, 0.25
            if name in self.RETURNS:
                return rt.cudaError_t.cudaSuccess, next(self._handles)
            return (rt.cudaError_t.cudaSuccess,)

        return call


@pytest.fixture()
def recorder(monkeypatch):
    fake = RecordingRuntime()
    monkeypatch.setattr(cuda, "cudart", lambda: fake)
    return fake


def _backend(tmp_path):
    import onnxruntime as ort

    from medstream.runtime.backends.ort_cuda import OrtCudaBackend
    from tests.fixtures.gpu_models import conv_contract, tiny_conv
    from tests.fixtures.models import save

    contract = conv_contract(32)
    backend = OrtCudaBackend(str(save(tiny_conv(32), tmp_path / "m.onnx")), contract)
    name = contract.input.name
    shape = backend.input_shape()
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32)  # host memory stands in for the GPU
    backend._values, backend._shapes = {name: value}, {name: (tuple(shape), np.dtype(np.float32))}
    return backend, name, value


def test_ort_cuda_input_copy_stream_and_timing_calls_match_the_bindings(recorder, tmp_path):
    backend, name, value = _backend(tmp_path)
    cuda.set_device(0)
    backend.stream = cuda.Stream()
    backend._start, backend._end = cuda.Event(), cuda.Event()
    x = np.ones(backend._shapes[name][0], np.float32)
    backend._put_input(name, x)
    name_, (dst, src, count, kind, stream) = recorder.calls[-1]
    assert name_ == "cudaMemcpyAsync" and kind == rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    assert dst == value.data_ptr() and count == x.nbytes and stream == backend.stream.handle

    class DeviceArray:  # a CuPy-like array at another device address (what a foreign GPU stage hands over)
        shape, dtype = x.shape, x.dtype
        __cuda_array_interface__ = {"data": (0xBEEF00, False), "shape": x.shape, "typestr": "<f4", "strides": None,
                                    "version": 3}

    backend._put_input(name, DeviceArray())
    name_, (dst, src, count, kind, stream) = recorder.calls[-1]
    assert kind == rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice and (dst, src, count) == (value.data_ptr(), 0xBEEF00,
                                                                                        x.nbytes)
    backend._start.record(backend.stream)
    backend._end.record(backend.stream)
    backend._pending = (backend._start, backend._end)
    assert backend.last_compute_ms == 0.25
    backend._deactivate()
    names = [c[0] for c in recorder.calls]
    assert names[:4] == ["cudaSetDevice", "cudaStreamCreateWithFlags", "cudaEventCreate", "cudaEventCreate"]
    assert {"cudaEventSynchronize", "cudaEventElapsedTime", "cudaStreamSynchronize", "cudaEventDestroy",
            "cudaStreamDestroy"} <= set(names)
    assert backend.stream is None


def test_ort_cuda_refuses_a_device_array_it_cannot_copy_as_is(recorder, tmp_path):
    from medstream.runtime.errors import BackendError

    backend, name, _ = _backend(tmp_path)
    backend.stream = cuda.Stream()

    class Strided:
        shape, dtype = backend._shapes[name][0], np.dtype(np.float16)
        __cuda_array_interface__ = {"data": (0xBEEF00, False), "strides": None}

    with pytest.raises(BackendError, match="device array"):
        backend._put_input(name, Strided())
    assert not [c for c in recorder.calls if c[0] == "cudaMemcpyAsync"]


def test_without_a_device_a_copy_fails_with_a_cuda_error_not_a_crash():
    if cuda.device_count() > 0:
        pytest.skip("a CUDA device is present here")

    class NoStream:
        handle = 0

    with pytest.raises(cuda.CudaError) as err:
        cuda.DeviceView(0x1000, 16).upload(np.zeros(4, np.float32), NoStream())
    assert err.value.call == "cudaMemcpyAsync(HostToDevice)"
