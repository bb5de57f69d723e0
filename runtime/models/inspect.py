"""What is inside a foreign ONNX file, and a proposed medstream contract for it with every guess marked.

``medstream inspect MODEL.onnx`` (cli/commands/inspect.py) prints what :func:`inspect_model` finds: the
graph's inputs and outputs (names, dtypes, shapes with the dynamic axes marked), the opsets, the op types
with their counts, the final activation in front of each output, any embedded medstream contract, and a
proposed contract as YAML (:func:`proposal_yaml`).

The proposal is made from the graph alone, so most of it is inference: the task from the output shapes
(``[N,C,H,W]`` segmentation, ``[N,C]`` classification, ``[N,4+C,A]`` a YOLOv8 head, ``[N,A,5+C]`` a YOLOv5
head, boxes + scores (+ labels) an end-to-end detector, lower-resolution maps keypoint heatmaps), the
activation from the last op before the output (``Softmax``, ``Sigmoid``, or none: raw logits), the input
size, layout and channels from the input shape. What the file cannot tell (class names, the training
normalisation, colour order, thresholds) is filled with the common choice. Every value that is inference
rather than a fact read from the file carries a ``# GUESS: ...`` comment saying what it rests on, so a user
confirms or corrects each before the model runs on a patient.

The proposal is checked as a run checks a contract at load (:func:`medstream.runtime.contract.resolve_contract`
for the schema, :func:`medstream.runtime.decoders.validate.check_model_io` against the graph) before it is
shown: a proposal that medstream itself would refuse is reported as a problem, never written.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medstream.runtime.contract import ModelContract, resolve_contract
from medstream.runtime.errors import MedstreamError, ModelLoadError

#: Ops that move or relabel values without changing what they mean: looked through to find the activation.
_PASSTHROUGH_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Cast", "Resize",
                    "Upsample", "Slice", "Gather", "Concat"}
#: Final ops whose presence decides what an output holds.
_ACTIVATIONS = {"Softmax": "softmax", "LogSoftmax": "softmax", "Sigmoid": "sigmoid", "ArgMax": "argmax",
                "TopK": "topk", "NonMaxSuppression": "nms"}
#: Overlay colours (RGB) for proposed classes after background.
_PALETTE = ((220, 40, 40), (40, 220, 40), (40, 120, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220),
            (255, 120, 0), (150, 255, 150), (255, 150, 200), (120, 80, 40), (180, 180, 255), (128, 128, 0))
#: YOLO heads predict on strides 8, 16 and 32: anchor-free (v8/v11) heads have one prediction per cell,
#: anchor-based (v5/v7) three: the anchor count ``A`` tells the two apart when the input size is fixed.
_YOLO_STRIDES = (8, 16, 32)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

Dim = int | str  # a fixed size, or the name of a dynamic axis ("?" when the file gives none)


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, element type and shape (ints fixed, strings dynamic)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None  # None: the file records no shape at all

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape or ()) if not isinstance(d, int))

    def dim(self, i: int) -> int | None:
        """Axis ``i``'s fixed size, ``None`` when dynamic or unknown."""
        if self.shape is None or not -len(self.shape) <= i < len(self.shape):
            return None
        d = self.shape[i]
        return d if isinstance(d, int) else None

    def shape_text(self) -> str:
        """``[batch?, 3, 224, 224]``: a dynamic axis is its name with ``?`` (a bare ``?`` when unnamed)."""
        if self.shape is None:
            return "(no shape recorded)"
        return "[" + ", ".join(str(d) if isinstance(d, int) else (f"{d}?" if d != "?" else "?") for d in self.shape) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape) if self.shape is not None else None,
                "dynamic_axes": list(self.dynamic_axes)}


