"""TensorRT's Q/DQ rules, checked without TensorRT.

TensorRT builds an INT8 engine from an ONNX file with explicit ``QuantizeLinear``/``DequantizeLinear``
pairs ("explicit quantization", the only INT8 path TensorRT 11 keeps). Its ONNX parser refuses a
file that breaks any of the rules below, and it does so on the target machine, at engine-build
time, often on a Jetson far from whoever quantized the model. This module walks the graph on any
machine and names every offending node with the rule it breaks, so a bad file never ships.

Rules (token: what TensorRT needs)
----------------------------------
``opset``            default-domain opset 13 or later (per-channel Q/DQ with ``axis`` is opset 13).
``no_qdq``           at least one Q/DQ node; otherwise TensorRT silently builds FP32/FP16.
``qoperator``        no QOperator-format nodes (``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``,
                     ``MatMulInteger``, ``QLinearAdd``, ``QGemm``...): the parser has no importer for them.
``dynamic_quantize`` no ``DynamicQuantizeLinear`` (or other dynamic quantization): scales must be static.
``contrib_domain``   Q/DQ in the ONNX default domain, not ``com.microsoft`` (ORT's contrib ops).
``uint8``            no uint8 Q/DQ: TensorRT quantizes to int8 only (ORT's CPU-friendly U8S8 files fail).
``quant_type``       no other quantized type either (int16, int4, int32 "quantized bias" DQ: TensorRT's
                     Dequantize accepts only int8 activations/weights here).
``zero_point``       every zero point 0: TensorRT quantization is symmetric.
``constant``         scale and zero point are build-time constants (initializers or ``Constant`` nodes).
``scale_value``      scales positive and finite.
``per_channel_axis`` a per-channel scale (more than one element) has an explicit ``axis`` that exists
                     in the input and whose dimension equals the number of scales; scale and zero point
                     shapes agree.
``q_without_dq``     a ``QuantizeLinear`` output is only read by ``DequantizeLinear`` (int8 tensors
                     cannot feed float layers in TensorRT's explicit mode).

The rules follow TensorRT's operator documentation for Quantize/Dequantize (int8, zero point 0,
constant 1-D scales with an axis) and the parser errors users meet with ORT-quantized files
(uint8 activations, int32 bias ``DequantizeLinear``, QOperator nodes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RULES: dict[str, str] = {
    "opset": "the default-domain opset must be 13 or later (per-channel Q/DQ needs opset 13)",
    "no_qdq": "the model holds no QuantizeLinear/DequantizeLinear nodes; TensorRT would not build it in INT8",
    "qoperator": "QOperator-format node: TensorRT's ONNX parser has no importer for it; quantize in QDQ format",
    "dynamic_quantize": "dynamic quantization: TensorRT needs static, calibrated scales",
    "contrib_domain": "Q/DQ in the com.microsoft domain (ONNX Runtime contrib op): TensorRT parses only ai.onnx Q/DQ",
    "uint8": "uint8 Q/DQ: TensorRT supports int8 quantization only (quantize activations as QInt8)",
    "quant_type": "quantized type other than int8: TensorRT's Dequantize takes int8 here",
    "zero_point": "non-zero zero point: TensorRT quantization is symmetric (zero point 0)",
    "constant": "scale or zero point is not a build-time constant (initializer or Constant node)",
    "scale_value": "scale must be positive and finite",
    "per_channel_axis": "per-channel scale without a valid axis (or scale/zero-point/axis shapes disagree)",
    "q_without_dq": "QuantizeLinear output read by something other than DequantizeLinear",
}

#: Operators of ONNX's QOperator format and ONNX Runtime's quantized contrib ops.
QOPERATOR_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearReduceMean", "QLinearSoftmax", "QLinearWhere", "QLinearConvTranspose", "QGemm", "QAttention",
    "QEmbedLayerNormalization", "MatMulIntegerToFloat", "QOrderedMatMul", "QOrderedAttention",
    "QOrderedGelu", "QOrderedLayerNormalization", "QOrderedLongformerAttention", "NhwcQLinearConv",
    "QLinearGather",
})
DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_DEFAULT_DOMAINS = ("", "ai.onnx")
MIN_OPSET = 13


@dataclass(frozen=True)
class Violation:
    """One broken rule: which ``rule`` (a key of :data:`RULES`), at which ``node``, and the details."""

    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "node": self.node, "detail": self.detail, "why": RULES[self.rule]}


# ------------------------------------------------------------------------------------------ helpers
class _Graphs:
    """Constants, types and shapes of a model, including its subgraphs (If/Loop bodies)."""

    def __init__(self, model: Any) -> None:
        import onnx

        with contextlib.suppress(Exception):  # shapes are a help, not a requirement
            model = onnx.shape_inference.infer_shapes(model)
        self.model = model
        self.constants: dict[str, np.ndarray] = {}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        self.consumers: dict[str, list[Any]] = {}
        self.graph_outputs: set[str] = set()
        for graph in self._all_graphs(model.graph):
            self._index(graph)

    def _all_graphs(self, graph: Any) -> Iterator[Any]:
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.g is not None and attr.g.ByteSize():
                    yield from self._all_graphs(attr.g)
                for sub in attr.graphs:
                    yield from self._all_graphs(sub)

    def nodes(self) -> Iterator[Any]:
        for graph in self._all_graphs(self.model.graph):
            yield from graph.node

    def _index(self, graph: Any) -> None:
        from onnx import numpy_helper

        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.shapes[init.name] = tuple(init.dims)
            with contextlib.suppress(Exception):  # external data not loaded: type and shape still known
                self.constants[init.name] = numpy_helper.to_array(init)
        for vi in (*graph.input, *graph.output, *graph.value_info):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type"):
                self.types.setdefault(vi.name, tt.elem_type)
                if tt.HasField("shape"):
                    self.shapes.setdefault(vi.name, tuple(d.dim_value if d.HasField("dim_value") else None
                                                          for d in tt.shape.dim))
        self.graph_outputs.update(o.name for o in graph.output)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                for attr in node.attribute:
                    if attr.name == "value":
                        arr = numpy_helper.to_array(attr.t)
                        self.constants[node.output[0]] = arr
                        self.types[node.output[0]] = attr.t.data_type
                        self.shapes[node.output[0]] = tuple(arr.shape)


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return None


def _has_attr(node: Any, name: str) -> bool:
    return any(a.name == name for a in node.attribute)


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(elem_type).lower()


def _node_name(node: Any, index: int) -> str:
    return node.name or f"<unnamed {node.op_type} #{index}>"


# ------------------------------------------------------------------------------------------- checks
def _quantized_type(node: Any, g: _Graphs) -> int | None:
    """The integer type a Q produces or a DQ consumes, by ONNX's rules; ``None`` when unknowable."""
    from onnx import TensorProto

    if len(node.input) > 2 and node.input[2]:
        zp = node.input[2]
        if zp in g.types:
            return g.types[zp]
    if node.op_type == "QuantizeLinear":
        out_dtype = _attr(node, "output_dtype")
        if out_dtype:
            return int(out_dtype)
        return TensorProto.UINT8  # ONNX: no zero point and no output_dtype means uint8
    return g.types.get(node.input[0])


