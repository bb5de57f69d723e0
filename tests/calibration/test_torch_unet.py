"""A real exported U-Net (export/unet.py, tiny and untrained) goes through calibrate TensorRT-legal."""

from __future__ import annotations

import pytest

from medstream.calibration.validator import validate_model
from medstream.runtime.contract import ClassSpec, InputSpec, ModelContract, OutputSpec, write_contract
from tests.calibration.conftest import request_for

torch = pytest.importorskip("torch")


@pytest.mark.torch
def test_exported_unet_quantizes_to_a_tensorrt_legal_file(tmp_path, calib_folder, eval_folder):
    import onnx

    from medstream.calibration.pipeline import calibrate
    from medstream.export.unet import UNet

    torch.manual_seed(0)
    net = UNet(1, 3, base=4, depth=2).eval()
    path = tmp_path / "unet.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 64, 64), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    write_contract(model, ModelContract(model_id="tiny-torch-unet", input=InputSpec(name="input", height=64, width=64),
                                        outputs=(OutputSpec(name="logits"),),
                                        classes=tuple(ClassSpec(name=n) for n in ("bg", "a", "b"))))
    onnx.save(model, str(path))
    result = calibrate(request_for(path, tmp_path / "unet.int8.onnx", calib_folder, eval_folder,
                                   max_dice_drop=100.0, use_cache=False))
    assert result.passed
    assert validate_model(result.outputs["int8"]) == []
    ops = {n.op_type for n in onnx.load(result.outputs["int8"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Resize", "Concat", "MaxPool"} <= ops
