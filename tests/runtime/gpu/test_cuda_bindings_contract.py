"""Contract test for the cuda.bindings (cuda-python) runtime API used by medstream.runtime.gpu.cuda.

Runs against the real installed bindings. Without a driver every CUDA call returns an error code
(they do not raise), which is exactly how the error translation is tested here.
"""

from __future__ import annotations

import re

import pytest

rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed (pip install cuda-python)")

from medstream.runtime.gpu import cuda  # noqa: E402


@pytest.mark.parametrize("name,params", sorted(cuda.USED_RUNTIME_API.items()))
def test_function_exists_with_expected_parameters(name, params):
    fn = getattr(rt, name, None)
    assert fn is not None, f"cuda.bindings.runtime.{name} is missing"
    first = (fn.__doc__ or "").strip().splitlines()[0]
    m = re.match(rf"{name}\((.*)\)", first)
    assert m, f"unexpected signature line for {name}: {first!r}"
    found = [p.split(":")[0].strip().split()[-1] for p in m.group(1).split(",") if p.strip()]
    assert found == list(params), f"{name}: bindings have {found}, medstream calls it with {list(params)}"


def test_flags_and_enums_used_exist():
    assert int(rt.cudaStreamNonBlocking) == 1
    assert int(rt.cudaHostAllocMapped) == 2 and int(rt.cudaHostAllocDefault) == 0
    assert rt.cudaMemcpyKind.cudaMemcpyHostToDevice and rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    assert rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal is not None


def test_check_translates_errors_with_a_fix():
    assert cuda.check((rt.cudaError_t.cudaSuccess, 42)) == 42
    assert cuda.check((rt.cudaError_t.cudaSuccess,)) is None
    with pytest.raises(cuda.CudaError) as err:
        cuda.check((rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(1024)")
    assert err.value.name == "cudaErrorMemoryAllocation"
    assert "cudaMalloc(1024) failed" in str(err.value) and "out of memory" in str(err.value)


def test_without_a_gpu_device_count_is_zero_and_streams_refuse_clearly():
    if cuda.device_count() > 0:
        pytest.skip("a CUDA device is present here")
    with pytest.raises(cuda.CudaError) as err:
        cuda.Stream()
    assert err.value.name in ("cudaErrorInsufficientDriver", "cudaErrorNoDevice")
    assert "--backend onnxruntime" in str(err.value)