def _check_qdq(node: Any, name: str, g: _Graphs) -> list[Violation]:
    from onnx import TensorProto

    found: list[Violation] = []
    if node.domain not in _DEFAULT_DOMAINS:
        found.append(Violation("contrib_domain", name, f"{node.op_type} is in domain {node.domain!r}"))
    qtype = _quantized_type(node, g)
    if qtype == TensorProto.UINT8:
        why = "" if len(node.input) > 2 and node.input[2] else " (no zero point given: ONNX defaults to uint8)"
        found.append(Violation("uint8", name, f"{node.op_type} quantizes to uint8{why}"))
    elif qtype is not None and qtype != TensorProto.INT8:
        extra = " (a quantized bias: keep biases in float for TensorRT)" if qtype == TensorProto.INT32 else ""
        found.append(Violation("quant_type", name, f"{node.op_type} uses {_type_name(qtype)}{extra}"))

    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale = g.constants.get(scale_name)
    if scale is None:
        found.append(Violation("constant", name, f"scale {scale_name!r} is not a constant"))
    elif scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        found.append(Violation("scale_value", name, f"scale {scale_name!r} holds {np.asarray(scale).ravel()[:4]}"))

    zp = None
    if len(node.input) > 2 and node.input[2]:
        zp_name = node.input[2]
        zp = g.constants.get(zp_name)
        if zp is None:
            found.append(Violation("constant", name, f"zero point {zp_name!r} is not a constant"))
        elif np.any(zp != 0):
            nz = np.flatnonzero(np.asarray(zp).ravel())
            found.append(Violation("zero_point", name,
                                   f"zero point {zp_name!r} is {np.asarray(zp).ravel()[nz[0]]} "
                                   f"({nz.size} of {zp.size} non-zero)"))
        if scale is not None and zp is not None and tuple(np.shape(zp)) != tuple(np.shape(scale)):
            found.append(Violation("per_channel_axis", name,
                                   f"scale shape {list(np.shape(scale))} and zero point shape {list(np.shape(zp))} differ"))

    if scale is not None and scale.size > 1:
        found.extend(_check_axis(node, name, scale, g))
    if node.op_type == "QuantizeLinear":
        for out in node.output:
            readers = [c for c in g.consumers.get(out, []) if c.op_type != "DequantizeLinear"]
            if readers:
                found.append(Violation("q_without_dq", name,
                                       f"int8 output {out!r} is read by {readers[0].op_type} {readers[0].name!r}"))
            elif out in g.graph_outputs:
                found.append(Violation("q_without_dq", name, f"int8 output {out!r} is a graph output"))
    return found


