"""Ranges in, QDQ models out: one statistics pass, two INT8 files.

From one set of calibrated activation ranges this writes

* ``M.int8.onnx``, the **TensorRT** file: int8 activations and weights, symmetric (every zero point
  0), per-channel weights with an explicit ``axis``, float biases (TensorRT's Dequantize takes int8
  only, so ORT's int32 "quantized bias" would be rejected), opset >= 13. It passes
  :func:`medstream.calibration.validator.validate_model` or is not written.
* ``M.int8-cpu.onnx``, the **ONNX Runtime CPU** file: uint8 asymmetric activations, int8 symmetric
  per-channel weights, int32 biases (U8S8). ORT's x86 int8 kernels are fastest on it (reference
  ultrasound U-Net, 256x256, 2 threads on this project's VNNI machine: 14.4 ms against 22.6 ms for the
  symmetric S8S8 file and 26.3 ms for FP32); TensorRT rejects it (uint8). Each backend takes its own file.

Quantization itself is ONNX Runtime's ``quantize_static`` in QDQ format, fed the ranges through its
calibration cache (``calibration_cache_path``), so it never runs calibration inference again.

Default method
--------------
:data:`DEFAULT_METHOD` is ``percentile`` (99.99 % of ``|x|``), chosen by measurement on both bundled
reference U-Nets (200 calibration frames from 8 training scenes, 300 held-out frames from 10 unseen
scenes; docs/CALIBRATION.md has the commands and full tables):

* entropy fails the gate on both: needle Dice 0.990 -> 0.000 (ultrasound), wire 0.980 -> 0.506
  (fluoroscopy): KL clipping cuts the rare large activations of thin bright structures;
* min-max and percentile both pass (worst drop 0.03 points); percentile has the lower mean logit
  error on both models (ultrasound 0.091 vs 0.102, fluoroscopy 0.090 vs 0.112, S8S8) and, unlike
  min-max, is not moved by one outlier frame in the calibration data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract, write_contract
from medstream.runtime.errors import ModelLoadError
from medstream.runtime.files import atomic_path
from medstream.runtime.models import int8_cpu_variant

log = logging.getLogger("medstream.calibration")

#: Measured on both reference U-Nets (module docstring; docs/CALIBRATION.md, "Which method").
DEFAULT_METHOD = "percentile"
VARIANTS = ("tensorrt", "cpu")
PRECISION_KEY = "medstream.precision"
QUANTIZATION_KEY = "medstream.quantization"
MIN_OPSET = 13
#: What :func:`prepare_model` does to a graph, part of the statistics cache key: tensor names of the
#: prepared graph differ from an older preparation's, so its cached ranges must not be reused.
PREPARE_FORMAT = "quant_pre_process-1"
#: Layers that carry weights: the ones "first/last layer" means, and the ones worth excluding.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def variant_settings(variant: str) -> dict[str, Any]:
    """``quantize_static`` arguments for a variant (see the module docstring for why each one)."""
    from onnxruntime.quantization import QuantType

    if variant == "tensorrt":
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                  "DedicatedQDQPair": False}}
    if variant == "cpu":
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True}}
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


# ------------------------------------------------------------------------------------ model prep
def prepare_model(fp32_path: str | Path, workdir: str | Path) -> Path:
    """A copy of the model ready to quantize: ORT's pre-processing, every node named, opset at least 13.

    1. Per-channel Q/DQ needs opset 13, so older models are converted first.
    2. ONNX Runtime's own ``quant_pre_process`` (:func:`preprocess_for_quantization`): its graph
       optimisation folds ``Constant`` nodes into initializers and BatchNorm into the convs, and shape
       inference records every tensor's shape. Without it an author-exported graph whose parameters are
       ``Constant`` nodes (PyTorch's TorchScript exporter writes ``InstanceNorm2d``'s scale and bias so)
       stops the quantizer with "Quantization parameters are not specified for param
       .../Constant_output_0". It costs about 1.2 s on the bundled 4.5 MB U-Net (53 nodes, names kept).
    3. Node names are what ``--exclude`` and the report use; ONNX allows unnamed nodes, so those get
       ``<op>_<index>``; shared weights are unshared (:func:`_unshare_parameters`).

    Always writes ``workdir/<stem>.prepared.onnx`` and returns it.
    """
    import onnx
    from onnx import version_converter

    path = Path(fp32_path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelLoadError(f"cannot read ONNX model {path}: {str(exc).splitlines()[0][:200]}",
                             "check --model points at an .onnx file") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    model = preprocess_for_quantization(model, path)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    _unshare_parameters(model.graph)
    out = Path(workdir) / f"{path.stem}.prepared.onnx"
    onnx.save(model, str(out))
    return out


def preprocess_for_quantization(model: Any, source: Path) -> Any:
    """``onnxruntime.quantization.shape_inference.quant_pre_process`` on ``model``; the processed ``ModelProto``.

    Symbolic shape inference (made for transformer graphs) fails on some CNN exports; then it runs
    again without it (ONNX shape inference and the optimisation still run, which is what the
    ``Constant`` folding needs). Opset imports of domains no node uses (ORT's optimiser adds
    ``com.microsoft`` and friends) are dropped again: the TensorRT file must name only what it uses.

    Raises
    ------
    ModelLoadError
        ONNX Runtime cannot load or optimise the graph even so: named, with the fix.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="medstream-preprocess-") as tmp:
        out = Path(tmp) / "preprocessed.onnx"
        errors = []
        for skip_symbolic in (False, True):
            try:
                with _quiet_ort_quantization():
                    quant_pre_process(model, str(out), skip_symbolic_shape=skip_symbolic)
                break
            except Exception as exc:  # noqa: BLE001 - ORT and onnx raise many types here
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
                log.debug("quant_pre_process (skip_symbolic_shape=%s) failed on %s: %s", skip_symbolic, source, exc)
        else:
            raise ModelLoadError(f"ONNX Runtime cannot prepare {source} for quantization "
                                 f"(quant_pre_process: {errors[-1]})",
                                 "check that the model runs in ONNX Runtime ('medstream inspect' shows its graph); "
                                 "re-export it with a recent exporter and opset 13-21")
        processed = onnx.load(str(out))
    used = {n.domain for n in processed.graph.node} | {"", "ai.onnx"}
    keep = [o for o in processed.opset_import if o.domain in used]
    del processed.opset_import[:]
    processed.opset_import.extend(keep)
    return processed


