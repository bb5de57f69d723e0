"""Engine cache keys, manifest validation and the refusal messages (real files, no GPU needed).

The engine bytes here are arbitrary: validation never hands a file to TensorRT before the manifest,
size, SHA-256 and key all match, so what is tested is exactly what protects the runtime.
"""

from __future__ import annotations

import json
import stat
from dataclasses import replace

import pytest

from medstream.runtime.engine.cache import (
    DeviceFacts,
    EngineCache,
    EngineKey,
    check_engine,
    make_key,
    sha256_file,
)
from medstream.runtime.engine.resolve import obtain_engine
from medstream.runtime.errors import MedstreamError, ModelLoadError
from tests.fixtures.gpu_models import conv_contract, tiny_conv
from tests.fixtures.models import save

H100 = DeviceFacts("10.13.0", "NVIDIA H100 80GB HBM3", "9.0")
ORIN = DeviceFacts("10.3.0", "Orin (nvgpu)", "8.7")
ENGINE = b"\x7fENGINE" + bytes(range(256)) * 8


@pytest.fixture()
def onnx_path(tmp_path):
    return save(tiny_conv(32), tmp_path / "tiny_conv.onnx")


@pytest.fixture()
def cache(tmp_path):
    return EngineCache(tmp_path / "engines")


def test_key_uses_the_onnx_sha256_and_is_stable(onnx_path):
    key = make_key(onnx_path, H100, "fp16")
    assert key.onnx_sha256 == sha256_file(onnx_path)
    assert make_key(onnx_path, H100, "fp16").digest() == key.digest()


@pytest.mark.parametrize("field,value", [("tensorrt_version", "11.4.0"), ("gpu_name", "NVIDIA L4"),
                                         ("compute_capability", "8.9"), ("precision", "int8"), ("dla_core", 0),
                                         ("onnx_sha256", "0" * 64)])
def test_every_key_field_changes_the_engine_file(onnx_path, cache, field, value):
    key = make_key(onnx_path, H100, "fp16")
    other = replace(key, **{field: value})
    assert other.digest() != key.digest()
    assert cache.paths(other)[0] != cache.paths(key)[0]


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        EngineKey("a" * 64, "10.0", "gpu", "8.0", "bf17")


def test_store_then_check_and_load(onnx_path, cache):
    key = make_key(onnx_path, H100, "fp16")
    path = cache.store(key, ENGINE, conv_contract(32), {"version_compatible": False})
    verdict = cache.check(key)
    assert verdict.ok, verdict.reason
    data, manifest = cache.load(key)
    assert data == ENGINE and path.suffix == ".engine"
    assert manifest["key"]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert manifest["engine"]["size"] == len(ENGINE)
    assert manifest["contract"]["model_id"] == "tiny-conv"
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == manifest