def _check_axis(node: Any, name: str, scale: np.ndarray, g: _Graphs) -> list[Violation]:
    if scale.ndim != 1:
        return [Violation("per_channel_axis", name,
                          f"per-channel scale has shape {list(scale.shape)}; TensorRT wants a 1-D scale")]
    if not _has_attr(node, "axis"):
        return [Violation("per_channel_axis", name,
                          f"{scale.size} per-channel scales but no 'axis' attribute (ONNX would assume 1)")]
    axis = int(_attr(node, "axis"))
    shape = g.shapes.get(node.input[0])
    if shape is None:
        return []
    rank = len(shape)
    if not -rank <= axis < rank:
        return [Violation("per_channel_axis", name, f"axis {axis} does not exist in a rank-{rank} input")]
    dim = shape[axis]
    if dim is not None and dim != scale.size:
        return [Violation("per_channel_axis", name,
                          f"axis {axis} has {dim} channels but there are {scale.size} scales")]
    return []


def validate_model(model: str | Path | Any) -> list[Violation]:
    """Every TensorRT Q/DQ rule the model breaks, in graph order (empty list: TensorRT-legal).

    Parameters
    ----------
    model
        An ONNX file path or an ``onnx.ModelProto``.
    """
    import onnx

    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, str | Path) else model
    found: list[Violation] = []
    opset = next((o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if opset is None or opset < MIN_OPSET:
        found.append(Violation("opset", "(model)", f"default-domain opset is {opset}, TensorRT Q/DQ needs >= {MIN_OPSET}"))
    g = _Graphs(proto)
    n_qdq = 0
    for index, node in enumerate(g.nodes()):
        name = _node_name(node, index)
        if node.op_type in QOPERATOR_OPS:
            found.append(Violation("qoperator", name, f"{node.op_type} (domain {node.domain or 'ai.onnx'!r})"))
        elif node.op_type in DYNAMIC_OPS:
            found.append(Violation("dynamic_quantize", name, node.op_type))
        elif node.op_type in _QDQ:
            n_qdq += 1
            found.extend(_check_qdq(node, name, g))
    if n_qdq == 0 and not any(v.rule in ("qoperator", "dynamic_quantize") for v in found):
        found.append(Violation("no_qdq", "(model)", "no QuantizeLinear/DequantizeLinear nodes found"))
    return found


def summarize(violations: list[Violation]) -> dict[str, int]:
    """Violation counts per rule, for reports."""
    counts: dict[str, int] = {}
    for v in violations:
        counts[v.rule] = counts.get(v.rule, 0) + 1
    return counts


__all__ = ["MIN_OPSET", "QOPERATOR_OPS", "RULES", "Violation", "summarize", "validate_model"]
