"""``medstream triton-repo``: the repository a real Triton server loads and serves, and its config for GPU servers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medstream.runtime.backends.triton_backend import CONTRACT_PARAMETER, SHA256_PARAMETER
from medstream.runtime.errors import ConfigError
from medstream.runtime.files import sha256_file
from medstream.runtime.models.loader import load_model

from .conftest import triton_repo


def test_the_repository_loads_and_serves_the_model_it_was_written_from(triton, repository):
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    local = load_model("ultrasound", backend="onnxruntime")
    client = grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))
    assert client.is_model_ready("ultrasound_unet")
    meta = client.get_model_metadata("ultrasound_unet", as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("image", "FP32", ["-1", "1", "256", "256"])]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("logits", "FP32")]
    config = client.get_model_config("ultrasound_unet", as_json=True)["config"]
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert json.loads(params[CONTRACT_PARAMETER]) == json.loads(local.contract.model_dump_json())
    assert params[SHA256_PARAMETER] == sha256_file(local.path)
    assert int(config["max_batch_size"]) == 4 and "dynamic_batching" in config
    # one request straight through tritonclient, checked against ONNX Runtime here (independent of medstream's backend)
    x = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
    inp = grpcclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    served = client.infer("ultrasound_unet", [inp]).as_numpy("logits")
    expected = ort.InferenceSession(str(local.path), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
    client.close()


def test_gpu_server_configs_follow_the_models_batch_axis(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from medstream.export.triton_repo import write_triton_repository

    repo = write_triton_repository("ultrasound", tmp_path, backend="onnxruntime", instances=2)
    config = text_format.Parse(repo.config_path.read_text(), mc.ModelConfig())
    assert config.backend == "onnxruntime" and config.default_model_filename == "model.onnx"
    # the bundled U-Net has a static batch of 1: no server-side batching, full dims
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 1, 256, 256] and list(config.output[0].dims) == [1, 3, 256, 256]
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "ultrasound_unet" / "1" / "model.onnx").read_bytes() == load_model(
        "ultrasound", backend="onnxruntime").path.read_bytes()
    with pytest.raises(ConfigError, match="static batch axis"):
        write_triton_repository("ultrasound", tmp_path / "b", backend="onnxruntime", max_batch=4)
    with pytest.raises(ConfigError, match="no --engine"):
        write_triton_repository("ultrasound", tmp_path / "c", backend="tensorrt")
    with pytest.raises(ConfigError, match="already exists"):
        write_triton_repository("ultrasound", tmp_path, backend="onnxruntime")


def test_the_command_line_refuses_what_it_cannot_write(tmp_path):
    done = triton_repo("--model", "ultrasound", "--out", str(tmp_path), "--backend", "tensorrt")
    assert done.returncode == 2
    assert "--engine" in done.stderr
