"""The ONNX Runtime CUDA path: provider options, backend selection, and the refusal on a CPU-only build.

The GPU run itself happens in benchmarks/gpu_device_check.py on the lent GPU machine.
"""

from __future__ import annotations

import pytest

from medstream.runtime.backends import BACKENDS, choose_backend, load_backend
from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from medstream.runtime.backends.ort_cuda import (
    OrtCudaBackend,
    cuda_ep_available,
    cuda_provider_options,
    tensorrt_provider_options,
)
from medstream.runtime.errors import ModelLoadError
from medstream.runtime.models.loader import load_model
from tests.fixtures.gpu_models import conv_contract, tiny_conv
from tests.fixtures.models import save


def test_cuda_provider_options_are_the_measured_best():
    opts = cuda_provider_options(0, cuda_graph=True, user_stream=12345)
    assert opts == {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE", "prefer_nhwc": "1",
                    "enable_cuda_graph": "1", "has_user_compute_stream": "1", "user_compute_stream": "12345"}
    assert "user_compute_stream" not in cuda_provider_options(1, cuda_graph=False)
    with pytest.raises(ValueError):
        cuda_provider_options(conv_algo_search="FAST")


def test_tensorrt_ep_options(tmp_path):
    opts = tensorrt_provider_options(0, "fp16", quantized=False, cache_dir=tmp_path)
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_fp16_enable"] and not opts["trt_int8_enable"]
    q = tensorrt_provider_options(0, "int8", quantized=True, cache_dir=tmp_path, dla_core=1)
    assert q["trt_int8_enable"] and q["trt_dla_enable"] and q["trt_dla_core"] == 1


def test_backend_names():
    assert BACKENDS[:3] == ("auto", "onnxruntime", "tensorrt") and "onnxruntime-cuda" in BACKENDS
    assert choose_backend("onnxruntime-cuda") == ("onnxruntime-cuda", "asked for explicitly")


def test_onnxruntime_without_cuda_ep_stays_on_the_cpu_backend(tmp_path):
    if cuda_ep_available()[0]:
        pytest.skip("onnxruntime-gpu with a CUDA device is present here")
    path = save(tiny_conv(32), tmp_path / "m.onnx")
    backend = load_backend(load_model(path, contract=conv_contract(32).model_dump(), backend="onnxruntime"))
    assert type(backend) is OnnxRuntimeBackend
    with backend:
        assert backend.device == "cpu"


def test_cuda_backend_refuses_clearly_on_a_cpu_only_build(tmp_path):
    ok, why = cuda_ep_available()
    if ok:
        pytest.skip("onnxruntime-gpu with a CUDA device is present here")
    path = save(tiny_conv(32), tmp_path / "m.onnx")
    backend = load_backend(load_model(path, contract=conv_contract(32).model_dump(), backend="onnxruntime-cuda"))
    assert isinstance(backend, OrtCudaBackend)
    with pytest.raises(ModelLoadError) as err:
        backend.activate()
    assert why in str(err.value) and "pip install onnxruntime-gpu" in str(err.value)
