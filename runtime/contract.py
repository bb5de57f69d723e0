"""The model contract: everything the runtime needs to run a model correctly, stored inside the model.

A contract travels in the ONNX file's ``metadata_props`` under the key ``medstream.contract`` as a
JSON document (with ``medstream.contract_version`` beside it), so a model file is self-describing:
the runtime configures preprocessing (size, layout, channels, normalization) and postprocessing
(class names, colours, output meaning) from it, and refuses a frame that cannot match it.

A model without a contract (somebody else's ONNX) still runs when the user supplies the missing
facts in config (``contract:`` section); :func:`resolve_contract` names exactly which ones are missing.

Version 2 (issue 13) adds what third-party models need: the tasks ``classification``, ``detection`` and
``keypoints`` beside ``segmentation``; output kinds for YOLO heads and end-to-end detectors; an output
``activation`` (softmax or sigmoid); resize modes (stretch, letterbox, centre crop), per-image
standardisation and value ranges; and a ``decode`` section (thresholds, NMS, top-k). Version 1 documents
load unchanged. A contract is stamped with the lowest version that expresses it (:func:`needed_version`),
so a model that uses no version-2 field still runs on an older medstream. Checking a contract against
the model's actual outputs (ranks, channel counts, layouts) is :mod:`medstream.runtime.decoders.validate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medstream.runtime.errors import ContractError

CONTRACT_KEY = "medstream.contract"
CONTRACT_VERSION_KEY = "medstream.contract_version"
CONTRACT_VERSION = 2
"""The newest contract version this medstream reads (and writes when a version-2 field is used)."""

TASKS = ("segmentation", "classification", "detection", "keypoints")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Strict):
    """How uint8/uint16 pixels become model input.

    ``scale_mean_std``: ``x = (pixel * scale - mean[c]) / std[c]`` (ImageNet style, or scale=1/255,
    mean 0, std 1). ``window``: ``x = clip((pixel - low) / (high - low), 0, 1)`` (a display window,
    common for fluoroscopy and CT). Version 2: ``range``: ``x = value_range[0] + pixel / 255 *
    (value_range[1] - value_range[0])`` (e.g. ``[-1, 1]``); ``per_image``: per-image standardisation,
    ``x = (pixel - mean(image)) / max(std(image), 1 / sqrt(N))`` over the whole resized image (all
    channels, N values; TensorFlow's ``per_image_standardization``), or per channel with ``per_channel``.
    """

    kind: Literal["scale_mean_std", "window", "range", "per_image"] = "scale_mean_std"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    low: float = 0.0
    high: float = 255.0
    value_range: tuple[float, float] = (0.0, 1.0)
    per_channel: bool = False

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v

    @model_validator(mode="after")
    def _window_order(self) -> Normalization:
        if self.kind == "window" and not self.high > self.low:
            raise ValueError("window needs high > low")
        if self.kind == "range" and not self.value_range[1] != self.value_range[0]:
            raise ValueError("range needs value_range [low, high] with low != high")
        return self


class InputSpec(_Strict):
    """The model's image input."""

    name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channels: Literal[1, 3] = 1
    color_order: Literal["gray", "rgb", "bgr"] = "gray"
    height: int = Field(gt=0, le=8192)
    width: int = Field(gt=0, le=8192)
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    normalization: Normalization = Normalization()
    dynamic_batch: bool = False
    dynamic_spatial: bool = False
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    """How a frame of another size becomes ``height x width`` (version 2). ``stretch``: resized to fill it
    (aspect ratio not kept; v1 behaviour). ``letterbox``: scaled to fit with the aspect ratio kept, centred,
    the rest filled with ``pad_value`` (YOLO-style detectors). ``center_crop``: the largest centred region of
    the model's aspect ratio is cut out and resized (classifiers trained on centre crops)."""
    pad_value: int = Field(default=0, ge=0, le=255)
    """Pixel value of the letterbox border, before normalisation (YOLO exports use 114)."""

    @model_validator(mode="after")
    def _channels_match_colour(self) -> InputSpec:
        if (self.channels == 1) != (self.color_order == "gray"):
            raise ValueError(f"channels={self.channels} does not fit color_order={self.color_order!r}")
        return self


OutputKind = Literal["logits", "probabilities", "mask", "boxes", "scores", "labels", "yolov8", "yolov5",
                     "heatmap", "auxiliary"]
OutputLayout = Literal["NCHW", "NHWC", "NC", "N", "NCA", "NAC", "NB4", "NB", "NBC"]

#: Output kinds that carry the task's answer (the others are its parts or ignored).
ANSWER_KINDS = ("logits", "probabilities", "mask", "yolov8", "yolov5", "boxes")


class OutputSpec(_Strict):
    """One model output and what it means.

    ``kind``: ``logits``/``probabilities`` (per pixel for segmentation and keypoints, per image for
    classification), ``mask`` (already a class map), ``yolov8`` (raw head ``[N, 4+C, A]``: box ``cx, cy, w,
    h`` then C class scores per anchor), ``yolov5`` (raw head ``[N, A, 5+C]``: box, objectness, C class
    scores), ``boxes``/``scores``/``labels`` (an end-to-end detector with NMS in the graph: ``[N, B, 4]``,
    ``[N, B]`` or ``[N, B, C]``, ``[N, B]``), ``heatmap`` (a classifier's class-activation or feature map
    ``[N, K, h, w]``, published coarse), ``auxiliary`` (ignored; a model must have an answer besides it).

    ``layout``: where the axes are. Left out, it follows the task and kind (:func:`default_layout`):
    segmentation/keypoints ``NCHW``, classification ``NC``, ``yolov8`` ``NCA``, ``yolov5`` ``NAC``, ``boxes``
    ``NB4``, ``scores``/``labels`` ``NB``. ``activation``: ``softmax`` (classes exclusive: argmax),
    ``sigmoid`` (each channel independent, thresholded), ``none`` (values used as they are); ``auto`` is
    softmax, except that an output with one channel fewer than ``classes`` (a background class with no
    channel of its own, e.g. a 1-channel binary segmenter) is sigmoid.
    """

    name: str
    kind: OutputKind = "logits"
    layout: OutputLayout = "NCHW"
    activation: Literal["auto", "softmax", "sigmoid", "none"] = "auto"


def default_layout(task: str, kind: str) -> str:
    """The layout an output has when the contract leaves it out (see :class:`OutputSpec`)."""
    by_kind = {"yolov8": "NCA", "yolov5": "NAC", "boxes": "NB4", "scores": "NB", "labels": "NB"}
    if kind in by_kind:
        return by_kind[kind]
    if task == "classification" and kind in ("logits", "probabilities"):
        return "NC"
    return "NCHW"


class DecodeSpec(_Strict):
    """How outputs become an answer (version 2): thresholds, non-maximum suppression, top-k.

    ``threshold``: the probability above which a sigmoid channel is foreground (one value, or one per
    channel). ``score_threshold``/``iou_threshold``/``max_detections``/``class_agnostic_nms``: detection
    (NMS by OpenCV's ``cv2.dnn.NMSBoxesBatched``, or ``NMSBoxes`` when class-agnostic). ``box_format``: the
    detector's boxes, ``cxcywh`` (YOLO heads' default) or ``xyxy`` (end-to-end default); ``box_normalized``:
    boxes are in 0..1 of the model input rather than its pixels. ``top_k``: classes listed per
    classification overlay. ``point_threshold``: a keypoint heatmap peak below this probability is no
    point. ``heatmap``: publish a coarse probability/activation map (at most ``heatmap_max_side`` pixels a
    side) with the overlay.
    """

    threshold: float | tuple[float, ...] = 0.5
    top_k: int = Field(default=3, ge=1, le=256)
    score_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=0.45, gt=0.0, le=1.0)
    max_detections: int = Field(default=100, ge=1, le=1000)
    class_agnostic_nms: bool = False
    box_format: Literal["cxcywh", "xyxy"] | None = None
    box_normalized: bool = False
    point_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    heatmap: bool = False
    heatmap_max_side: int = Field(default=64, ge=4, le=256)

    @field_validator("threshold")
    @classmethod
    def _probability(cls, v: float | tuple[float, ...]) -> float | tuple[float, ...]:
        values = v if isinstance(v, tuple) else (v,)
        if not values or any(not 0.0 < t < 1.0 for t in values):
            raise ValueError("thresholds are probabilities strictly between 0 and 1")
        return v

    def thresholds(self, n: int) -> tuple[float, ...]:
        """One threshold per channel (a single value applies to every channel)."""
        if isinstance(self.threshold, tuple):
            if len(self.threshold) != n:
                raise ContractError(f"decode.threshold lists {len(self.threshold)} values for {n} sigmoid channels",
                                    "give one threshold, or one per channel, in the contract's decode section")
            return self.threshold
        return (self.threshold,) * n


class ClassSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    color: tuple[int, int, int] = (255, 255, 255)

    @field_validator("color")
    @classmethod
    def _rgb_range(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError("colour components must be 0..255")
        return v


class Provenance(_Strict):
    """Where a model came from: enough to reproduce it or to reject it in an audit."""

    model_config = ConfigDict(extra="allow", frozen=True)
    training_data: str = "unknown"
    seed: int | None = None
    git_commit: str = "unknown"
    date: str = "unknown"
    exporter: str = "unknown"


class ModelContract(_Strict):
    """The medstream model contract, versions 1 and 2 (see docs/MODEL_CONTRACT.md)."""

    contract_version: int = 1
    task: Literal["segmentation", "detection", "classification", "keypoints"] = "segmentation"
    model_id: str = Field(min_length=1, max_length=128)
    modality: str = "unknown"
    input: InputSpec
    outputs: tuple[OutputSpec, ...] = Field(min_length=1)
    classes: tuple[ClassSpec, ...] = Field(min_length=1)
    decode: DecodeSpec = DecodeSpec()
    provenance: Provenance = Provenance()

    @model_validator(mode="before")
    @classmethod
    def _fill_layouts_and_version(cls, data: Any) -> Any:
        """Left-out output layouts follow the task and kind; the version is at least what the fields need."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        task = data.get("task", "segmentation")
        outputs = data.get("outputs")
        if isinstance(outputs, list | tuple):
            filled = []
            for out in outputs:
                if isinstance(out, dict) and out.get("layout") is None:
                    out = {**out, "layout": default_layout(task, out.get("kind", "logits"))}
                filled.append(out)
            data["outputs"] = filled
        declared = data.get("contract_version", 1)
        if isinstance(declared, int) and not isinstance(declared, bool):
            data["contract_version"] = max(declared, needed_version(data))
        return data

    @model_validator(mode="after")
    def _outputs_fit_the_task(self) -> ModelContract:
        kinds = [o.kind for o in self.outputs]
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"outputs name the same tensor twice: {names}")
        answers = [k for k in kinds if k in ANSWER_KINDS]
        if not answers:
            raise ValueError(f"outputs are only {kinds}: none carries the {self.task} answer; declare the model's "
                             f"main output with kind logits, probabilities or mask (detection: yolov8, yolov5 or "
                             f"boxes + scores)")
        allowed = {
            "segmentation": {"logits", "probabilities", "mask", "auxiliary"},
            "classification": {"logits", "probabilities", "heatmap", "auxiliary"},
            "keypoints": {"logits", "probabilities", "auxiliary"},
            "detection": {"yolov8", "yolov5", "boxes", "scores", "labels", "auxiliary"},
        }[self.task]
        wrong = [o.name for o in self.outputs if o.kind not in allowed]
        if wrong:
            raise ValueError(f"task {self.task} cannot use output(s) {wrong} of kind(s) "
                             f"{[o.kind for o in self.outputs if o.name in wrong]}; it takes {sorted(allowed)}")
        if len(answers) > 1 and not (self.task == "detection" and set(answers) == {"boxes"}):
            primary = [o.name for o in self.outputs if o.kind in ANSWER_KINDS]
            raise ValueError(f"outputs {primary} all claim to be the {self.task} answer; mark all but one "
                             f"as kind auxiliary")
        if self.task == "detection" and "boxes" in kinds and "scores" not in kinds:
            raise ValueError("an end-to-end detector (kind boxes) needs a scores output too (kind scores)")
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(c.color for c in self.classes)

    @property
    def primary_output(self) -> OutputSpec:
        """The output the overlay is made from: the one whose kind carries the task's answer."""
        for out in self.outputs:
            if out.kind in ANSWER_KINDS:
                return out
        return self.outputs[0]

    def output_of_kind(self, kind: str) -> OutputSpec | None:
        """The first output of ``kind`` (``None`` when the contract has none)."""
        return next((o for o in self.outputs if o.kind == kind), None)

    def to_json(self) -> str:
        """The JSON embedded in a model. A version-1 contract leaves out the version-2 fields (all at their
        defaults then), so a medstream that reads only version 1 (unknown keys refused) still reads it."""
        if self.contract_version >= 2:
            return self.model_dump_json()
        data = self.model_dump(mode="json")
        data.pop("decode", None)
        for key in ("resize", "pad_value"):
            data["input"].pop(key, None)
        for key in ("value_range", "per_channel"):
            data["input"]["normalization"].pop(key, None)
        for out in data["outputs"]:
            out.pop("activation", None)
        return json.dumps(data, separators=(",", ":"))


_V1_OUTPUT_KINDS = ("logits", "probabilities", "mask", "boxes", "scores", "auxiliary")
_V1_LAYOUTS = ("NCHW", "NHWC", "NC", "N")


def needed_version(data: dict[str, Any]) -> int:
    """The lowest contract version that expresses ``data`` (a contract as a mapping): 2 when any field
    or value of version 2 is used, else 1 (so such a model still runs on a medstream that reads only v1)."""
    if data.get("task") == "keypoints" or "decode" in data and data["decode"] not in (None, {}, DecodeSpec().model_dump()):
        return 2
    inp = data.get("input") if isinstance(data.get("input"), dict) else {}
    if inp.get("resize", "stretch") != "stretch" or inp.get("pad_value", 0) != 0:
        return 2
    norm = inp.get("normalization") if isinstance(inp.get("normalization"), dict) else {}
    if norm.get("kind", "scale_mean_std") not in ("scale_mean_std", "window") or norm.get("per_channel") \
            or tuple(norm.get("value_range", (0.0, 1.0))) != (0.0, 1.0):
        return 2
    for out in data.get("outputs") or ():
        if isinstance(out, dict) and (out.get("kind", "logits") not in _V1_OUTPUT_KINDS
                                      or out.get("layout", "NCHW") not in _V1_LAYOUTS
                                      or out.get("activation", "auto") != "auto"):
            return 2
    return 1


# ------------------------------------------------------------------------------ read, write, resolve
def contract_from_metadata(metadata: dict[str, str]) -> ModelContract | None:
    """Parse a contract from an ONNX ``metadata_props`` mapping; ``None`` when there is none."""
    raw = metadata.get(CONTRACT_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ContractError(
            f"the model's '{CONTRACT_KEY}' metadata is not valid JSON ({exc})",
            "re-export the model with 'medstream export', or remove the key and give the contract in config",
        ) from None
    version = int(data.get("contract_version", 0))
    if version > CONTRACT_VERSION:
        raise ContractError(
            f"the model's contract is version {version}; this medstream reads up to version {CONTRACT_VERSION}",
            "upgrade medstream (pip install -U medstream)",
        )
    return _validate(data, "the model's embedded contract")


def read_contract(model: str | Path | Any) -> ModelContract | None:
    """Read the contract from an ONNX file path or an ``onnx.ModelProto``; ``None`` when absent."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, str | Path) else model
    return contract_from_metadata({p.key: p.value for p in proto.metadata_props})


def write_contract(proto: Any, contract: ModelContract) -> Any:
    """Store ``contract`` in ``proto.metadata_props`` (replacing an older one); returns ``proto``."""
    keep = [p for p in proto.metadata_props if p.key not in (CONTRACT_KEY, CONTRACT_VERSION_KEY)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in ((CONTRACT_KEY, contract.to_json()), (CONTRACT_VERSION_KEY, str(contract.contract_version))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


REQUIRED_WITHOUT_CONTRACT = ("model_id", "input.name", "input.height", "input.width", "outputs", "classes")


def resolve_contract(embedded: ModelContract | None, overrides: dict[str, Any] | None, model_path: str) -> ModelContract:
    """Merge the embedded contract with the user's config overrides (overrides win, field by field).

    Raises
    ------
    ContractError
        Naming every missing or invalid field and the config keys that would supply them.
    """
    base: dict[str, Any] = embedded.model_dump() if embedded is not None else {}
    merged = _deep_merge(base, overrides or {})
    if embedded is None:
        missing = [key for key in REQUIRED_WITHOUT_CONTRACT if _lookup(merged, key) is None]
        if missing:
            raise ContractError(
                f"model {model_path} carries no medstream contract, and config does not give: {', '.join(missing)}",
                "add them under 'contract:' in the YAML config (see docs/MODEL_CONTRACT.md), "
                "or re-export the model with 'medstream export' which embeds the contract",
            )
    return _validate(merged, f"the contract for {model_path}")


def _validate(data: dict[str, Any], what: str) -> ModelContract:
    try:
        return ModelContract.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ContractError(f"{what} is invalid: {problems}",
                            "fix those fields in the config's 'contract:' section or re-export the model") from None


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
