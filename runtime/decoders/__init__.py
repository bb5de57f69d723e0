"""Output decoders: model outputs -> the overlay's per-task fields, one module per task.

The registry :data:`DECODERS` maps ``(task, kind of the contract's answer output, activation)`` to a
decoder class; :func:`make_decoder` builds the one a contract needs. To support a new output, write a
:class:`~medstream.runtime.decoders.base.Decoder` subclass (``decode(outputs, frame_size, roi) -> Decoded``)
and :func:`register` it; give :func:`~medstream.runtime.decoders.validate.check_model_io` its shape rules.

=============================  =====================================================================
``(task, kind, activation)``   decoder
=============================  =====================================================================
segmentation, logits/probabilities, softmax   :class:`~.segmentation.SoftmaxSegmentation` (argmax)
segmentation, mask, *                          :class:`~.segmentation.SoftmaxSegmentation` (class map as is)
segmentation, logits/probabilities, sigmoid   :class:`~.segmentation.SigmoidSegmentation`
classification, logits/probabilities, *       :class:`~.classification.ClassificationDecoder`
detection, yolov8/yolov5/boxes, *             :class:`~.detection.DetectionDecoder`
keypoints, logits/probabilities, *            :class:`~.keypoints.KeypointDecoder`
=============================  =====================================================================

``*`` matches any activation. The model loader resolves ``activation: auto`` from the model's output shapes
(:func:`~medstream.runtime.decoders.validate.check_model_io`); where a channel axis is dynamic it stays
``auto`` until the warm-up, where :func:`refine` checks the real outputs and swaps the decoder if the
resolved activation needs another one. A softmax decoder never argmaxes an output whose channels say
sigmoid: it refuses the frame instead (:class:`~.base.DecodeError`).
"""

from __future__ import annotations

from typing import Any

from medstream.runtime.contract import ModelContract
from medstream.runtime.decoders.base import Decoded, DecodeError, Decoder
from medstream.runtime.decoders.classification import ClassificationDecoder
from medstream.runtime.decoders.detection import DetectionDecoder
from medstream.runtime.decoders.keypoints import KeypointDecoder
from medstream.runtime.decoders.segmentation import SigmoidSegmentation, SoftmaxSegmentation
from medstream.runtime.decoders.validate import (
    ModelIO,
    TensorInfo,
    check_model_io,
    model_io_from_arrays,
    model_io_from_onnx,
    model_io_from_session,
    resolve_activation,
)
from medstream.runtime.errors import ContractError

#: ``(task, kind, activation)`` -> decoder class; activation ``*`` matches any.
DECODERS: dict[tuple[str, str, str], type[Decoder]] = {}


def register(task: str, kind: str, activation: str, decoder: type[Decoder]) -> None:
    """Add (or replace) the decoder for ``(task, kind, activation)``."""
    DECODERS[(task, kind, activation)] = decoder


for _kind in ("logits", "probabilities"):
    register("segmentation", _kind, "softmax", SoftmaxSegmentation)
    register("segmentation", _kind, "auto", SoftmaxSegmentation)
    register("segmentation", _kind, "none", SoftmaxSegmentation)
    register("segmentation", _kind, "sigmoid", SigmoidSegmentation)
    register("classification", _kind, "*", ClassificationDecoder)
    register("keypoints", _kind, "*", KeypointDecoder)
register("segmentation", "mask", "*", SoftmaxSegmentation)
for _kind in ("yolov8", "yolov5", "boxes"):
    register("detection", _kind, "*", DetectionDecoder)


def decoder_class(contract: ModelContract) -> type[Decoder]:
    """The registered decoder for ``contract``'s task and answer output, or a ContractError naming what is missing."""
    out = contract.primary_output
    for key in ((contract.task, out.kind, out.activation), (contract.task, out.kind, "*")):
        if key in DECODERS:
            return DECODERS[key]
    raise ContractError(f"no decoder for task {contract.task} with an output of kind {out.kind} "
                        f"(activation {out.activation})",
                        "use a kind listed for the task in docs/MODEL_CONTRACT.md")


def uses_argmax(contract: ModelContract) -> bool:
    """Whether ``contract`` is decoded by the segmentation argmax (a backend's :class:`Postprocessor`, on the
    GPU for GPU backends); every other decoder works on the outputs themselves."""
    return decoder_class(contract) is SoftmaxSegmentation


def make_decoder(contract: ModelContract, *, postprocessor: Any = None,
                 low_confidence_below: float | None = None) -> Decoder:
    """The decoder for ``contract``. ``postprocessor``: the backend's segmentation argmax (GPU backends take it
    on the device); used by the softmax segmentation decoder only."""
    cls = decoder_class(contract)
    if cls is SoftmaxSegmentation:
        return SoftmaxSegmentation(contract, postprocessor=postprocessor, low_confidence_below=low_confidence_below)
    return cls(contract, low_confidence_below=low_confidence_below)


def refine(decoder: Decoder, outputs: dict[str, Any]) -> Decoder:
    """Check real outputs (the warm-up's) against the contract; the decoder they call for (``decoder`` itself
    unless a dynamic channel axis resolved ``activation: auto`` to another decoder)."""
    decoder.check_outputs(outputs)
    cls = decoder_class(decoder.contract)
    if isinstance(decoder, cls):
        return decoder
    return make_decoder(decoder.contract, postprocessor=getattr(decoder, "post", None),
                        low_confidence_below=decoder.low_confidence_below)


__all__ = ["DECODERS", "ClassificationDecoder", "Decoded", "DecodeError", "Decoder", "DetectionDecoder",
           "KeypointDecoder", "ModelIO", "SigmoidSegmentation", "SoftmaxSegmentation", "TensorInfo",
           "check_model_io", "decoder_class", "make_decoder", "model_io_from_arrays", "model_io_from_onnx",
           "model_io_from_session", "refine", "register", "resolve_activation", "uses_argmax"]
