"""The shipped INT8 reference models: TensorRT-legal, up to date with their FP32 models, and accurate."""

from __future__ import annotations

from pathlib import Path

import pytest

from medstream.calibration.cache import file_sha256
from medstream.calibration.gate import EvalSet, Gate
from medstream.calibration.quantize import cpu_variant_path, read_quantization
from medstream.calibration.validator import validate_model
from medstream.runtime.contract import read_contract

MODELS = Path(__file__).resolve().parents[2] / "runtime" / "models"
KINDS = ("ultrasound", "fluoroscopy")


def _paths(kind: str) -> tuple[Path, Path, Path]:
    fp32 = MODELS / f"{kind}_unet.onnx"
    int8 = MODELS / f"{kind}_unet.int8.onnx"
    for p in (fp32, int8, cpu_variant_path(int8)):
        if not p.is_file():
            pytest.fail(f"{p} is missing: see docs/CALIBRATION.md, 'Reference results', for the command")
    return fp32, int8, cpu_variant_path(int8)


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_int8_files_are_legal_and_match_their_fp32_model(kind):
    fp32, int8, cpu = _paths(kind)
    assert validate_model(int8) == []
    for path, variant in ((int8, "tensorrt"), (cpu, "cpu")):
        assert read_contract(str(path)) == read_contract(str(fp32))
        meta = read_quantization(path)
        assert meta["variant"] == variant and meta["frames"] == 200
        assert meta["source_model_sha256"] == file_sha256(fp32), (
            f"{path.name} was calibrated from another {fp32.name}: recalibrate (docs/CALIBRATION.md)")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_shipped_int8_files_pass_the_gate_on_unseen_frames(kind):
    fp32, int8, cpu = _paths(kind)
    contract = read_contract(str(fp32))
    gate = Gate(fp32, contract, EvalSet.load(contract, f"synthetic://{kind}?seed=10020&scenes=3", 30))
    for path, variant in ((int8, "int8"), (cpu, "int8-cpu")):
        score = gate.score(path, variant)
        assert score.passed and score.argmax_agreement > 0.999, score
