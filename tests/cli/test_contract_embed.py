"""`medstream contract embed|show` and the shared `--contract FILE.yaml` of build and bench.

Embedding must round-trip (what is read back is what was validated and written), leave the input file
byte-for-byte untouched, change nothing but the metadata, and refuse what would run wrong (names the
graph does not have, missing fields, overwriting the input) before writing anything.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

from medstream.runtime.contract import CONTRACT_KEY, resolve_contract
from medstream.runtime.models.inspect import inspect_model, proposal_yaml
from medstream.runtime.models.loader import read_model_contract
from tests.fixtures import foreign_models as fm

MEDSTREAM = [sys.executable, "-m", "medstream.cli.main"]


def medstream(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDSTREAM, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def foreign(tmp_path) -> tuple[Path, Path]:
    """A contract-less 1-channel sigmoid segmenter and inspect's proposal for it, with the class named."""
    model = fm.save(fm.sigmoid_segmenter(), tmp_path / "their_model.onnx")
    text = proposal_yaml(inspect_model(model).proposal, model).replace("name: class_1\n", "name: lesion\n")
    contract = tmp_path / "contract.yaml"
    contract.write_text(text)
    return model, contract


def test_embed_round_trips_and_leaves_the_input_untouched(foreign, tmp_path):
    model, contract = foreign
    before = sha(model)
    out = tmp_path / "with_contract.onnx"
    r = medstream("contract", "embed", str(model), "--contract", str(contract), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "lesion" in r.stdout
    expected = resolve_contract(None, yaml.safe_load(contract.read_text()), str(model))
    assert read_model_contract(out) == expected  # read back == what was validated and embedded
    assert read_model_contract(out).class_names == ("background", "lesion")
    assert sha(model) == before and read_model_contract(model, required=False) is None
    src, dst = onnx.load(str(model)), onnx.load(str(out))
    assert dst.graph.SerializeToString() == src.graph.SerializeToString()  # only the metadata changed
    assert [p.key for p in dst.metadata_props if p.key == CONTRACT_KEY] == [CONTRACT_KEY]
    show = medstream("contract", "show", str(out))
    assert show.returncode == 0 and yaml.safe_load(show.stdout)["classes"][1]["name"] == "lesion"
    # embedding again over an embedded contract: the file's fields win, the rest is kept
    rename = tmp_path / "rename.yaml"
    rename.write_text("model_id: lesion-seg-v2\n")
    again = tmp_path / "v2.onnx"
    assert medstream("contract", "embed", str(out), "--contract", str(rename), "--out", str(again)).returncode == 0
    assert read_model_contract(again) == expected.model_copy(update={"model_id": "lesion-seg-v2"})


def test_embed_refuses_to_overwrite_the_input_unless_in_place(foreign):
    model, contract = foreign
    before = sha(model)
    r = medstream("contract", "embed", str(model), "--contract", str(contract), "--out", str(model))
    assert r.returncode == 2 and "--in-place" in r.stderr and sha(model) == before
    r = medstream("contract", "embed", str(model), "--contract", str(contract))
    assert r.returncode == 2 and "--out" in r.stderr and sha(model) == before
    r = medstream("contract", "embed", str(model), "--contract", str(contract), "--in-place")
    assert r.returncode == 0, r.stderr
    assert read_model_contract(model).class_names == ("background", "lesion")
    assert not [p for p in model.parent.iterdir() if p.name.endswith(".tmp")]  # the atomic writer cleaned up


def test_embed_refuses_an_existing_out_without_force(foreign, tmp_path):
    model, contract = foreign
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"somebody's file")
    r = medstream("contract", "embed", str(model), "--contract", str(contract), "--out", str(out))
    assert r.returncode == 2 and "--force" in r.stderr and out.read_bytes() == b"somebody's file"
    r = medstream("contract", "embed", str(model), "--contract", str(contract), "--out", str(out), "--force")
    assert r.returncode == 0 and read_model_contract(out).model_id == "their_model"


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["input"].update(name="images"), "has no input named 'images'"),
    (lambda d: d["outputs"][0].update(name="logits"), "has no output(s) ['logits']"),
    (lambda d: d["classes"].append({"name": "extra"}), "need 2 classes, the contract lists 3"),
    (lambda d: d["outputs"][0].update(activation="softmax"), "contract's classes list 2"),
    (lambda d: d.pop("classes"), "classes"),
    (lambda d: d["input"].update(channels=3), "channels=3 does not fit color_order"),
])
def test_embed_refuses_a_contract_that_would_run_wrong_and_writes_nothing(foreign, tmp_path, edit, message):
    model, contract = foreign
    data = yaml.safe_load(contract.read_text())
    edit(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = tmp_path / "never.onnx"
    r = medstream("contract", "embed", str(model), "--contract", str(bad), "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_run_config_with_a_contract_section_is_accepted(foreign, tmp_path):
    model, contract = foreign
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(model), "contract": yaml.safe_load(contract.read_text())}))
    out = tmp_path / "m.onnx"
    assert medstream("contract", "embed", str(model), "--contract", str(config), "--out", str(out)).returncode == 0
    assert read_model_contract(out).class_names == ("background", "lesion")


def test_show_on_a_model_without_contract_says_how_to_get_one(foreign):
    model, _ = foreign
    r = medstream("contract", "show", str(model))
    assert r.returncode == 2 and "carries no medstream contract" in r.stderr and "medstream inspect" in r.stderr


def test_build_takes_the_shared_contract_argument(foreign):
    """Without a contract `build` says --contract; with one it gets past the contract (to TensorRT, absent here)."""
    model, contract = foreign
    r = medstream("build", "--model", str(model))
    assert r.returncode == 2 and "--contract FILE.yaml" in r.stderr and "medstream inspect" in r.stderr
    r = medstream("build", "--model", str(model), "--contract", str(contract))
    assert "--contract FILE.yaml" not in r.stderr and "Traceback" not in r.stderr
    assert r.returncode != 0  # no TensorRT builder on this machine: refused with its own message


def test_bench_floor_runs_a_model_given_only_a_contract_file(foreign, tmp_path):
    model, contract = foreign
    r = medstream("bench", "floor", "--model", str(model), "--contract", str(contract), "--duration", "2",
                  "--warmup", "0.5", "--rounds", "1", "--threads", "1", "--out", str(tmp_path / "bench"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "bench" / "report.json").is_file()
    no_contract = medstream("bench", "floor", "--model", str(model), "--duration", "2", "--warmup", "0.5",
                            "--rounds", "1", "--out", str(tmp_path / "bench2"))
    assert no_contract.returncode == 2 and "--contract FILE.yaml" in no_contract.stderr
