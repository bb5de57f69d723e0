"""Fault matrix, model files: corrupt, truncated, contract missing or not matching the model.

Each is refused before READY (before the first frame is taken) with a message naming the file and the
fix; the command exits non-zero and leaves no socket bound.
"""

from __future__ import annotations

import pytest
import zmq

from medstream.runtime.errors import ContractError, ModelLoadError
from tests.fixtures.models import intensity_classifier, save
from tests.reliability._helpers import Outcomes, make_pipeline, medstream

SOURCE = "synthetic://ultrasound?fps=30&width=64&height=64"


def _bad_models(tmp_path, tiny_model, tiny_model_no_contract):
    good = tiny_model.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "corrupt.onnx").write_bytes(bytes((b * 7 + 3) % 256 for b in good))
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "other-device.engine").write_bytes(b"ftrt" + bytes(2000))  # an engine from elsewhere
    return {
        "truncated": (tmp_path / "truncated.onnx", ModelLoadError),
        "corrupt": (tmp_path / "corrupt.onnx", ModelLoadError),
        "empty": (tmp_path / "empty.onnx", ModelLoadError),
        "engine_from_elsewhere": (tmp_path / "other-device.engine", ModelLoadError),
        "no_contract": (tiny_model_no_contract, ContractError),
    }


def _port_is_free(endpoint: str) -> bool:
    s = zmq.Context.instance().socket(zmq.PUB)
    try:
        s.bind(endpoint)
        return True
    except zmq.ZMQError:
        return False
    finally:
        s.close(0)


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "empty", "engine_from_elsewhere", "no_contract"])
def test_bad_model_file_is_refused_before_any_socket_is_bound(kind, tmp_path, tiny_model, tiny_model_no_contract,
                                                               endpoint):
    path, error = _bad_models(tmp_path, tiny_model, tiny_model_no_contract)[kind]
    with pytest.raises(error) as exc:
        make_pipeline(path, endpoint, SOURCE)
    assert str(path) in exc.value.what and exc.value.fix
    if kind == "engine_from_elsewhere":
        assert "TensorRT engine" in exc.value.what and "medstream build" in exc.value.fix
    assert _port_is_free(endpoint), "nothing may stay bound after a refused start"


def test_contract_that_does_not_match_the_model_is_refused_before_ready(tiny_model, endpoint):
    # Refused even earlier than READY since issue 13: the model loader checks the contract against the
    # model's graph before the pipeline exists, so no socket is bound and no frame is taken.
    obs = Outcomes()
    with pytest.raises(ContractError) as exc:
        make_pipeline(tiny_model, endpoint, SOURCE, observers=[obs], contract={"input": {"height": 32}})
    assert str(tiny_model) in exc.value.what and "contract" in exc.value.fix
    assert not obs.ready.is_set() and _port_is_free(endpoint)


def test_cli_exits_non_zero_naming_the_file(tmp_path, endpoint):
    wrong = save(intensity_classifier(size=32), tmp_path / "wrong-size.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    procs = {
        "corrupt": medstream("run", "--model", str(bad), "--publish", endpoint, "--source", SOURCE),
        "mismatch": medstream("run", "--model", str(wrong), "--publish", endpoint, "--source", SOURCE,
                              "--config", str(_yaml(tmp_path, "contract:\n  input:\n    height: 64\n"))),
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (name, err[-2000:])
        assert ("corrupt.onnx" if name == "corrupt" else "wrong-size.onnx") in err and "->" in err
    assert _port_is_free(endpoint)


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p
