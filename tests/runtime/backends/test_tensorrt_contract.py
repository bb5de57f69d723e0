"""Contract test: every TensorRT API the backend and builder call exists, with the expected parameters,
in the REAL installed bindings.

``tensorrt_lean`` (installed in CI) covers the runtime side; the full ``tensorrt`` package, where
present, is checked for both runtime and builder side. pybind11 puts each function's signature on the
first line(s) of ``__doc__`` (``name(self: ..., param: type, ...) -> ret``); overloads are listed as
``1. name(...)``. A parameter list is accepted when any overload has all the expected names.
"""

from __future__ import annotations

import contextlib
import importlib
import re

import pytest

from medstream.runtime.backends import choose_backend
from medstream.runtime.backends.tensorrt_backend import USED_RUNTIME_API, TensorRTBackend, available
from medstream.runtime.engine.builder import USED_BUILDER_API
from medstream.runtime.errors import ModelLoadError
from medstream.runtime.gpu.cuda import device_count
from tests.fixtures.gpu_models import conv_contract


def _param_lists(doc: str, name: str) -> list[list[str]]:
    lists = []
    for m in re.finditer(rf"{re.escape(name)}\((.*?)\)\s*->", doc or ""):
        params = []
        for part in re.split(r",\s*(?![^\[]*\])", m.group(1)):
            pname = part.split(":")[0].split("=")[0].strip().lstrip("*")
            if pname and pname not in ("self", "args", "kwargs"):
                params.append(pname)
        lists.append(params)
    return lists


def _check(trt, cls_name: str, member: str, params: tuple[str, ...]) -> None:
    owner = getattr(trt, cls_name) if cls_name else trt
    assert hasattr(owner, member), f"{trt.__name__}.{cls_name}.{member} is missing"
    if not params:
        return
    attr = getattr(owner, member)
    lists = _param_lists(attr.__doc__, member)
    assert lists, f"no signature found in {cls_name}.{member}.__doc__"
    assert any(all(p in found for p in params) for found in lists), (
        f"{cls_name}.{member}: expected parameters {params}, bindings have {lists}")


def _modules(names: tuple[str, ...]):
    found = []
    for name in names:
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(name))
    return found


LEAN = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean (the CI runtime bindings) not installed")


@pytest.mark.parametrize("cls_name,member,params", USED_RUNTIME_API, ids=[f"{c}.{m}" for c, m, _ in USED_RUNTIME_API])
def test_runtime_api_exists_in_installed_bindings(cls_name, member, params):
    mods = _modules(("tensorrt_lean", "tensorrt"))
    for trt in mods:
        _check(trt, cls_name, member, params)


def test_runtime_signatures_are_the_ones_the_backend_uses():
    """Spot-check return types too: the backend relies on bool returns and on int stream handles."""
    doc = LEAN.IExecutionContext.execute_async_v3.__doc__
    assert "stream_handle: typing.SupportsInt) -> bool" in doc or "stream_handle: int) -> bool" in doc
    assert "-> bool" in LEAN.IExecutionContext.set_tensor_address.__doc__
    assert "-> bool" in LEAN.IExecutionContext.set_input_shape.__doc__
    assert "ICudaEngine" in LEAN.Runtime.deserialize_cuda_engine.__doc__
    assert isinstance(LEAN.ICudaEngine.num_io_tensors, property)
    assert LEAN.nptype(LEAN.DataType.HALF).__name__ == "float16"


BUILDER_CASES = [(cls, member) for cls, members in USED_BUILDER_API.items() for member in members]


@pytest.mark.parametrize("cls_name,member", BUILDER_CASES, ids=[f"{c}.{m}" for c, m in BUILDER_CASES])
def test_builder_api_exists_in_full_tensorrt(cls_name, member):
    trt = pytest.importorskip(
        "tensorrt", reason="full 'tensorrt' (the builder) is not installable on this CI machine; builder-side "
                           "API is checked only where it imports")
    _check(trt, cls_name, member, ())


def test_progress_monitor_interface_in_lean_bindings():
    for member in USED_BUILDER_API["IProgressMonitor"]:
        _check(LEAN, "IProgressMonitor", member, ())
    assert _param_lists(LEAN.IProgressMonitor.phase_start.__doc__, "phase_start")[0] == [
        "phase_name", "parent_phase", "num_steps"]


def test_auto_does_not_pick_tensorrt_without_a_gpu():
    if device_count() > 0:
        pytest.skip("a CUDA device is present here")
    ok, why = available()
    assert not ok and LEAN.__version__ in why
    # Without a GPU the reason is the missing device, or (no [gpu] extra) the missing cuda-python.
    assert "no CUDA device" in why or "cuda-python is not" in why
    name, reason = choose_backend("auto")  # the CPU: OpenVINO where its extra is installed on x86-64, else ONNX Runtime
    assert name in ("onnxruntime", "openvino") and reason.startswith(why)


def test_prebuilt_engine_without_manifest_is_refused_before_touching_the_gpu(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    backend = TensorRTBackend(str(engine), conv_contract(32))
    with pytest.raises(ModelLoadError, match="has no manifest"):
        backend.activate()
    assert not backend.is_active
