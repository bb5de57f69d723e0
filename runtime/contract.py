"""The model contract: everything the runtime needs to run a model correctly, stored inside the model.

A contract travels in the ONNX file's ``metadata_props`` under the key ``medstream.contract`` as a
JSON document (with ``medstream.contract_version`` beside it), so a model file is self-describing:
the runtime configures preprocessing (size, layout, channels, normalization) and postprocessing
(class names, colours, output meaning) from it, and refuses a frame that cannot match it.

A model without a contract (somebody else's ONNX) still runs when the user supplies the missing
facts in config (``contract:`` section); :func:`resolve_contract` names exactly which ones are missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medstream.runtime.errors import ContractError

CONTRACT_KEY = "medstream.contract"
CONTRACT_VERSION_KEY = "medstream.contract_version"
CONTRACT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Strict):
    """How uint8/uint16 pixels become model input.

    ``scale_mean_std``: ``x = (pixel * scale - mean[c]) / std[c]`` (ImageNet style, or scale=1/255,
    mean 0, std 1). ``window``: ``x = clip((pixel - low) / (high - low), 0, 1)`` (a display window,
    common for fluoroscopy and CT).
    """

    kind: Literal["scale_mean_std", "window"] = "scale_mean_std"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    low: float = 0.0
    high: float = 255.0

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

    @model_validator(mode="after")
    def _channels_match_colour(self) -> InputSpec:
        if (self.channels == 1) != (self.color_order == "gray"):
            raise ValueError(f"channels={self.channels} does not fit color_order={self.color_order!r}")
        return self


class OutputSpec(_Strict):
    """One model output and what it means."""

    name: str
    kind: Literal["logits", "probabilities", "mask", "boxes", "scores", "auxiliary"] = "logits"
    layout: Literal["NCHW", "NHWC", "NC", "N"] = "NCHW"


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
    """Version 1 of the medstream model contract (see docs/MODEL_CONTRACT.md)."""

    contract_version: int = CONTRACT_VERSION
    task: Literal["segmentation", "detection", "classification"] = "segmentation"
    model_id: str = Field(min_length=1, max_length=128)
    modality: str = "unknown"
    input: InputSpec
    outputs: tuple[OutputSpec, ...] = Field(min_length=1)
    classes: tuple[ClassSpec, ...] = Field(min_length=1)
    provenance: Provenance = Provenance()

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(c.color for c in self.classes)

    @property
    def primary_output(self) -> OutputSpec:
        """The output the overlay is made from: the first logits/probabilities/mask output."""
        for out in self.outputs:
            if out.kind in ("logits", "probabilities", "mask"):
                return out
        return self.outputs[0]

    def to_json(self) -> str:
        return self.model_dump_json()


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
