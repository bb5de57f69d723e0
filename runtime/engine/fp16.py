"""Convert an ONNX model's float32 tensors to float16, keeping float32 inputs and outputs.

TensorRT 11 builds only strongly typed networks: there is no FP16 builder flag any more, the
precision is whatever the ONNX graph says. So an fp16 engine starts from an fp16 ONNX. Keeping the
graph's inputs and outputs float32 (with a Cast at each end) means the pre- and postprocessing and
the model contract do not change. The same file also serves ONNX Runtime's CUDA provider, where
an fp16 model with CUDA graphs was the fastest variant measured on the lent H100.

The converter is ONNX Runtime's own (``onnxruntime.transformers.float16``, shipped inside every
onnxruntime wheel), falling back to ``onnxconverter_common.float16`` when that is installed instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medstream.runtime.errors import MissingDependencyError, ModelLoadError

log = logging.getLogger("medstream.engine")

PRECISION_KEY = "medstream.precision"


def _converter() -> Any:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError:
            raise MissingDependencyError("onnxruntime.transformers.float16", "gpu",
                                         "Converting the model to fp16") from None
    return convert_float_to_float16


def convert_to_fp16(model: Any, keep_io_types: bool = True, op_block_list: list[str] | None = None) -> Any:
    """Return an fp16 copy of ``model`` (an ``onnx.ModelProto``); metadata (the contract) is kept.

    Parameters
    ----------
    keep_io_types
        Keep float32 graph inputs and outputs (Casts are inserted inside the graph).
    op_block_list
        Op types to keep in float32 (``None``: the converter's default list of ops known to lose
        accuracy or to lack fp16 kernels).
    """
    import onnx

    convert = _converter()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kwargs: dict[str, Any] = {"keep_io_types": keep_io_types}
    if op_block_list is not None:
        kwargs["op_block_list"] = op_block_list
    converted = convert(copy, **kwargs)
    meta = {p.key: p for p in converted.metadata_props}
    if PRECISION_KEY in meta:
        meta[PRECISION_KEY].value = "fp16"
    else:
        entry = converted.metadata_props.add()
        entry.key, entry.value = PRECISION_KEY, "fp16"
    return converted


def convert_file_to_fp16(src: str | Path, dst: str | Path, keep_io_types: bool = True) -> Path:
    """Convert the ONNX file ``src`` to fp16 and write it to ``dst``; returns ``dst``."""
    import onnx

    src, dst = Path(src), Path(dst)
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise ModelLoadError(f"cannot read ONNX model {src}: {exc}",
                             "check the path; re-export the model with 'medstream export'") from None
    converted = convert_to_fp16(model, keep_io_types=keep_io_types)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))
    log.info("wrote fp16 model %s (from %s)", dst, src)
    return dst


def has_qdq(model: Any) -> bool:
    """Whether the graph is explicitly quantized (QuantizeLinear/DequantizeLinear nodes): INT8 without calibrator."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