def test_cached_engine_and_manifest_have_a_normal_files_mode(onnx_path, cache, tmp_path):
    """Engines are built by an engineer and loaded by the service account: 0644 like any file (umask 022),
    not the 0600 of a bare mkstemp (the old cache._atomic_write)."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    normal = stat.S_IMODE(plain.stat().st_mode)
    path = cache.store(make_key(onnx_path, H100, "fp16"), ENGINE, conv_contract(32))
    assert normal != 0o600
    assert stat.S_IMODE(path.stat().st_mode) == normal
    assert stat.S_IMODE(path.with_suffix(".json").stat().st_mode) == normal
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_corrupt_engine_bytes_are_refused(onnx_path, cache):
    key = make_key(onnx_path, H100)
    path = cache.store(key, ENGINE, conv_contract(32))
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    verdict = cache.check(key)
    assert not verdict.ok and "corrupt" in verdict.reason and "SHA-256" in verdict.reason
    with pytest.raises(ModelLoadError, match="corrupt"):
        cache.load(key)


def test_truncated_engine_is_refused(onnx_path, cache):
    key = make_key(onnx_path, H100)
    path = cache.store(key, ENGINE, conv_contract(32))
    path.write_bytes(ENGINE[:100])
    verdict = cache.check(key)
    assert not verdict.ok and f"100 bytes, its manifest says {len(ENGINE)}" in verdict.reason


def test_engine_for_another_gpu_is_refused_naming_both(onnx_path, cache):
    built = make_key(onnx_path, ORIN)
    path = cache.store(built, ENGINE, conv_contract(32))
    here = replace(built, gpu_name=H100.gpu_name, compute_capability=H100.compute_capability)
    verdict = check_engine(path, path.with_suffix(".json"), here)
    assert not verdict.ok
    assert "GPU is 'Orin (nvgpu)' in the engine but 'NVIDIA H100 80GB HBM3' here" in verdict.reason
    assert "compute capability" in verdict.reason


def test_engine_for_another_tensorrt_version_is_refused(onnx_path, cache):
    built = make_key(onnx_path, H100)
    path = cache.store(built, ENGINE, conv_contract(32))
    verdict = check_engine(path, path.with_suffix(".json"), replace(built, tensorrt_version="11.4.0"))
    assert not verdict.ok and "TensorRT version is '10.13.0' in the engine but '11.4.0' here" in verdict.reason


def test_changed_onnx_model_is_refused(onnx_path, cache, tmp_path):
    built = make_key(onnx_path, H100)
    path = cache.store(built, ENGINE, conv_contract(32))
    changed = save(tiny_conv(32, seed=1), tmp_path / "retrained.onnx")
    verdict = check_engine(path, path.with_suffix(".json"), make_key(changed, H100))
    assert not verdict.ok and "ONNX model" in verdict.reason and "changed since the engine was built" in verdict.reason
    # ...and the cache simply has no engine for the new model's key
    assert "no cached engine" in cache.check(make_key(changed, H100)).reason


def test_engine_without_manifest_is_refused(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(ENGINE)
    verdict = check_engine(engine, tmp_path / "model.json")
    assert not verdict.ok and "has no manifest" in verdict.reason


def test_unreadable_manifest_is_refused(onnx_path, cache):
    key = make_key(onnx_path, H100)
    path = cache.store(key, ENGINE, conv_contract(32))
    path.with_suffix(".json").write_text("{not json")
    verdict = cache.check(key)
    assert not verdict.ok and "unreadable" in verdict.reason


def test_no_build_refuses_with_the_reason_and_the_command(onnx_path, cache):
    key = make_key(onnx_path, H100, "fp16")
    path = cache.store(key, ENGINE, conv_contract(32))
    path.write_bytes(ENGINE[:-1] + b"X")  # same size, different bytes
    with pytest.raises(ModelLoadError) as err:
        obtain_engine(onnx_path, conv_contract(32), H100, cache=cache, precision="fp16", allow_build=False)
    text = str(err.value)
    assert "corrupt" in text and f"medstream build --model {onnx_path} --precision fp16" in text


def test_valid_engine_is_returned_without_building(onnx_path, cache):
    key = make_key(onnx_path, H100, "fp32")
    cache.store(key, ENGINE, conv_contract(32))
    data, manifest, path = obtain_engine(onnx_path, conv_contract(32), H100, cache=cache, allow_build=False)
    assert data == ENGINE and path == cache.paths(key)[0]


def test_lean_runtime_needs_a_version_compatible_engine(onnx_path, cache):
    key = make_key(onnx_path, H100)
    cache.store(key, ENGINE, conv_contract(32), {"version_compatible": False})
    with pytest.raises(ModelLoadError, match="VERSION_COMPATIBLE") as err:
        obtain_engine(onnx_path, conv_contract(32), H100, cache=cache, allow_build=False,
                      require_version_compatible=True)
    assert "--version-compatible" in str(err.value)
    cache.store(key, ENGINE, conv_contract(32), {"version_compatible": True})
    assert obtain_engine(onnx_path, conv_contract(32), H100, cache=cache, allow_build=False,
                         require_version_compatible=True)[0] == ENGINE


def test_rebuild_without_tensorrt_says_what_to_install(onnx_path, cache):
    pytest.importorskip("medstream.runtime.engine.builder")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("the full tensorrt package is installed here; this checks the message when it is not")
    except ImportError:
        pass
    with pytest.raises(MedstreamError) as err:
        obtain_engine(onnx_path, conv_contract(32), H100, cache=cache, allow_build=True)
    text = str(err.value)
    assert "pip install 'medstream[tensorrt]'" in text and "JetPack" in text