@dataclass
class Proposal:
    """A proposed contract: the mapping, and the GUESS note of each value that was inferred.

    ``guesses`` maps a path into ``data`` (``("outputs", 0, "activation")``) to the reason it is a guess.
    ``notes`` are remarks for the header (what medstream cannot use, what to check first).
    """

    data: dict[str, Any]
    guesses: dict[tuple[Any, ...], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    task_reason: str = ""

    def guess(self, path: tuple[Any, ...], reason: str) -> None:
        self.guesses[path] = reason


@dataclass
class ModelReport:
    """Everything :func:`inspect_model` found in one ONNX file."""

    path: Path
    size_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: Counter
    activations: dict[str, str]  # output name -> final activation op found in front of it ("" when none)
    contract: ModelContract | None
    contract_error: str | None
    proposal: Proposal | None
    proposal_error: str | None

    @property
    def opset(self) -> int | None:
        return self.opsets.get("ai.onnx")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.path), "size_bytes": self.size_bytes, "ir_version": self.ir_version,
            "producer": self.producer, "opsets": self.opsets,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "ops": dict(self.ops.most_common()), "final_activations": self.activations,
            "embedded_contract": self.contract.model_dump(mode="json") if self.contract else None,
            "embedded_contract_error": self.contract_error,
            "proposed_contract": self.proposal.data if self.proposal else None,
            "guesses": {".".join(str(p) for p in k): v for k, v in self.proposal.guesses.items()} if self.proposal else {},
            "proposal_error": self.proposal_error,
        }


