"""A short model card read from an ONNX file: what goes in and out, how big, how costly, which file.

``medstream export`` prints it after the proof; the bundled models' README quotes it. Everything is
read from the file itself (not from the PyTorch model), so the card describes exactly the bytes that
will be deployed, and the sha256 identifies them in logs, evaluation reports and audits.

The compute estimate counts multiply-accumulates (MACs) of ``Conv``, ``ConvTranspose``, ``Gemm`` and
``MatMul`` nodes at batch 1 and the contract's input size, from shapes given by ONNX shape
inference. Everything else (activations, pooling, resizing) is memory traffic rather than
arithmetic and is left out; FLOPs are about 2 x MACs.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract, contract_from_metadata
from medstream.runtime.files import sha256_file as file_sha256


@dataclass
class TensorInfo:
    name: str
    shape: list[int | str]
    dtype: str


@dataclass
class ModelCard:
    """Facts about one ONNX file (see module docstring for how MACs are counted)."""

    path: str
    sha256: str
    size_bytes: int
    opset: int
    ir_version: int
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    parameters: int  # weight elements stored in the file (BatchNorm folded into the convs)
    macs: int | None  # multiply-accumulates per frame at batch 1, None when shapes are unknown
    op_counts: dict[str, int]
    contract: ModelContract | None = None
    torch_parameters: int | None = None  # trainable parameters of the PyTorch model, when known
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["contract"] = None if self.contract is None else self.contract.model_dump(mode="json")
        return data

    def format(self) -> str:
        """A plain-text card, a dozen lines, for the terminal and the README."""

        def tensors(items: list[TensorInfo]) -> str:
            return ", ".join(f"{t.name} {t.dtype}[{','.join(str(d) for d in t.shape)}]" for t in items)

        c = self.contract
        lines = [
            f"model card: {Path(self.path).name}",
            f"  file        {self.path} ({self.size_bytes / 1e6:.2f} MB)",
            f"  sha256      {self.sha256}",
            f"  opset       {self.opset} (IR {self.ir_version}, producer {self.producer})",
            f"  inputs      {tensors(self.inputs)}",
            f"  outputs     {tensors(self.outputs)}",
            f"  parameters  {self.parameters:,} in the file"
            + (f" ({self.torch_parameters:,} trainable in PyTorch)" if self.torch_parameters else ""),
            "  compute     " + (f"{self.macs / 1e9:.2f} GMAC per frame (~{2 * self.macs / 1e9:.1f} GFLOP)"
                                if self.macs is not None else "unknown (dynamic shapes without a contract)"),
            "  ops         " + ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items())),
        ]
        if c is not None:
            spec = c.input
            norm = spec.normalization
            norm_text = (f"scale {norm.scale:.6g} mean {list(norm.mean)} std {list(norm.std)}"
                         if norm.kind == "scale_mean_std" else f"window [{norm.low}, {norm.high}]")
            lines += [
                f"  contract    {c.model_id} v{c.contract_version}: {c.task}, modality {c.modality}",
                f"              input {spec.name} {spec.layout} {spec.channels}ch {spec.color_order} "
                f"{spec.height}x{spec.width} {spec.dtype}, {norm_text}"
                + (", dynamic batch" if spec.dynamic_batch else "") + (", dynamic size" if spec.dynamic_spatial else ""),
                "              classes " + ", ".join(f"{k.name} {k.color}" for k in c.classes),
                f"              provenance {c.provenance.training_data}; seed {c.provenance.seed}; "
                f"commit {c.provenance.git_commit}; {c.provenance.date}",
            ]
        lines += [f"  note        {n}" for n in self.notes]
        return "\n".join(lines)


def _dtype_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "unknown"


def _tensor_infos(values: Any) -> list[TensorInfo]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        out.append(TensorInfo(v.name, shape, _dtype_name(t.elem_type)))
    return out


def count_weights(proto: Any) -> int:
    """Elements of floating-point initializers (weights and biases; integer shape constants excluded)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type in floats))


def estimate_macs(proto: Any, input_shapes: dict[str, list[int]] | None = None) -> int | None:
    """Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul for one forward pass.

    Parameters
    ----------
    proto
        The model (not modified).
    input_shapes
        Concrete shapes for inputs with symbolic dimensions; ``None`` when the model is static.

    Returns
    -------
    int or None
        ``None`` when some shape stays unknown after inference.
    """
    import onnx

    model = copy.deepcopy(proto)
    init_names = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        wanted = (input_shapes or {}).get(inp.name)
        for i, d in enumerate(dims):
            if wanted is not None and i < len(wanted):
                d.Clear()
                d.dim_value = int(wanted[i])
            elif not d.HasField("dim_value"):
                if i == 0:
                    d.Clear()
                    d.dim_value = 1  # batch 1
                else:
                    return None
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an estimate, never fatal
        return None
    shapes: dict[str, list[int]] = {}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for node in model.graph.node:
        try:
            if node.op_type == "Conv":
                w = shapes[node.input[1]]
                y = shapes[node.output[0]]
                total += int(np.prod(y)) * int(np.prod(w[1:]))
            elif node.op_type == "ConvTranspose":
                w = shapes[node.input[1]]
                x = shapes[node.input[0]]
                total += int(np.prod(x)) * int(np.prod(w[1:]))
            elif node.op_type in ("Gemm", "MatMul"):
                a = shapes[node.input[0]]
                y = shapes[node.output[0]]
                total += int(np.prod(y)) * int(a[-1])
        except KeyError:
            return None
    return total


def model_card(path: str | Path, torch_parameters: int | None = None) -> ModelCard:
    """Read the card of the ONNX file at ``path`` (contract included when the file carries one)."""
    import onnx

    proto = onnx.load(str(path))
    contract = contract_from_metadata({p.key: p.value for p in proto.metadata_props})
    init_names = {t.name for t in proto.graph.initializer}
    inputs = _tensor_infos([i for i in proto.graph.input if i.name not in init_names])
    shapes = None
    if contract is not None:
        spec = contract.input
        shape = [1, spec.channels, spec.height, spec.width] if spec.layout == "NCHW" else \
            [1, spec.height, spec.width, spec.channels]
        shapes = {spec.name: shape}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    notes = []
    macs = estimate_macs(proto, shapes)
    if macs is None:
        notes.append("compute not estimated: some shapes are symbolic and no contract gives the input size")
    return ModelCard(
        path=str(path), sha256=file_sha256(path), size_bytes=Path(path).stat().st_size, opset=int(opset),
        ir_version=int(proto.ir_version), producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        inputs=inputs, outputs=_tensor_infos(proto.graph.output), parameters=count_weights(proto), macs=macs,
        op_counts=dict(Counter(n.op_type for n in proto.graph.node)), contract=contract,
        torch_parameters=torch_parameters, notes=notes,
    )
