"""``medstream doctor``: run for real on this machine (CPU only, TensorRT lean), plus Jetson parsing on a
fake /etc and /proc tree (a mock: this machine is not a Jetson)."""

from __future__ import annotations

import json

import onnxruntime as ort

from medstream.cli.commands.doctor import format_report, jetson_info, machine_report
from medstream.cli.main import main
from medstream.runtime.gpu.cuda import device_count


def test_doctor_json_reports_providers_and_auto_choice(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onnxruntime"]["version"] == ort.__version__
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["cpu"]["usable_cores"] >= 1
    assert report["tensorrt"]["status"] in ("absent", "full (build + run)", "lean (run version-compatible engines only)")
    if device_count() == 0:
        assert report["auto"]["backend"] in ("onnxruntime", "openvino")  # openvino: tests/runtime/backends/test_openvino_backend.py
        reason = report["auto"]["reason"]
        assert "no CUDA device" in reason or "not installed" in reason or "cuda-python is not" in reason
        assert report["gpu"]["gpus"] == [] and report["cuda"]["device_count"] == 0


def test_doctor_text(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ONNX RT" in out and "CPUExecutionProvider" in out and "auto ->" in out
    try:
        import tensorrt_lean

        assert tensorrt_lean.__version__ in out
    except ImportError:
        pass


def test_jetson_facts_from_fake_tree(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081\nmore\n")
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    info = jetson_info(tmp_path)
    assert info["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert info["l4t_release"].startswith("# R36")
    report = machine_report(tmp_path)
    assert report["jetson"]["model"] == info["model"]
    assert "Jetson      NVIDIA Jetson AGX Orin" in format_report(report)


def test_not_a_jetson(tmp_path):
    assert jetson_info(tmp_path) is None
