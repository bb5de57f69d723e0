"""Check a model contract against the model's real inputs and outputs, once, before the first frame.

A contract that does not fit its model used to run and publish nonsense (a 1-channel sigmoid segmenter
argmaxed to all background; a ``[1, 14]`` classifier read as a 1x14 mask; 2 classes declared for a 4-channel
output) or drop every frame. Here every output the contract names is checked for rank, layout and channel
count against the task and ``classes``, the input for name, rank, fixed sizes and element type, and each
mismatch is a :class:`~medstream.runtime.errors.ContractError` naming the field and the fix.

The model's tensors come from the ONNX graph (:func:`model_io_from_onnx`: ``onnx.load`` without the
weights, shape inference when outputs carry no shapes) or from a live session (:func:`model_io_from_session`,
any object with ONNX Runtime's ``get_inputs()``/``get_outputs()``), or from arrays the model returned
(:func:`model_io_from_arrays`: the warm-up's outputs, where dynamic axes are concrete).
:func:`check_model_io` returns the contract with every ``activation: auto`` resolved, so the decoders run
with what was checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medstream.runtime.contract import ModelContract, OutputSpec
from medstream.runtime.errors import ContractError

log = logging.getLogger("medstream.decoders")

Dim = int | None  # None: dynamic (symbolic or unknown)


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: name, shape (``None`` dims are dynamic; ``None`` shape: rank unknown), dtype."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: str  # numpy's name: float32, float16, uint8, int8, int64, ...


@dataclass(frozen=True)
class ModelIO:
    """A model's inputs and outputs as found in ``source`` (a file, a session, a warm-up run)."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    source: str

    def output(self, name: str) -> TensorInfo | None:
        return next((o for o in self.outputs if o.name == name), None)

    def input(self, name: str) -> TensorInfo | None:
        return next((i for i in self.inputs if i.name == name), None)


