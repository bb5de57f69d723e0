"""medstream export: a foreign model round-trips through the CLI; divergences are refused; the contract is embedded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from medstream.cli.main import main  # noqa: E402
from medstream.export.exporter import ExportError, ExportSpec, export_model, prove_export  # noqa: E402
from medstream.export.unet import UNet  # noqa: E402
from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from medstream.runtime.contract import read_contract  # noqa: E402
from medstream.runtime.postprocess import Postprocessor  # noqa: E402
from medstream.runtime.preprocess import Preprocessor  # noqa: E402
from medstream.runtime.version import git_commit  # noqa: E402

pytestmark = pytest.mark.torch

HERE = Path(__file__).resolve().parent
FOREIGN = f"{HERE / 'foreign_model.py'}:TwoHeadNHWC"
CLASSES3 = {"classes": [{"name": "background"}, {"name": "vessel"}, {"name": "needle"}], "modality": "ultrasound"}


def small_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = UNet(1, 3, base=8, depth=2)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for _ in range(2):
            model(torch.rand(2, 1, 64, 64))
    return model.eval()


def perturb_largest_weight(path: Path) -> None:
    """Plant a divergence: change one element of the largest weight initializer in the file."""
    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(path))


# --------------------------------------------------------------------------------------- foreign model via the CLI
def test_cli_round_trips_a_foreign_nhwc_rgb_model_with_two_outputs(tmp_path, capsys):
    from tests.export.foreign_model import make_trained

    model = make_trained()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "tool.onnx"
    report = tmp_path / "export.json"
    rc = main(["export", "--model", FOREIGN, "--weights", str(weights), "--input-shape", "1,64,64,3",
               "--layout", "NHWC", "--channels", "rgb", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
               "--classes", "background,tool", "--colors", "#000000,#ffc800",
               "--outputs", "seg:logits:NCHW,presence:auxiliary:NC", "--modality", "ultrasound",
               "--training-data", "unit-test frames", "--seed", "7", "--out", str(out), "--report", str(report)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "model card: tool.onnx" in printed and "sha256" in printed and "GMAC" in printed
    assert "seg" in printed and "presence" in printed and "FAILED" not in printed

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 64, 64, 3]

    contract = read_contract(out)
    assert contract.input.layout == "NHWC" and contract.input.channels == 3 and contract.input.color_order == "rgb"
    assert (contract.input.height, contract.input.width) == (64, 64)
    assert contract.input.normalization.mean == (0.485, 0.456, 0.406)
    assert [(o.name, o.kind, o.layout) for o in contract.outputs] == [("seg", "logits", "NCHW"),
                                                                       ("presence", "auxiliary", "NC")]
    assert contract.class_names == ("background", "tool") and contract.class_colors[1] == (255, 200, 0)
    prov = contract.provenance
    assert prov.training_data == "unit-test frames" and prov.seed == 7 and prov.git_commit == git_commit()
    assert "opset 17" in prov.exporter and prov.date != "unknown"

    doc = json.loads(report.read_text())
    assert doc["proof"]["passed"] is True and set(doc["proof"]["per_output"]) == {"seg", "presence"}
    assert doc["card"]["sha256"] and doc["card"]["macs"] > 0

    # The runtime runs it from the contract alone: a BGR capture is converted, normalised, laid out NHWC.
    rng = np.random.default_rng(3)
    frame_bgr = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    x = Preprocessor(contract)(frame_bgr, "bgr").copy()
    with OnnxRuntimeBackend(str(out), contract, intra_op_threads=1) as backend:
        got = backend.infer({"image": x})
    with torch.inference_mode():
        seg, presence = model(torch.from_numpy(x))
    np.testing.assert_allclose(got["seg"], seg.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(got["presence"], presence.numpy(), atol=1e-4, rtol=1e-3)
    mask = Postprocessor(contract).class_map(got)
    assert mask.shape == (64, 64)


def test_cli_exports_torchscript_and_torch_export_archives(tmp_path):
    from tests.export.foreign_model import make_trained

    model = make_trained(seed=1)
    example = torch.rand(1, 32, 32, 3)
    scripted = tmp_path / "scripted.pt"
    torch.jit.trace(model, example).save(str(scripted))
    archive = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (example,)), str(archive))
    common = ["--input-shape", "1,32,32,3", "--layout", "NHWC", "--classes", "background,tool", "--proof-frames", "1"]
    for source, name in ((scripted, "ts.onnx"), (archive, "ep.onnx")):
        assert main(["export", "--model", str(source), *common, "--out", str(tmp_path / name)]) == 0
        contract = read_contract(tmp_path / name)
        assert [o.name for o in contract.outputs] == ["logits", "output1"]
        assert contract.outputs[1].kind == "auxiliary"


def test_cli_refuses_bad_model_inputs_with_clear_errors(tmp_path, capfd):
    from tests.export.foreign_model import make_trained

    wrong = tmp_path / "wrong.pt"
    torch.save(UNet(1, 3, base=4, depth=1).state_dict(), wrong)
    args = ["--input-shape", "1,32,32,3", "--layout", "NHWC", "--classes", "background,tool", "--out", str(tmp_path / "x.onnx")]
    def refused(*argv: str) -> str:
        assert main(["export", *argv]) != 0
        return capfd.readouterr().err

    assert "do not fit" in refused("--model", FOREIGN, "--weights", str(wrong), *args)
    pickled = tmp_path / "whole.pt"
    torch.save(make_trained(), pickled)
    assert "not a TorchScript archive" in refused("--model", str(pickled), *args)
    assert "cannot import module" in refused("--model", "no_such_module_xyz:Net", *args)
    assert "2 classes" in refused("--model", FOREIGN, *args[:-2], "--classes", "a,b,c", "--out", str(tmp_path / "y.onnx"))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


# --------------------------------------------------------------------------------------- proof
def test_planted_divergence_is_refused_and_nothing_is_written(tmp_path):
    model = small_unet()
    out = tmp_path / "m.onnx"
    spec = ExportSpec(input_shape=(1, 1, 64, 64), contract=dict(CLASSES3), proof_frames=2)
    with pytest.raises(ExportError) as err:
        export_model(model, out, spec, before_proof=perturb_largest_weight)
    text = str(err.value)
    assert "export proof failed" in text and "'logits'" in text and "max abs error" in text
    assert "do not deploy" in text
    assert not out.exists()
    assert (tmp_path / "m.rejected.onnx").is_file() and "m.rejected.onnx" in text


@pytest.mark.slow
def test_prove_export_passes_the_true_file_and_catches_a_tampered_copy(tmp_path):
    model = small_unet(seed=1)
    out = tmp_path / "m.onnx"
    result = export_model(model, out, ExportSpec(input_shape=(1, 1, 64, 64), contract=dict(CLASSES3), proof_frames=2))
    assert result.proof.passed
    row = result.proof.per_output()["logits"]
    assert row["max_abs"] < 1e-4 and row["failing"] == 0 and row["min_argmax_agreement"] > 0.999
    cases = {c.case for c in result.proof.comparisons}
    assert any(c.startswith("random tensor") for c in cases) and any("phantom frame" in c for c in cases)
    assert "proof: ONNX Runtime vs PyTorch" in result.proof.format()

    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(out.read_bytes())
    perturb_largest_weight(tampered)
    with pytest.raises(ExportError, match="export proof failed"):
        prove_export(model, tampered, n_frames=1)
    report = prove_export(model, tampered, n_frames=1, raise_on_failure=False)
    assert not report.passed and report.worst().failing > 0 and "FAILED" in report.format()


def test_dynamic_axes_are_exported_and_proven(tmp_path):
    model = small_unet(seed=2)
    out = tmp_path / "dyn.onnx"
    spec = ExportSpec(input_shape=(1, 1, 64, 64), contract=dict(CLASSES3), dynamic_batch=True, dynamic_spatial=True,
                      proof_frames=1)
    result = export_model(model, out, spec)
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
    cases = {c.case for c in result.proof.comparisons}
    assert "batch of 3" in cases and any(c.startswith("32x32") for c in cases)
    assert result.contract.input.dynamic_batch and result.contract.input.dynamic_spatial
    import onnxruntime as ort

    y = ort.InferenceSession(str(out)).run(None, {"image": np.zeros((2, 1, 96, 128), np.float32)})[0]
    assert y.shape == (2, 3, 96, 128)


def test_contract_fields_contradicting_the_export_are_refused(tmp_path):
    spec = ExportSpec(input_shape=(1, 1, 64, 64), contract=dict(CLASSES3, input={"height": 128}))
    with pytest.raises(ExportError, match="input.height=128"):
        export_model(small_unet(), tmp_path / "c.onnx", spec)
    with pytest.raises(ExportError, match="class list"):
        export_model(small_unet(), tmp_path / "c.onnx", ExportSpec(input_shape=(1, 1, 64, 64)))


@pytest.mark.slow
def test_reference_unet_exports_to_plain_tensorrt_friendly_ops(tmp_path):
    result = export_model(UNet(1, 3).eval(), tmp_path / "u.onnx",
                          ExportSpec(input_shape=(1, 1, 256, 256), contract=dict(CLASSES3), proof_random=1, proof_frames=1))
    ops = set(result.card.op_counts)
    assert ops <= {"Conv", "Relu", "MaxPool", "Resize", "Concat"}  # BatchNorm folded, no Identity/Pad/Shape
    assert result.card.size_bytes < 5_000_000
    assert 1_000_000 < result.card.torch_parameters < 2_000_000
    assert not result.notes
