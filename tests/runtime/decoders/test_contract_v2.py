"""Contract v2: v1 documents unchanged, versions stamped by need, validation against the model, GPU refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medstream.runtime.contract import CONTRACT_KEY, contract_from_metadata, needed_version, resolve_contract
from medstream.runtime.decoders import make_decoder, refine
from medstream.runtime.decoders.validate import ModelIO, TensorInfo, check_model_io, model_io_from_onnx
from medstream.runtime.errors import ContractError
from medstream.runtime.gpu.prepost import check_gpu_support
from medstream.runtime.models.loader import read_model_contract
from tests.fixtures.models import tiny_contract
from tests.runtime.decoders import models as M

V1_JSON = ('{"contract_version":1,"task":"segmentation","model_id":"old","modality":"ultrasound","input":{"name":"input",'
           '"layout":"NCHW","channels":1,"color_order":"gray","height":64,"width":64,"dtype":"float32","normalization":'
           '{"kind":"scale_mean_std","scale":0.00392156862745098,"mean":[0.0],"std":[1.0],"low":0.0,"high":255.0},'
           '"dynamic_batch":false,"dynamic_spatial":false},"outputs":[{"name":"logits","kind":"logits","layout":"NCHW"}],'
           '"classes":[{"name":"background","color":[0,0,0]},{"name":"a","color":[255,0,0]}],"provenance":{}}')


def test_a_version_1_document_loads_unchanged_and_writes_back_as_version_1():
    c = contract_from_metadata({CONTRACT_KEY: V1_JSON})
    assert c.contract_version == 1 and c.input.resize == "stretch" and c.outputs[0].activation == "auto"
    written = json.loads(c.to_json())
    assert set(written) == set(json.loads(V1_JSON)) | {"provenance"}  # no v2 keys: a v1-only reader accepts it
    assert "resize" not in written["input"] and "activation" not in written["outputs"][0]


def test_bundled_model_contract_is_still_version_1(bundled_ultrasound):
    c = read_model_contract(bundled_ultrasound)
    assert c is not None and c.contract_version == 1 and c.task == "segmentation"


@pytest.mark.parametrize("change", [
    {"task": "keypoints"}, {"input": {"resize": "letterbox"}}, {"decode": {"threshold": 0.3}},
    {"input": {"normalization": {"kind": "per_image"}}}, {"outputs": [{"name": "logits", "activation": "sigmoid"}]},
])
def test_a_version_2_field_stamps_version_2(change):
    base = tiny_contract().model_dump()
    c = resolve_contract(None, {**base, **{k: ({**base[k], **v} if isinstance(v, dict) and k in base else v)
                                           for k, v in change.items()}}, "m")
    assert c.contract_version == 2 and needed_version(json.loads(c.to_json())) == 2
    assert needed_version(tiny_contract().model_dump()) == 1


def test_left_out_layouts_follow_task_and_kind():
    _, contract, *_ = M.end_to_end_detector()
    c = resolve_contract(None, contract, "m")
    assert [o.layout for o in c.outputs] == ["NB4", "NB", "NB"]
    _, contract, *_ = M.yolov8_detector()
    assert resolve_contract(None, contract, "m").outputs[0].layout == "NCA"


IMAGES = (TensorInfo("images", (1, 3, 64, 64), "float32"),)


def _io(*outputs, inputs=IMAGES):
    return ModelIO(tuple(inputs), tuple(outputs), "model.onnx")


@pytest.mark.parametrize("shape, needle", [
    ((1, 44, 7), "set layout NAC"),        # transposed head
    ((1, 8, 44), "fits kind yolov5"),       # a v5 head declared as v8
    ((1, 9, 44), "or list 5 classes"),
])
def test_yolo_head_mismatches_name_the_likely_fix(shape, needle):
    _, contract, *_ = M.yolov8_detector()
    with pytest.raises(ContractError) as exc:
        check_model_io(resolve_contract(None, contract, "m"), _io(TensorInfo("output0", shape, "float32")))
    assert needle in str(exc.value) and "contract.outputs[0]" in str(exc.value)


def test_nhwc_segmentation_output_declared_nchw_is_refused_with_the_layout_fix():
    c = resolve_contract(None, tiny_contract().model_dump(), "m")
    io = _io(TensorInfo("logits", (1, 64, 64, 3), "float32"), inputs=(TensorInfo("input", (1, 1, 64, 64), "float32"),))
    with pytest.raises(ContractError) as exc:
        check_model_io(c, io)
    assert exc.value.fix == "set contract.outputs[0].layout: NHWC"


def test_activation_auto_is_resolved_from_the_channel_count(tmp_path):
    model, contract = M.sigmoid_segmenter()
    c = check_model_io(resolve_contract(None, contract, "m"), model_io_from_onnx(M.save(model, tmp_path / "m.onnx")))
    assert c.outputs[0].activation == "sigmoid"
    c = check_model_io(resolve_contract(None, tiny_contract().model_dump(), "m"),
                       _io(TensorInfo("logits", (1, 3, 64, 64), "float32"),
                           inputs=(TensorInfo("input", (1, 1, 64, 64), "float32"),)))
    assert c.outputs[0].activation == "softmax"


def test_dynamic_channels_are_resolved_at_warm_up_and_pick_the_sigmoid_decoder():
    _, contract = M.sigmoid_segmenter()
    c = resolve_contract(None, contract, "m")
    c = check_model_io(c, _io(TensorInfo("out", (1, None, None, None), "float32"),
                              inputs=(TensorInfo("input", (1, 1, None, None), "float32"),)))
    assert c.outputs[0].activation == "auto"
    decoder = make_decoder(c)
    y = np.full((1, 1, 8, 8), 2.0, np.float32)
    with pytest.raises(ValueError, match="not a softmax output"):  # never an argmax over one channel
        decoder({"out": y}, (8, 8))
    refined = refine(decoder, {"out": y})
    assert type(refined).__name__ == "SigmoidSegmentation"
    assert refined({"out": y}, (8, 8)).mask.all()


def test_end_to_end_outputs_that_disagree_on_box_count_are_refused():
    _, contract, *_ = M.end_to_end_detector()
    io = _io(TensorInfo("det_boxes", (1, 10, 4), "float32"), TensorInfo("det_scores", (1, 12), "float32"),
             TensorInfo("det_labels", (1, 10), "int64"))
    with pytest.raises(ContractError, match="disagree on the number of boxes"):
        check_model_io(resolve_contract(None, contract, "m"), io)


@pytest.mark.parametrize("change, needle", [
    ({"task": "classification", "outputs": [{"name": "logits", "kind": "logits"}]}, "task classification"),
    ({"input": {"name": "input", "height": 64, "width": 64, "resize": "letterbox"}}, "input.resize letterbox"),
    ({"input": {"name": "input", "height": 64, "width": 64, "normalization": {"kind": "per_image"}}}, "per_image"),
    ({"outputs": [{"name": "logits", "kind": "logits", "activation": "sigmoid"}]}, "activation sigmoid"),
])
def test_the_gpu_path_refuses_what_it_does_not_mirror(change, needle):
    with pytest.raises(ContractError) as exc:
        check_gpu_support(resolve_contract(None, {**tiny_contract().model_dump(), **change}, "m"), "tensorrt")
    assert needle in str(exc.value) and "--backend onnxruntime" in exc.value.fix
    check_gpu_support(resolve_contract(None, tiny_contract().model_dump(), "m"), "tensorrt")  # segmentation runs