def _unshare_parameters(graph: Any) -> bool:
    """Give every weighted layer its own weight and bias initializers; drop ``Identity`` over initializers.

    Exporters deduplicate equal initializers (BatchNorm folding of an untrained or symmetric layer
    gives several convs the same all-zero bias, reached through ``Identity`` nodes). A quantized
    bias depends on its own conv's input and weight scales, so a shared one cannot be right for all
    of them: ONNX Runtime then leaves those convs unfused (float) in the uint8 CPU file, several
    times slower. One copy per layer costs a few kilobytes.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    changed = False
    for node in list(graph.node):  # Identity(initializer) -> an initializer under the output's name
        if node.op_type == "Identity" and node.input and node.input[0] in inits and node.output[0] not in inits:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
            graph.initializer.append(copy)
            inits[copy.name] = copy
            graph.node.remove(node)
            changed = True
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits:
                users[name] = users.get(name, 0) + 1
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        for k in range(1, len(node.input)):
            name = node.input[k]
            if name in inits and users.get(name, 0) > 1:
                new = f"{name}__{node.name}"
                graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), new))
                users[name] -= 1
                node.input[k] = new
                changed = True
    return changed


def weighted_layers(model_path: str | Path) -> list[str]:
    """Names of the layers with weights (Conv, ConvTranspose, MatMul, Gemm), in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type in WEIGHTED_OPS]


def node_names(model_path: str | Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]


def decode_tail(model_path: str | Path, output_name: str) -> list[str]:
    """The nodes between the last weighted layers and ``output_name``: a detector's box decoding.

    Walking back from the output, every node until a weighted layer (Conv, Gemm, ...) is reached. In a
    YOLO-style head these are Reshape/Slice/Sigmoid/Exp/Mul/Concat; quantized, the final Concat shares one
    int8 scale between pixel boxes (0..128) and probabilities (0..1), and the bundled detector lost 2 AP
    points whatever else was tried. In float they cost nothing measurable (no weights, a few thousand values).
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    tail: list[str] = []
    seen: set[str] = set()
    stack = [output_name]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type in WEIGHTED_OPS:
            continue
        seen.add(node.name)
        if node.op_type != "Constant":
            tail.append(node.name)
        stack.extend(node.input)
    return tail


def first_last_layers(model_path: str | Path, output_name: str) -> list[str]:
    """Names of the first weighted layer after the input and the last one before ``output_name``.

    These are the usual int8 trouble spots: the first sees raw pixel statistics through few
    channels, the last (the classifier) produces the logits whose small differences the argmax reads.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    first = None
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type in WEIGHTED_OPS and _reaches_from(node, inputs, producers):
            first = node.name
            break
    last, frontier, seen = None, [output_name], set()
    while frontier and last is None:
        name = frontier.pop(0)
        node = producers.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in WEIGHTED_OPS:
            last = node.name
        else:
            frontier.extend(i for i in node.input if i in producers)
    return [n for n in dict.fromkeys((first, last)) if n]


