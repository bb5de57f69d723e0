"""The GPU device-check script's CPU-safe parts: argument checks, model loading, the CPU reference and
its import footprint (the device machine has no pyzmq/pyyaml/hdrhistogram)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.gpu_models import tiny_conv
from tests.fixtures.models import intensity_classifier, save

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_device_check.py"


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_loads_models_and_runs_the_cpu_reference(tmp_path, capsys):
    model = save(tiny_conv(64), tmp_path / "tiny.onnx")
    assert _load().main(["--dry-run", "--models", str(model), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "tiny.onnx" in out and "CPU path ok" in out and "GPU pieces missing here" in out
    report = json.loads((tmp_path / "out" / "gpu_check_dry_run.json").read_text())
    assert report["environment"]["onnxruntime"] and "tiny.onnx" in report["cpu_reference_ms_p50"]


def test_bad_arguments_and_models_are_refused(tmp_path, capsys):
    module = _load()
    with pytest.raises(SystemExit):
        module.main(["--models", "x.onnx"])  # no --out outside a dry run
    assert module.main(["--dry-run", "--models", str(tmp_path / "missing.onnx")]) == 2
    no_contract = save(intensity_classifier(with_contract=False), tmp_path / "nc.onnx")
    assert module.main(["--dry-run", "--models", str(no_contract)]) == 2
    assert "no medstream contract" in capsys.readouterr().err


def test_without_gpu_the_real_run_stops_naming_what_is_missing(tmp_path, capsys):
    module = _load()
    if not module.gpu_missing():
        pytest.skip("GPU pieces are present here")
    model = save(tiny_conv(64), tmp_path / "tiny.onnx")
    assert module.main(["--models", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    assert "missing" in json.loads((tmp_path / "o" / "gpu_check.json").read_text())["error"]


def test_script_imports_only_what_the_device_has(tmp_path):
    model = save(tiny_conv(64), tmp_path / "tiny.onnx")
    code = (f"import runpy, sys; sys.argv = ['x', '--dry-run', '--models', {str(model)!r}]\n"
            f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code\n"
            "print(sorted(m for m in ('zmq', 'yaml', 'hdrh', 'prometheus_client', 'psutil', 'tqdm', 'torch') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