# ------------------------------------------------------------------------------------------- reading
def inspect_model(path: str | Path) -> ModelReport:
    """Read ``path``'s graph and embedded contract and propose a contract for it.

    Raises
    ------
    ModelLoadError
        The file is missing, empty, not ONNX or cannot be parsed (named, with the fix).
    """
    import onnx

    from medstream.runtime.decoders.validate import check_model_io, model_io_from_onnx
    from medstream.runtime.models.loader import check_model_file, read_model_contract

    file = Path(path)
    check_model_file(file)
    if file.suffix.lower() != ".onnx":
        raise ModelLoadError(f"{file} is not an ONNX file; inspect reads ONNX graphs",
                             "pass the .onnx model (an engine's manifest beside it is plain JSON)")
    try:
        proto = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelLoadError(f"model file {file} cannot be read as ONNX: {str(exc)[:200]}",
                             "the file is corrupt, truncated or not ONNX; restore a good copy") from None
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [_tensor_info(v) for v in graph.input if v.name not in initializers]
    outputs = [_tensor_info(v) for v in graph.output]
    producers = {out: node for node in graph.node for out in node.output}
    activations = {o.name: _final_activation(o.name, producers) for o in outputs}
    contract, contract_error = None, None
    try:
        contract = read_model_contract(file, None, required=False)
    except MedstreamError as exc:  # a malformed embedded contract is a finding here, not a stop
        contract_error = str(exc)
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import}
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p) or "unknown"
    report = ModelReport(
        path=file, size_bytes=file.stat().st_size, ir_version=int(proto.ir_version), producer=producer,
        opsets=opsets, inputs=inputs, outputs=outputs,
        ops=Counter((f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in graph.node),
        activations=activations, contract=contract, contract_error=contract_error, proposal=None, proposal_error=None)
    try:
        report.proposal = propose_contract(report)
        # medstream's own validation, as a run makes it: the schema, then the contract against the graph
        check_model_io(resolve_contract(None, report.proposal.data, str(file)), model_io_from_onnx(proto))
    except MedstreamError as exc:
        report.proposal, report.proposal_error = None, str(exc)
    return report


def _tensor_info(value: Any) -> TensorInfo:
    import onnx

    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
    except (KeyError, TypeError, ValueError):
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    if not tensor.HasField("shape"):
        return TensorInfo(value.name, dtype, None)
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorInfo(value.name, dtype, tuple(dims))


def _final_activation(name: str, producers: dict[str, Any], depth: int = 8) -> str:
    """The op (``Softmax``, ``Sigmoid``, ``ArgMax``...) that makes ``name``, looking through reshapes; ``""`` if none."""
    node = producers.get(name)
    while node is not None and depth > 0:
        if node.op_type in _ACTIVATIONS:
            return node.op_type
        if node.op_type not in _PASSTHROUGH_OPS or not node.input:
            return ""
        node = producers.get(node.input[0])
        depth -= 1
    return ""


# ------------------------------------------------------------------------------------------- proposal
def _model_id(path: Path) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "model"
    return text[:128]


def _pick_image_input(inputs: list[TensorInfo]) -> TensorInfo:
    images = [t for t in inputs if t.rank == 4]
    if not images:
        shapes = ", ".join(f"{t.name} {t.shape_text()}" for t in inputs) or "none"
        raise ModelLoadError(f"the model has no 4-D image input (inputs: {shapes}); medstream feeds one image "
                             "tensor [N, C, H, W] or [N, H, W, C]",
                             "export the model with an image input of rank 4 (batch, channels, height, width)")
    return images[0]


def _input_fields(p: Proposal, inp: TensorInfo, task: str) -> None:
    """``input``: name, layout, channels, colour order, size, dtype, normalisation, dynamic axes, resize."""
    c1, c3 = inp.dim(1), inp.dim(3)
    if c1 in (1, 3):
        layout, channels, layout_sure = "NCHW", c1, True
    elif c3 in (1, 3):
        layout, channels, layout_sure = "NHWC", c3, True
    else:
        layout, channels, layout_sure = "NCHW", 3, False
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    height, width = inp.dim(h_axis), inp.dim(w_axis)
    dynamic_spatial = height is None or width is None
    default_side = {"detection": 640, "classification": 224}.get(task, 256)
    spec: dict[str, Any] = {"name": inp.name, "layout": layout, "channels": channels,
                            "color_order": "gray" if channels == 1 else "rgb",
                            "height": height or default_side, "width": width or default_side,
                            "dtype": inp.dtype if inp.dtype in ("float32", "float16", "uint8") else "float32"}
    if not layout_sure:
        p.guess(("input", "layout"), f"the input shape {inp.shape_text()} has no axis of 1 or 3 channels; NCHW is "
                                     "the PyTorch default")
        p.guess(("input", "channels"), "channel count not fixed in the file")
    if channels == 3:
        p.guess(("input", "color_order"), "RGB is what most training code (PIL, torchvision) feeds; OpenCV-based "
                                          "training feeds bgr")
    if dynamic_spatial:
        p.guess(("input", "height"), f"the input's height is dynamic ({inp.shape_text()}): frames are resized to "
                                     "this; use the size the model was trained at")
        p.guess(("input", "width"), "dynamic in the file, as height")
    if spec["dtype"] != inp.dtype:
        p.notes.append(f"input {inp.name} is {inp.dtype}; medstream feeds float32, float16 or uint8")
    if spec["dtype"] == "uint8":
        spec["normalization"] = {"kind": "scale_mean_std", "scale": 1.0, "mean": [0.0], "std": [1.0]}
        p.guess(("input", "normalization"), "a uint8 input takes raw pixels; the graph normalises them itself")
    elif task == "detection":
        spec["normalization"] = {"kind": "scale_mean_std", "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0]}
        p.guess(("input", "normalization"), "pixels / 255, as YOLO exports expect; the file does not record the "
                                            "training normalisation: check the author's preprocessing")
    elif channels == 3:
        spec["normalization"] = {"kind": "scale_mean_std", "scale": 1.0 / 255.0, "mean": list(_IMAGENET_MEAN),
                                 "std": list(_IMAGENET_STD)}
        p.guess(("input", "normalization"), "ImageNet mean/std (the torchvision default); the file does not record "
                                            "the training normalisation: check the author's preprocessing")
    else:
        spec["normalization"] = {"kind": "scale_mean_std", "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0]}
        p.guess(("input", "normalization"), "pixels / 255 to 0..1; the file does not record the training "
                                            "normalisation: check the author's preprocessing")
    spec["dynamic_batch"] = inp.dim(0) is None
    spec["dynamic_spatial"] = dynamic_spatial
    if task == "detection":
        spec["resize"], spec["pad_value"] = "letterbox", 114
        p.guess(("input", "resize"), "YOLO-style detectors are trained on letterboxed images (aspect ratio kept)")
        p.guess(("input", "pad_value"), "114 is the Ultralytics letterbox grey")
    p.data["input"] = spec


def _classes(p: Proposal, n: int, *, background: bool, reason: str, names: str = "class") -> None:
    classes = []
    for i in range(n):
        if background and i == 0:
            classes.append({"name": "background", "color": [0, 0, 0]})
        else:
            classes.append({"name": f"{names}_{i}", "color": list(_PALETTE[(i - int(background)) % len(_PALETTE)])})
    p.data["classes"] = classes
    p.guess(("classes",), reason)


def _spatial(inp: TensorInfo) -> tuple[int | None, int | None]:
    if inp.dim(1) not in (1, 3) and inp.dim(3) in (1, 3):
        return inp.dim(1), inp.dim(2)
    return inp.dim(2), inp.dim(3)


def _yolo_anchor_counts(h: int | None, w: int | None) -> tuple[int | None, int | None]:
    """Predictions per image of an anchor-free (v8) and a 3-anchor (v5) head at input ``h x w``."""
    if not h or not w:
        return None, None
    cells = sum((h // s) * (w // s) for s in _YOLO_STRIDES)
    return cells, 3 * cells


def propose_contract(report: ModelReport) -> Proposal:
    """A contract for ``report``'s model from its graph alone, each inferred value marked (see module docstring).

    Raises
    ------
    ModelLoadError
        The model has no image input or no output medstream can read.
    """
    inp = _pick_image_input(report.inputs)
    p = Proposal(data={"model_id": _model_id(report.path), "modality": "unknown"})
    in_h, in_w = _spatial(inp)
    outs = report.outputs
    task, outputs = _guess_outputs(p, outs, report.activations, in_h, in_w)
    p.data = {"contract_version": 2, "task": task, **p.data}
    p.guesses.setdefault(("task",), f"from the output shapes: {p.task_reason}")
    _input_fields(p, inp, task)
    p.data["outputs"] = outputs
    if len(report.inputs) > 1:
        others = [t.name for t in report.inputs if t.name != inp.name]
        p.notes.append(f"the model has other inputs ({', '.join(others)}); medstream feeds only {inp.name}, so it "
                       "cannot run as is (re-export with the image as the only input)")
    p.data["provenance"] = {"exporter": f"{report.producer} (read from the ONNX file by medstream inspect)"}
    order = ("contract_version", "task", "model_id", "modality", "input", "outputs", "classes", "decode", "provenance")
    p.data = {k: p.data[k] for k in order if k in p.data}
    p.data["outputs"] = [{k: o[k] for k in ("name", "kind", "layout", "activation") if k in o} for o in outputs]
    return p


def _guess_outputs(p: Proposal, outs: list[TensorInfo], acts: dict[str, str], in_h: int | None,
                   in_w: int | None) -> tuple[str, list[dict[str, Any]]]:
    """The task and the ``outputs`` list; fills ``classes`` and ``decode`` of ``p``."""
    if not outs:
        raise ModelLoadError("the model has no outputs", "check the export")
    # an end-to-end detector: boxes [N, B, 4] beside scores [N, B] (and labels [N, B])
    boxes = next((o for o in outs if o.rank == 3 and o.dim(2) == 4), None)
    if boxes is not None and len(outs) >= 2:
        return _end_to_end(p, outs, boxes)
    main = outs[0]
    rest = [{"name": o.name, "kind": "auxiliary"} for o in outs[1:]]
    for i, _ in enumerate(rest, start=1):
        p.guess(("outputs", i, "kind"), "an extra output: taken as auxiliary (ignored); the first output is the answer")
    act = acts.get(main.name, "")
    rank = main.rank
    if rank == 2:
        return "classification", [_classifier(p, main, act)] + rest
    if rank == 3 and main.dtype.startswith(("int", "uint")) or act == "ArgMax" and rank in (3, 4):
        p.task_reason = f"{main.name} is an integer map {main.shape_text()} (ArgMax in the graph): already a class map"
        _classes(p, 2, background=True, reason="a class map does not say how many classes it holds: list every "
                                               "class id the model writes, in order, 0 first")
        return "segmentation", [{"name": main.name, "kind": "mask", "layout": "NCHW"}] + rest
    if rank == 3:
        return "detection", [_yolo_head(p, main, in_h, in_w)] + rest
    if rank == 4:
        return _map_output(p, main, act, in_h, in_w, rest)
    raise ModelLoadError(f"output {main.name} has shape {main.shape_text()}; medstream reads [N,C,H,W] maps, [N,C] "
                         "scores, YOLO heads [N,4+C,A]/[N,A,5+C] or boxes + scores",
                         "check that this is the model's final output (Netron shows the graph)")


def _classifier(p: Proposal, out: TensorInfo, act: str) -> dict[str, Any]:
    n = out.dim(1)
    p.task_reason = f"{out.name} is {out.shape_text()}: one score per class per image"
    spec: dict[str, Any] = {"name": out.name, "layout": "NC"}
    if act == "Softmax":
        spec.update(kind="probabilities", activation="softmax")
    elif act == "Sigmoid":
        spec.update(kind="probabilities", activation="sigmoid")
        p.guess(("outputs", 0, "activation"), "a Sigmoid ends the graph: independent (multi-label) classes")
    else:
        spec.update(kind="logits", activation="softmax")
        p.guess(("outputs", 0, "kind"), "no Softmax/Sigmoid ends the graph: raw logits")
        p.guess(("outputs", 0, "activation"), "exclusive classes (softmax); multi-label models use sigmoid")
    _classes(p, n or 2, background=False, reason=f"{n or '?'} classes from the output's {n or '?'} scores; the names "
             "are placeholders: write the real ones in the model's order")
    p.data["decode"] = {"top_k": min(3, n or 3)}
    return spec


def _map_output(p: Proposal, out: TensorInfo, act: str, in_h: int | None, in_w: int | None,
                rest: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A 4-D output: a segmentation map, or keypoint heatmaps when at a lower resolution than the input."""
    c1, c3 = out.dim(1), out.dim(3)
    layout = "NCHW"
    if c1 is not None and c3 is not None and c3 < c1 and c3 <= 64 and (out.dim(1) == in_h or out.dim(2) == in_w):
        layout = "NHWC"
        p.guess(("outputs", 0, "layout"), f"{out.shape_text()}: the last axis is the smallest and the middle ones "
                                          "match the input size: channels last")
    channels = c1 if layout == "NCHW" else c3
    oh, ow = (out.dim(2), out.dim(3)) if layout == "NCHW" else (out.dim(1), out.dim(2))
    lower = bool(in_h and oh and oh < in_h and act not in ("Softmax", "Sigmoid"))
    spec: dict[str, Any] = {"name": out.name, "layout": layout}
    if lower:
        p.task_reason = (f"{out.name} is {out.shape_text()} at 1/{in_h // oh} of the input with no Softmax/Sigmoid: "
                         "keypoint heatmaps (one map per point)")
        p.guess(("task",), "maps smaller than the input and no activation: heatmaps; a segmenter with its own "
                           "upsampling outside the graph would look the same (then: segmentation)")
        spec.update(kind="logits", activation="sigmoid")
        p.guess(("outputs", 0, "activation"), "heatmap values are taken through a sigmoid before the point "
                                              "threshold; use none for heatmaps already in 0..1")
        _classes(p, channels or 1, background=False, names="point",
                 reason=f"{channels or '?'} points, one per heatmap channel; the names are placeholders")
        return "keypoints", [spec] + rest
    p.task_reason = f"{out.name} is {out.shape_text()}: a map per class at the input's resolution"
    if channels == 1:
        spec.update(kind="probabilities" if act == "Sigmoid" else "logits", activation="sigmoid")
        if act != "Sigmoid":
            p.guess(("outputs", 0, "kind"), "one channel and no Sigmoid ends the graph: raw logits (sigmoid applied "
                                            "by medstream)")
        _classes(p, 2, background=True, reason="one output channel: a binary segmenter, background + one structure "
                 "(channel 0 is the structure); name it")
        p.data["decode"] = {"threshold": 0.5}
        p.guess(("decode", "threshold"), "probability above which a pixel is the structure: 0.5 unless the author "
                                         "tuned another")
        return "segmentation", [spec] + rest
    if act == "Sigmoid":
        spec.update(kind="probabilities", activation="sigmoid")
        p.guess(("outputs", 0, "activation"), "a Sigmoid ends the graph: each channel an independent structure "
                                              "(multi-label), no background channel")
        _classes(p, (channels or 1) + 1, background=True,
                 reason=f"background + one class per sigmoid channel ({channels or '?'}); the names are placeholders")
        p.data["decode"] = {"threshold": 0.5}
        p.guess(("decode", "threshold"), "one probability threshold for every channel (or a list, one per channel)")
        return "segmentation", [spec] + rest
    if act == "Softmax":
        spec.update(kind="probabilities", activation="softmax")
    else:
        spec.update(kind="logits", activation="softmax")
        p.guess(("outputs", 0, "kind"), "no Softmax/Sigmoid ends the graph: raw logits")
        p.guess(("outputs", 0, "activation"), f"{channels or '?'} channels taken as exclusive classes (argmax); "
                                              "use sigmoid if the structures may overlap")
    _classes(p, channels or 2, background=True, reason=f"{channels or '?'} classes from the output's channels; "
             "channel 0 is taken as background; the names are placeholders: write the real ones in channel order")
    return "segmentation", [spec] + rest


def _yolo_head(p: Proposal, out: TensorInfo, in_h: int | None, in_w: int | None) -> dict[str, Any]:
    a1, a2 = out.dim(1), out.dim(2)
    v8_cells, v5_cells = _yolo_anchor_counts(in_h, in_w)
    if a1 is not None and a2 is not None and a1 < a2:
        kind, layout, classes = "yolov8", "NCA", a1 - 4
        why = f"{out.shape_text()}: [N, 4+C, A] with {a1 - 4} classes, as Ultralytics YOLOv8/v11 export"
        if v8_cells and a2 != v8_cells:
            why += f" (expected {v8_cells} predictions at this input size, the file has {a2})"
    else:
        kind, layout = "yolov5", "NAC"
        classes = (a2 or 6) - 5
        why = f"{out.shape_text()}: [N, A, 5+C] with {classes} classes (box, objectness, class scores), as YOLOv5 export"
        if a1 is not None and v8_cells and a1 == v8_cells:
            kind, classes = "yolov8", (a2 or 5) - 4
            why = (f"{out.shape_text()}: {a1} predictions is one per cell at strides 8/16/32 (anchor-free): a YOLOv8 "
                   f"head transposed, [N, A, 4+C] with {classes} classes")
        elif a1 is not None and v5_cells and a1 == v5_cells:
            why += f"; {a1} predictions is 3 anchors per cell at strides 8/16/32"
    p.task_reason = why
    p.guess(("outputs", 0, "kind"), f"{kind} head layout: see task")
    p.data["decode"] = {"score_threshold": 0.25, "iou_threshold": 0.45, "box_format": "cxcywh"}
    p.guess(("decode", "score_threshold"), "Ultralytics' default confidence")
    p.guess(("decode", "box_format"), "YOLO heads give centre x, centre y, width, height in input pixels")
    _classes(p, max(classes, 1), background=False, reason=f"{classes} classes from the head's width; the names are "
             "placeholders: write the real ones in the model's order")
    return {"name": out.name, "kind": kind, "layout": layout}


def _end_to_end(p: Proposal, outs: list[TensorInfo], boxes: TensorInfo) -> tuple[str, list[dict[str, Any]]]:
    b = boxes.shape[1] if boxes.shape else "?"
    specs: list[dict[str, Any]] = []
    n_classes = None
    for o in outs:
        if o is boxes:
            specs.append({"name": o.name, "kind": "boxes", "layout": "NB4"})
        elif o.rank == 3 and o.shape and o.shape[1] == b and o.dim(2):
            specs.append({"name": o.name, "kind": "scores", "layout": "NBC"})
            n_classes = o.dim(2)
        elif o.rank == 2 and o.shape and o.shape[1] == b:
            is_label = o.dtype.startswith(("int", "uint")) or "label" in o.name.lower() or "class" in o.name.lower()
            specs.append({"name": o.name, "kind": "labels" if is_label else "scores", "layout": "NB"})
        else:
            specs.append({"name": o.name, "kind": "auxiliary"})
    if not any(s["kind"] == "scores" for s in specs):
        raise ModelLoadError(f"output {boxes.name} {boxes.shape_text()} looks like boxes, but no output holds their "
                             "scores ([N, B] or [N, B, C])", "check the export (an end-to-end detector has boxes and scores)")
    p.task_reason = (f"{boxes.name} is {boxes.shape_text()} (a box per detection) beside per-detection scores: an "
                     "end-to-end detector with NMS in the graph")
    for i in range(len(specs)):
        p.guess(("outputs", i, "kind"), "from its shape and name next to the boxes output")
    p.data["decode"] = {"score_threshold": 0.25, "box_format": "xyxy"}
    p.guess(("decode", "box_format"), "end-to-end exports usually give x0, y0, x1, y1 in input pixels "
                                      "(set box_normalized: true for 0..1)")
    p.guess(("decode", "score_threshold"), "the usual default confidence")
    _classes(p, n_classes or 1, background=False, reason="the class count is not in the labels output's shape: "
             "list every class id the model writes, in order, 0 first")
    return "detection", specs


# ------------------------------------------------------------------------------------------- YAML
def proposal_yaml(proposal: Proposal, model: str | Path, *, header: bool = True) -> str:
    """The proposal as YAML for ``--contract`` / ``medstream contract embed``, each guess with ``# GUESS: ...``."""
    lines: list[str] = []
    if header:
        n = len(proposal.guesses)
        lines += [f"# medstream contract proposed by 'medstream inspect' for {Path(model).name}",
                  f"# {n} value(s) below are marked '# GUESS:': inferred from the graph, not read from it.",
                  "# Confirm or correct each one (class names, normalisation, thresholds) before a patient sees",
                  "# this model's output; then 'medstream contract embed MODEL.onnx --contract THIS.yaml --out M2.onnx'",
                  "# or pass --contract THIS.yaml (keys: docs/MODEL_CONTRACT.md)."]
        lines += [f"# NOTE: {note}" for note in proposal.notes]
    lines += _emit(proposal.data, 0, (), proposal.guesses)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    import yaml

    text = yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()
    return text[1:-1]  # "[x]" -> "x", with YAML's own quoting and float spelling


def _flow(value: list[Any]) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def _emit(node: dict[str, Any], indent: int, path: tuple[Any, ...], guesses: dict[tuple[Any, ...], str],
          first_prefix: str | None = None) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for i, (key, value) in enumerate(node.items()):
        here = (*path, key)
        note = guesses.get(here)
        comment = f"  # GUESS: {note}" if note else ""
        lead = first_prefix if (first_prefix is not None and i == 0) else pad
        if isinstance(value, dict):
            lines.append(f"{lead}{key}:{comment}")
            lines += _emit(value, indent + 2, here, guesses)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{lead}{key}:{comment}")
            for j, item in enumerate(value):
                lines += _emit(item, indent + 4, (*here, j), guesses, first_prefix=" " * (indent + 2) + "- ")
        elif isinstance(value, list):
            lines.append(f"{lead}{key}: {_flow(value)}{comment}")
        else:
            lines.append(f"{lead}{key}: {_scalar(value)}{comment}")
    return lines


# ------------------------------------------------------------------------------------------- text
def format_report(report: ModelReport, *, show_proposal: bool = True) -> str:
    """The human-readable report ``medstream inspect`` prints."""
    kib = report.size_bytes / 1024
    opsets = ", ".join(f"{d} {v}" for d, v in sorted(report.opsets.items()))
    lines = [f"model:     {report.path} ({kib:,.0f} KiB)",
             f"producer:  {report.producer}; ONNX IR {report.ir_version}; opsets: {opsets}",
             "inputs:    (a dynamic axis is shown as name?)"]
    width = max([len(t.name) for t in report.inputs + report.outputs] + [4])
    lines += [f"  {t.name:<{width}}  {t.dtype:<8} {t.shape_text()}" for t in report.inputs]
    lines.append("outputs:")
    for t in report.outputs:
        act = report.activations.get(t.name)
        lines.append(f"  {t.name:<{width}}  {t.dtype:<8} {t.shape_text()}" + (f"   <- {act}" if act else ""))
    total = sum(report.ops.values())
    lines.append(f"ops:       {total} nodes, {len(report.ops)} types: "
                 + ", ".join(f"{op} {n}" for op, n in report.ops.most_common()))
    if report.contract is not None:
        c = report.contract
        lines.append(f"contract:  embedded, version {c.contract_version}: {c.task} model {c.model_id!r}, "
                     f"classes {', '.join(c.class_names)} (medstream contract show {report.path})")
    elif report.contract_error:
        lines.append(f"contract:  embedded but INVALID: {report.contract_error}")
    else:
        lines.append("contract:  none embedded")
    if show_proposal:
        if report.proposal is not None:
            lines += ["", f"proposed contract ({len(report.proposal.guesses)} guesses marked '# GUESS:'; "
                          f"write it with: medstream inspect {report.path} --out contract.yaml):", "",
                      proposal_yaml(report.proposal, report.path).rstrip()]
        else:
            lines += ["", f"no contract can be proposed: {report.proposal_error}"]
    return "\n".join(lines)


__all__ = ["ModelReport", "Proposal", "TensorInfo", "format_report", "inspect_model", "propose_contract",
           "proposal_yaml"]