def _reaches_from(node: Any, sources: set[str], producers: dict[str, Any], limit: int = 64) -> bool:
    frontier, seen = list(node.input), set()
    while frontier and limit:
        name = frontier.pop()
        if name in sources:
            return True
        producer = producers.get(name)
        if producer is not None and producer.name not in seen:
            seen.add(producer.name)
            frontier.extend(producer.input)
            limit -= 1
    return False


# ------------------------------------------------------------------------------------ ranges
def write_ranges(ranges: Mapping[str, tuple[float, float]], method: str, path: str | Path) -> Path:
    """Store ranges as ONNX Runtime's calibration-cache JSON (``TensorsData``), atomically."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(_method_enum(method), data), Path(path))
    return Path(path)


def amax_of(ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Symmetric magnitude per tensor (what TensorRT's scale ``amax / 127`` is made from)."""
    return {name: max(abs(float(lo)), abs(float(hi))) for name, (lo, hi) in ranges.items()}


# ------------------------------------------------------------------------------------ quantize
@contextmanager
def _quiet_ort_quantization():
    """``quantize_static`` logs a pre-processing hint on the root logger; it does not apply here."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(old)


def quantize_variant(model_path: str | Path, ranges_json: str | Path, method: str, out_path: str | Path,
                     variant: str, exclude: Iterable[str] = ()) -> Path:
    """Write one QDQ variant of ``model_path`` with the cached ``ranges_json`` (no calibration run)."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    settings = variant_settings(variant)
    with _quiet_ort_quantization():
        quantize_static(
            str(model_path), str(out_path), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=False, nodes_to_exclude=list(exclude),
            calibrate_method=_method_enum(method), calibration_cache_path=str(ranges_json), **settings,
        )
    return Path(out_path)


def stamp_metadata(model_path: str | Path, contract: ModelContract | None, quantization: dict[str, Any],
                   out_path: str | Path) -> Path:
    """Copy the contract into the int8 file and record how it was quantized; write ``out_path`` atomically."""
    import onnx

    model = onnx.load(str(model_path))
    if contract is not None:
        write_contract(model, contract)
    keep = [p for p in model.metadata_props if p.key not in (PRECISION_KEY, QUANTIZATION_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in ((PRECISION_KEY, "int8"), (QUANTIZATION_KEY, json.dumps(quantization, sort_keys=True))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return out_path


def read_quantization(model_path: str | Path) -> dict[str, Any] | None:
    """The ``medstream.quantization`` metadata of an int8 file, or ``None``."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == QUANTIZATION_KEY:
            return json.loads(p.value)
    return None


def cpu_variant_path(int8_path: str | Path) -> Path:
    """``M.int8.onnx`` -> ``M.int8-cpu.onnx`` (the runtime owns the naming: see ``int8_cpu_variant``)."""
    return int8_cpu_variant(int8_path)


def sibling_path(int8_path: str | Path, suffix: str) -> Path:
    """``M.int8.onnx`` -> ``M`` + suffix (``.calib.cache``, ``.int8.report.json``)."""
    p = Path(int8_path)
    name = p.name
    for tail in (".int8.onnx", ".onnx"):
        if name.endswith(tail):
            name = name[: -len(tail)]
            break
    return p.with_name(name + suffix)


def count_qdq(model_path: str | Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def float_nodes(model_path: str | Path, candidates: Sequence[str]) -> list[str]:
    """Which of ``candidates`` (weighted layers) kept float weights, i.e. were left out of quantization."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in graph.node}
    return [c for c in candidates if c in by_name and len(by_name[c].input) > 1
            and by_name[c].input[1] not in dq_outputs]


__all__ = ["DEFAULT_METHOD", "PREPARE_FORMAT", "VARIANTS", "amax_of", "cpu_variant_path", "first_last_layers",
           "prepare_model", "preprocess_for_quantization", "quantize_variant", "read_quantization", "sibling_path", "stamp_metadata", "variant_settings",
           "write_ranges"]