# ------------------------------------------------------------------------------------ where from
def model_io_from_onnx(model: str | Path | Any) -> ModelIO:
    """Inputs and outputs of an ONNX file (weights not loaded) or ``ModelProto``."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, str | Path) else model
    source = str(model) if isinstance(model, str | Path) else "the model"
    graph = proto.graph
    if any(not o.type.tensor_type.HasField("shape") for o in graph.output):
        try:
            graph = onnx.shape_inference.infer_shapes(proto).graph
        except Exception as exc:  # shapes stay unknown; checked at warm-up instead
            log.info("shape inference on %s failed (%s); output shapes are checked at warm-up", source, exc)
    initializers = {i.name for i in graph.initializer}

    def info(value: Any) -> TensorInfo:
        t = value.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        except Exception:
            dtype = f"onnx-type-{t.elem_type}"
        return TensorInfo(value.name, shape, dtype)

    return ModelIO(tuple(info(i) for i in graph.input if i.name not in initializers),
                   tuple(info(o) for o in graph.output), source)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(bool)": "bool", "tensor(uint16)": "uint16", "tensor(int16)": "int16"}


def model_io_from_session(session: Any, source: str = "the session") -> ModelIO:
    """Inputs and outputs of an ONNX Runtime session (or anything with its ``get_inputs``/``get_outputs``)."""
    def info(arg: Any) -> TensorInfo:
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape) if arg.shape is not None else None
        return TensorInfo(arg.name, shape, _ORT_TYPES.get(arg.type, str(arg.type)))

    return ModelIO(tuple(info(i) for i in session.get_inputs()), tuple(info(o) for o in session.get_outputs()), source)


def model_io_from_arrays(outputs: dict[str, Any], source: str = "the warm-up inference") -> ModelIO:
    """Concrete output shapes from arrays a model returned (numpy or CuPy)."""
    return ModelIO((), tuple(TensorInfo(name, tuple(int(d) for d in value.shape), str(getattr(value.dtype, "name",
                   value.dtype))) for name, value in outputs.items()), source)


# ------------------------------------------------------------------------------------ the rules
def resolve_activation(out: OutputSpec, channels: int | None, n_classes: int, task: str) -> str:
    """The activation an output is decoded with; ``auto`` stays ``auto`` while ``channels`` is unknown.

    The activation says how channels relate: ``softmax``, exclusive classes (argmax); ``sigmoid``, each
    channel independent (thresholded); ``none``, scores used as they are. The kind says whether the values
    are ``logits`` (the function is applied) or ``probabilities`` (used as they are). ``auto``: softmax when
    the output has one channel per class; sigmoid when it has one fewer (no channel for the background: a
    binary 1-channel model, or multi-label); keypoint heatmaps are sigmoid.
    """
    if out.activation != "auto" or channels is None:
        return out.activation
    if task == "keypoints" or channels == n_classes - 1:
        return "sigmoid"
    return "softmax"


def _channels_expected(task: str, activation: str, n_classes: int) -> tuple[int, ...]:
    """Channel counts an output may have: segmentation sigmoid has none for the background (classes[0]);
    a sigmoid classifier has one per class (multi-label), or 1 for a binary one (classes: negative, positive)."""
    if task == "keypoints":
        return (n_classes,)
    if activation == "sigmoid":
        if task == "segmentation":
            return (n_classes - 1,)
        return (n_classes, 1) if n_classes == 2 else (n_classes,)
    return (n_classes,)


def check_model_io(contract: ModelContract, io: ModelIO, *, check_input: bool = True) -> ModelContract:
    """Refuse a contract that does not fit the model; return it with activations resolved.

    Raises
    ------
    ContractError
        Naming the contract field (``contract.outputs[i].layout``, ``classes``, ``input.dtype``...) and the fix.
    """
    if check_input:
        _check_input(contract, io)
    declared = {o.name for o in contract.outputs}
    names = [o.name for o in io.outputs]
    missing = [o.name for o in contract.outputs if io.output(o.name) is None]
    if missing:
        raise ContractError(f"{io.source} has no output(s) {missing}; its outputs are {names}",
                            "fix contract.outputs[].name in the config (or re-export the model)")
    undeclared = [n for n in names if n not in declared]
    if undeclared and io.inputs:
        log.warning("%s: outputs %s are not in the contract and are ignored (declare them with kind auxiliary to "
                    "say so)", io.source, undeclared)
    resolved = []
    for index, out in enumerate(contract.outputs):
        info = io.output(out.name)
        assert info is not None
        resolved.append(_check_output(contract, index, out, info, io.source))
    _check_detection_parts(contract, io)
    if tuple(resolved) == contract.outputs:
        return contract
    return contract.model_copy(update={"outputs": tuple(resolved)})


def _check_input(contract: ModelContract, io: ModelIO) -> None:
    spec = contract.input
    info = io.input(spec.name)
    if info is None:
        raise ContractError(f"{io.source} has no input named {spec.name!r} (it has {[i.name for i in io.inputs]})",
                            "fix contract.input.name in the config or re-export the model")
    if info.dtype != spec.dtype:
        if info.dtype in ("float32", "float16", "uint8"):
            raise ContractError(f"{io.source} input {spec.name!r} takes {info.dtype}, the contract says "
                                f"input.dtype {spec.dtype}", f"set contract.input.dtype: {info.dtype}")
        raise ContractError(f"{io.source} input {spec.name!r} takes {info.dtype}; medstream feeds float32, float16 "
                            "or uint8 pixels", "re-export the model with a float32 (or uint8) image input")
    if info.shape is None:
        return
    if len(info.shape) != 4:
        raise ContractError(f"{io.source} input {spec.name!r} has rank {len(info.shape)} (shape "
                            f"{_fmt(info.shape)}); medstream feeds one image as a rank-4 {spec.layout} tensor",
                            "use a model with an [N, C, H, W] or [N, H, W, C] image input")
    want = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, spec.channels)
    for got, expect, axis in zip(info.shape[1:], want, spec.layout[1:], strict=True):
        if got is not None and got != expect:
            hint = ""
            other = info.shape[3] if spec.layout == "NCHW" else info.shape[1]
            if axis == "C" and other in (1, 3):
                hint = f"; the model looks {'NHWC' if spec.layout == 'NCHW' else 'NCHW'}"
            raise ContractError(f"{io.source} input {spec.name!r} has {axis}={got} (shape {_fmt(info.shape)}), the "
                                f"contract says {expect} (layout {spec.layout}){hint}",
                                "fix contract.input (height, width, channels, layout) to match the model")


def _fmt(shape: tuple[Dim, ...] | None) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_output(contract: ModelContract, index: int, out: OutputSpec, info: TensorInfo, source: str) -> OutputSpec:
    """One output against the task; the output with its activation resolved (when its channels are known)."""
    task, n = contract.task, len(contract.classes)
    field = f"contract.outputs[{index}] ({out.name!r}, kind {out.kind}, layout {out.layout})"
    shape = info.shape

    def refuse(problem: str, fix: str) -> ContractError:
        return ContractError(f"{source}: {field}: the output has shape {_fmt(shape)}; {problem}", fix)

    if out.kind == "auxiliary" or shape is None:
        return out
    rank = len(shape)
    floating = info.dtype in ("float32", "float16", "float64")
    if out.kind in ("logits", "probabilities", "yolov8", "yolov5", "boxes", "scores", "heatmap") and not floating:
        raise refuse(f"its values are {info.dtype}, a {out.kind} output must be floating point",
                     "declare integer class maps as kind mask, labels as kind labels")

    if out.kind == "mask":
        if rank not in (3, 4) or (rank == 4 and _channel(shape, out.layout) not in (1, None)):
            raise refuse("a mask output is a class map [N, H, W] or [N, 1, H, W]",
                         "use kind logits or probabilities for per-class scores")
        return out

    if task in ("segmentation", "keypoints") or out.kind == "heatmap":
        if out.layout not in ("NCHW", "NHWC"):
            raise refuse(f"a {task} {out.kind} output is per pixel and needs layout NCHW or NHWC",
                         "set the layout to NCHW or NHWC; a [N, C] output is a classifier: set task: classification")
        if rank != 4:
            hint = " (a [N, C] output is a classifier: set task: classification)" if rank == 2 else ""
            raise refuse(f"a {task} output needs rank 4 ({out.layout}){hint}",
                         f"fix contract.outputs[{index}] or the task")
        channels = _channel(shape, out.layout)
        if out.kind == "heatmap":
            if channels is not None and channels not in (1, n):
                raise refuse(f"a class-activation map has 1 channel or one per class ({n}), not {channels}",
                             "fix classes, or declare this output kind auxiliary")
            return out
        activation = resolve_activation(out, channels, n, task)
        if channels is not None:
            expected = _channels_expected(task, activation, n)
            if channels not in expected:
                other = shape[-1] if out.layout == "NCHW" else shape[1]
                if other is not None and other in _channels_expected(task, resolve_activation(out, other, n, task), n):
                    flip = "NHWC" if out.layout == "NCHW" else "NCHW"
                    raise refuse(f"its {out.layout} channel axis has {channels}, but the model looks {flip}",
                                 f"set contract.outputs[{index}].layout: {flip}")
                raise refuse(_class_count_problem(task, out, channels, n, activation, shape),
                             _class_count_fix(task, channels))
        return out.model_copy(update={"activation": activation}) if activation != out.activation else out

    if task == "classification":
        if out.layout != "NC":
            raise refuse("a classification output is [N, C] and needs layout NC", f"set contract.outputs[{index}].layout: NC")
        if rank == 4 and shape[2] == 1 and shape[3] == 1 or rank == 2:
            channels = shape[1]
        else:
            raise refuse("a classification output is [N, C] (or [N, C, 1, 1])",
                         "a per-pixel output is a segmenter: set task: segmentation with layout NCHW")
        activation = resolve_activation(out, channels, n, task)
        if channels is not None and channels not in _channels_expected(task, activation, n):
            raise refuse(f"it has {channels} classes, the contract's classes list {n}",
                         f"list exactly {channels} classes under 'classes' (index = output channel; a single "
                         f"sigmoid channel needs 2: negative, positive)")
        return out.model_copy(update={"activation": activation}) if activation != out.activation else out

    # detection
    if out.kind in ("yolov8", "yolov5"):
        extra = 4 if out.kind == "yolov8" else 5
        if rank != 3 or out.layout not in ("NCA", "NAC"):
            raise refuse(f"a {out.kind} head is rank 3 with layout NCA ([N, {extra}+C, anchors]) or NAC "
                         f"([N, anchors, {extra}+C])", f"fix contract.outputs[{index}]")
        per = shape[1] if out.layout == "NCA" else shape[2]
        other = shape[2] if out.layout == "NCA" else shape[1]
        if per is not None and per != extra + n:
            hints = []
            if other == extra + n:
                hints.append(f"the other axis has {other}: set layout {'NAC' if out.layout == 'NCA' else 'NCA'}")
            alt = 5 if extra == 4 else 4
            if per == alt + n:
                hints.append(f"{per} = {alt} + {n} fits kind {'yolov5' if alt == 5 else 'yolov8'}")
            if per > extra:
                hints.append(f"or list {per - extra} classes")
            raise refuse(f"a {out.kind} head with {n} classes has {extra}+{n} = {extra + n} values per anchor, not "
                         f"{per}", "; ".join(hints) or "fix classes or the kind")
        return out
    if out.kind == "boxes":
        if rank != 3 or (shape[2] is not None and shape[2] != 4):
            raise refuse("an end-to-end boxes output is [N, B, 4]", "fix contract.outputs or declare it auxiliary")
        return out
    if out.kind == "scores":
        if rank == 3 and shape[2] is not None and shape[2] != n:
            raise refuse(f"per-class scores [N, B, C] need C = {n} (the classes listed)", "fix classes")
        if rank not in (2, 3):
            raise refuse("scores are [N, B] or [N, B, C]", "fix contract.outputs")
        return out
    if out.kind == "labels":
        if rank != 2:
            raise refuse("labels are [N, B] class ids", "fix contract.outputs")
        return out
    return out


def _channel(shape: tuple[Dim, ...], layout: str) -> Dim:
    return shape[1] if layout == "NCHW" else shape[-1]


def _class_count_problem(task: str, out: OutputSpec, channels: int, n: int, activation: str,
                         shape: tuple[Dim, ...]) -> str:
    if task == "keypoints":
        return f"it has {channels} heatmaps, the contract's classes list {n} point types"
    if activation == "sigmoid":
        return (f"a sigmoid output has one channel per class besides the background (classes[0]); {channels} "
                f"channel(s) need {channels + 1} classes, the contract lists {n}")
    return (f"it has {channels} channels but the contract's classes list {n}: class ids the contract does not "
            f"name would reach the overlay")


def _class_count_fix(task: str, channels: int) -> str:
    if task == "keypoints":
        return f"list {channels} classes (one per heatmap channel)"
    return (f"list {channels} classes (softmax: class 0 = background), or {channels + 1} with activation: sigmoid "
            f"(background + one per channel); see docs/MODEL_CONTRACT.md")


def _check_detection_parts(contract: ModelContract, io: ModelIO) -> None:
    """An end-to-end detector's boxes, scores and labels must agree on the number of boxes."""
    if contract.task != "detection":
        return
    counts = {}
    for out in contract.outputs:
        info = io.output(out.name)
        if out.kind in ("boxes", "scores", "labels") and info is not None and info.shape and len(info.shape) >= 2:
            counts[out.name] = info.shape[1]
    fixed = {k: v for k, v in counts.items() if v is not None}
    if len(set(fixed.values())) > 1:
        raise ContractError(f"{io.source}: the end-to-end outputs disagree on the number of boxes: {fixed}",
                            "check that contract.outputs names the boxes, scores and labels of the same head")


__all__ = ["ModelIO", "TensorInfo", "check_model_io", "model_io_from_arrays", "model_io_from_onnx",
           "model_io_from_session", "resolve_activation"]
