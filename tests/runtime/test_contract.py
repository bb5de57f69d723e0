from __future__ import annotations

import onnx
import pytest

from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from medstream.runtime.contract import (
    CONTRACT_KEY,
    ModelContract,
    contract_from_metadata,
    read_contract,
    resolve_contract,
    write_contract,
)
from medstream.runtime.errors import ContractError
from tests.fixtures.models import tiny_contract


def test_contract_round_trips_through_the_onnx_file(tiny_model):
    c = read_contract(tiny_model)
    assert c == tiny_contract()
    assert c.class_names == ("background", "mid", "bright") and c.primary_output.name == "logits"


def test_write_replaces_an_older_contract(tiny_model):
    proto = onnx.load(str(tiny_model))
    newer = tiny_contract(model_id="renamed")
    write_contract(proto, newer)
    keys = [p.key for p in proto.metadata_props]
    assert keys.count(CONTRACT_KEY) == 1
    assert read_contract(proto).model_id == "renamed"


def test_model_without_contract_lists_every_missing_fact(tiny_model_no_contract):
    with pytest.raises(ContractError) as exc:
        resolve_contract(read_contract(tiny_model_no_contract), {"input": {"name": "input"}}, str(tiny_model_no_contract))
    msg = str(exc.value)
    for missing in ("model_id", "input.height", "input.width", "outputs", "classes"):
        assert missing in msg
    assert "input.name" not in msg.split("does not give:")[1].split("\n")[0]
    assert str(tiny_model_no_contract) in msg


def test_model_without_contract_runs_when_config_gives_the_facts(tiny_model_no_contract):
    overrides = tiny_contract().model_dump()
    contract = resolve_contract(None, overrides, str(tiny_model_no_contract))
    backend = OnnxRuntimeBackend(str(tiny_model_no_contract), contract, intra_op_threads=1).activate()
    backend.warm_up(1)
    assert backend.last_compute_ms > 0


def test_config_overrides_win_field_by_field(tiny_model):
    c = resolve_contract(read_contract(tiny_model), {"input": {"normalization": {"scale": 0.5}}}, "m")
    assert c.input.normalization.scale == 0.5 and c.input.height == 64


@pytest.mark.parametrize("bad, needle", [
    ({"input": {"channels": 3}}, "does not fit color_order"),
    ({"classes": []}, "classes"),
    ({"input": {"normalization": {"std": [0.0]}}}, "std"),
    ({"input": {"layout": "CHWN"}}, "input.layout"),
])
def test_invalid_contract_values_are_named(tiny_model, bad, needle):
    with pytest.raises(ContractError) as exc:
        resolve_contract(read_contract(tiny_model), bad, "m.onnx")
    assert needle in str(exc.value)


def test_contract_from_a_newer_medstream_is_refused():
    data = tiny_contract().model_dump_json().replace('"contract_version":1', '"contract_version":9')
    with pytest.raises(ContractError, match="upgrade medstream"):
        contract_from_metadata({CONTRACT_KEY: data})


def test_contract_mismatching_the_model_is_refused_at_load(tiny_model):
    wrong = ModelContract.model_validate({**tiny_contract().model_dump(), "input": {"name": "input", "height": 32, "width": 64}})
    with pytest.raises(ContractError, match="H=64, the contract says 32"):
        OnnxRuntimeBackend(str(tiny_model), wrong).activate()
    wrong_name = ModelContract.model_validate({**tiny_contract().model_dump(), "input": {"name": "x", "height": 64, "width": 64}})
    with pytest.raises(ContractError, match="no input named 'x'"):
        OnnxRuntimeBackend(str(tiny_model), wrong_name).activate()


def test_reused_output_buffers_give_the_same_results(tiny_model):
    import numpy as np

    c = read_contract(tiny_model)
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    fresh = OnnxRuntimeBackend(str(tiny_model), c).activate().infer({"input": x})["logits"]
    reusing = OnnxRuntimeBackend(str(tiny_model), c, reuse_output_buffers=True).activate()
    first = reusing.infer({"input": x})["logits"]
    second = reusing.infer({"input": x * 0})["logits"]
    assert first is second  # one buffer, written in place
    np.testing.assert_allclose(reusing.infer({"input": x})["logits"], fresh, rtol=1e-6)


def test_cpu_backend_takes_the_u8s8_twin_of_an_int8_model(tiny_model, tmp_path):
    import shutil

    from medstream.runtime.backends import load_backend
    from medstream.runtime.models.loader import load_model

    # the model loader picks the variant (runtime/models/loader.py), the runner opens exactly that file
    int8 = tmp_path / "m.int8.onnx"
    shutil.copy(tiny_model, int8)
    assert load_backend(load_model(int8, backend="onnxruntime")).activate().model_path == str(int8)  # no twin
    shutil.copy(tiny_model, tmp_path / "m.int8-cpu.onnx")
    runner = load_backend(load_model(int8, backend="onnxruntime")).activate()
    assert isinstance(runner, OnnxRuntimeBackend) and runner.model_path == str(tmp_path / "m.int8-cpu.onnx")
