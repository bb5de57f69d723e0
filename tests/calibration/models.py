"""Small models and data for the calibration tests, built with onnx.helper and numpy (no torch).

``unet_like`` is a U-Net in miniature (conv, ReLU, max-pool, resize, skip concat, 1x1 head) whose
weights are set by hand: it classifies pixels by intensity, class 0 below 1/3, class 1 up to 2/3,
class 2 above, with logit margins far larger than int8 rounding. ``saturating_head=True`` adds
``1000 * x`` to every logit: the argmax is unchanged in float, but the output range becomes ~1000
while the logits still differ by < 3, so int8 output quantization (step ~8) erases the differences,
with any calibration method. Leaving the head in float repairs it: the test case for ``--auto``.

``blocky_frames`` makes frames of flat 8x8 blocks whose grey levels stay far from the class
thresholds, and their exact truth masks: on them the FP32 model is perfect and a correct INT8 model
loses nothing, so the gate's verdicts are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medstream.runtime.contract import ClassSpec, InputSpec, ModelContract, OutputSpec, write_contract

SAFE_LEVELS = np.array([15, 40, 60, 128, 150, 200, 235, 250], np.uint8)  # all >= 0.04 from 1/3 and 2/3
CLASSES = (ClassSpec(name="background", color=(0, 0, 0)), ClassSpec(name="mid", color=(255, 0, 0)),
           ClassSpec(name="bright", color=(0, 255, 0)))


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _center(c_out: int, c_in: int, k: int, taps: np.ndarray) -> np.ndarray:
    """A k x k conv weight with only the centre tap set (taps: c_out x c_in)."""
    w = np.zeros((c_out, c_in, k, k), np.float32)
    w[:, :, k // 2, k // 2] = taps
    return w


def unet_like(size: int = 64, saturating_head: bool = False, layout: str = "NCHW", channels: int = 1,
              model_id: str = "tiny-unet", opset: int = 17, saturating_middle: bool = False) -> onnx.ModelProto:
    """The hand-set mini U-Net described in the module docstring (optionally RGB and/or NHWC).

    ``saturating_middle=True`` moves the trouble inside: ``fuse_conv`` outputs ``1001 g`` and
    ``1000 g`` and the head reads their difference, so only keeping ``fuse_conv`` *and* the head
    in float repairs int8 (the first/last-layer remedy alone does not).
    """
    nodes, inits = [], []
    x = "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["input_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        x = "input_nchw"
    # first layer: 4 features of the grey level g (for RGB, g = mean of the channels)
    taps = np.array([[1.0], [1.0], [-1.0], [1.0]], np.float32) / channels
    w1 = _center(4, channels, 3, np.repeat(taps, channels, axis=1))
    b1 = np.array([0.0, -1 / 3, 1.0, -2 / 3], np.float32)  # g, g-1/3, 1-g, g-2/3
    inits += [_init("w1", w1), _init("b1", b1)]
    nodes += [helper.make_node("Conv", [x, "w1", "b1"], ["c1"], name="first_conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c1"], ["a"], name="relu1")]
    # down, middle conv, up (flat 8x8 blocks survive max-pool + nearest resize unchanged)
    inits += [_init("w2", _center(4, 4, 3, np.eye(4))), _init("b2", np.zeros(4))]
    nodes += [helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], name="mid_conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["m"], name="relu2")]
    inits += [_init("scales", np.array([1, 1, 2, 2], np.float32))] + ([_init("roi", np.zeros(0))] if opset < 13 else [])
    nodes += [helper.make_node("Resize", ["m", "roi" if opset < 13 else "", "scales"], ["u"], name="up", mode="nearest"),
              helper.make_node("Concat", ["a", "u"], ["cat"], name="concat", axis=1)]
    w3 = np.concatenate([0.5 * np.eye(4), 0.5 * np.eye(4)], axis=1)
    if saturating_middle:
        w3[1] = 1000.0 * w3[0]
        w3[0] *= 1001.0
    w3 = w3[:, :, None, None]
    inits += [_init("w3", w3), _init("b3", np.zeros(4))]
    nodes += [helper.make_node("Conv", ["cat", "w3", "b3"], ["c3"], name="fuse_conv"),
              helper.make_node("Relu", ["c3"], ["f"], name="relu3")]
    # head: logits (0, 3g - 1, 6g - 3) from feature 0 (= g), plus 1000 g on every logit when saturating
    head = np.zeros((3, 4), np.float32)
    head[:, 0] = [0.0, 3.0, 6.0]
    if saturating_head:
        head[:, 0] += 1000.0
    if saturating_middle:
        head[:, 1] = -head[:, 0]
    inits += [_init("wh", head[:, :, None, None]), _init("bh", np.array([0.0, -1.0, -3.0]))]
    nodes.append(helper.make_node("Conv", ["f", "wh", "bh"], ["logits"], name="head"))
    shape = [1, channels, size, size] if layout == "NCHW" else [1, size, size, channels]
    graph = helper.make_graph(nodes, model_id, [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, size, size])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="medstream-tests")
    model.ir_version = 8
    color = "gray" if channels == 1 else "rgb"
    write_contract(model, ModelContract(
        model_id=model_id, modality="ultrasound",
        input=InputSpec(name="input", layout=layout, channels=channels, color_order=color, height=size, width=size),
        outputs=(OutputSpec(name="logits"),), classes=CLASSES))
    onnx.checker.check_model(model)
    return model


def truth_of(image: np.ndarray) -> np.ndarray:
    """The classes the FP32 model gives a grey image: 0 below 1/3, 1 up to 2/3, 2 above."""
    g = image.astype(np.float32) / 255.0
    return np.where(g > 2 / 3, 2, np.where(g > 1 / 3, 1, 0)).astype(np.uint8)


def blocky_frames(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` grey frames of flat 8x8 blocks with levels from :data:`SAFE_LEVELS`."""
    rng = np.random.default_rng(seed)
    blocks = size // 8
    return [np.kron(rng.choice(SAFE_LEVELS, (blocks, blocks)), np.ones((8, 8), np.uint8)).astype(np.uint8)
            for _ in range(n)]


def write_eval_folder(folder: Path, n: int = 24, size: int = 64, seed: int = 1000) -> Path:
    """A folder of ``NAME.npz`` files with ``image`` and ``mask`` (the evaluation oracle's format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(blocky_frames(n, size, seed)):
        np.savez(folder / f"f{i:04d}.npz", image=img, mask=truth_of(img))
    return folder


def write_frame_folder(folder: Path, n: int = 24, size: int = 64, seed: int = 0) -> Path:
    """A folder of ``NNNNNNNN.npy`` grey frames (calibration data)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(blocky_frames(n, size, seed)):
        np.save(folder / f"{i:08d}.npy", img)
    return folder


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
