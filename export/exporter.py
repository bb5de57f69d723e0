"""PyTorch to ONNX, with proof: export, check, simplify, embed the contract, then show it computes the same.

Which exporter, which opset, and why
------------------------------------
We use PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at opset 17:

* It needs nothing beyond torch. The dynamo exporter (the default since torch 2.9) needs
  ``onnxscript`` and emits opset 18+ natively, reaching 17 only through the ONNX version converter.
* For the convolutional segmenters medstream runs (conv, norm, activation, pool, resize, concat), it
  produces a flat graph of plain ONNX ops with BatchNorm folded into the convolutions by constant
  folding, and stable, readable tensor names. That is exactly what TensorRT's ONNX parser builds
  best; there is no dynamic control flow in such models for dynamo's extra power to help with.
* Opset 17 is supported by every TensorRT from 8.6 through 10 and 11, by ONNX Runtime >= 1.13 and by
  JetPack 5 and 6, and it has ``LayerNormalization`` for users' transformer-style heads. Newer opsets
  add nothing these models need and narrow the deployable range.

Static shapes are the default (TensorRT builds its fastest engine for one shape); ``dynamic_batch``
and ``dynamic_spatial`` add symbolic axes when a deployment really needs them.

The proof
---------
After ``onnx.checker``, shape inference, simplification (``onnxslim``, when installed) and writing
the contract, the **final file** is loaded into ONNX Runtime with the runtime's own session options
and run beside the PyTorch model on the same inputs: raw random tensors, random frames and real
phantom frames passed through the runtime's :class:`~medstream.runtime.preprocess.Preprocessor`. An
element fails when ``|onnx - torch| > atol + rtol * |torch|`` (numpy's ``allclose`` rule); the report
gives per output the max absolute error and the max relative error, taken as max absolute error over
the output's largest magnitude (element-wise ratios blow up on logits near zero). Any failing
element refuses the export with :class:`ExportError`; the file is kept beside the output as
``*.rejected.onnx`` for inspection and never placed at the output path.

Default tolerances (fp32): ``atol=1e-4``, ``rtol=1e-3``. Both sides compute in fp32; they differ only
in summation order (oneDNN vs MLAS kernels) and BatchNorm folding, which leaves errors around 1e-6
relative per layer, about 1e-5 absolute on the logits of a 20-layer U-Net. The defaults give ten
times that margin, while every real export fault seen in practice (a wrong weight, a transposed
layout, a different resize mode, BatchNorm left in training mode) moves outputs by 1e-2 or more.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstream.export.model_card import ModelCard, model_card
from medstream.runtime.contract import ModelContract, write_contract
from medstream.runtime.errors import ContractError, MedstreamError, require
from medstream.runtime.files import publish
from medstream.runtime.models.loader import read_model_contract

log = logging.getLogger("medstream.export")

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3

#: Ops TensorRT cannot build, or builds only with plugins or data-dependent shapes: warned about.
TENSORRT_UNFRIENDLY = frozenset({
    "Loop", "If", "Scan", "NonZero", "Unique", "SequenceConstruct", "SequenceAt", "SequenceInsert",
    "ConcatFromSequence", "SplitToSequence", "StringNormalizer", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
})


class ExportError(MedstreamError):
    """The export failed or its proof did: the ONNX file does not compute what the PyTorch model does."""


# ------------------------------------------------------------------------------------------ spec
@dataclass
class ExportSpec:
    """What to export and how.

    Attributes
    ----------
    input_shape
        Example input shape in the model's own layout, batch included, e.g. ``(1, 1, 256, 256)``.
    layout
        ``NCHW`` or ``NHWC``: how the PyTorch model takes its input.
    input_name
        Name of the ONNX input.
    outputs
        One dict per model output (``name``, optional ``kind`` and ``layout``, as in the contract);
        ``None`` names a single output ``logits`` and further ones ``output1``, ``output2``...
    contract
        Further contract fields (``classes``, ``modality``, ``model_id``, ``task``, ``input.color_order``,
        ``input.normalization``, ``provenance``...), e.g. from ``--contract contract.yaml`` and flags.
    dynamic_batch, dynamic_spatial
        Make the batch axis, or the height and width axes, symbolic.
    opset
        ONNX opset; 17 unless you know your TensorRT needs otherwise.
    simplify
        Fold constants and simplify with onnxslim (skipped with a note when it is not installed).
    atol, rtol
        Proof tolerances (see module docstring).
    proof_random, proof_frames
        How many random inputs and phantom frames the proof runs.
    """

    input_shape: tuple[int, ...]
    layout: str = "NCHW"
    input_name: str = "image"
    outputs: list[dict[str, Any]] | None = None
    contract: dict[str, Any] = field(default_factory=dict)
    dynamic_batch: bool = False
    dynamic_spatial: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    proof_random: int = 3
    proof_frames: int = 4

    def geometry(self) -> tuple[int, int, int, int]:
        """``(batch, channels, height, width)`` from ``input_shape`` and ``layout``."""
        if len(self.input_shape) != 4:
            raise ExportError(f"input shape {self.input_shape} is not 4-D",
                              "give --input-shape N,C,H,W (NCHW) or N,H,W,C (NHWC)")
        if self.layout == "NCHW":
            n, c, h, w = self.input_shape
        elif self.layout == "NHWC":
            n, h, w, c = self.input_shape
        else:
            raise ExportError(f"layout {self.layout!r} is not NCHW or NHWC", "use --layout NCHW or --layout NHWC")
        if c not in (1, 3):
            raise ExportError(f"input shape {self.input_shape} has {c} channels in layout {self.layout}",
                              "medstream models take 1 (grey) or 3 (colour) channels; check --layout")
        return n, c, h, w


# ------------------------------------------------------------------------------------------ proof
@dataclass
class OutputComparison:
    """One output on one input: how far ONNX Runtime is from PyTorch."""

    case: str
    output: str
    shape: list[int]
    max_abs: float
    max_rel: float  # max |diff| / max |ref|: the error relative to the output's scale
    max_ref: float
    failing: int  # elements outside atol + rtol * |ref|
    elements: int
    argmax_agreement: float | None  # fraction of pixels whose class agrees (segmentation logits only)
    problem: str | None = None  # shape mismatch or NaN, when there is one

    @property
    def ok(self) -> bool:
        return self.problem is None and self.failing == 0


@dataclass
class ProofReport:
    """Every comparison the proof made; ``passed`` when all are within tolerance."""

    onnx_path: str
    atol: float
    rtol: float
    comparisons: list[OutputComparison]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def worst(self) -> OutputComparison:
        bad = [c for c in self.comparisons if not c.ok]
        pool = bad or self.comparisons
        return max(pool, key=lambda c: (c.problem is not None, c.failing, c.max_abs))

    def per_output(self) -> dict[str, dict[str, Any]]:
        """Worst errors per output over all cases."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.comparisons:
            row = out.setdefault(c.output, {"max_abs": 0.0, "max_rel": 0.0, "failing": 0, "cases": 0,
                                            "min_argmax_agreement": None})
            row["max_abs"] = max(row["max_abs"], c.max_abs)
            row["max_rel"] = max(row["max_rel"], c.max_rel)
            row["failing"] += c.failing + (1 if c.problem else 0)
            row["cases"] += 1
            if c.argmax_agreement is not None:
                prev = row["min_argmax_agreement"]
                row["min_argmax_agreement"] = c.argmax_agreement if prev is None else min(prev, c.argmax_agreement)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"onnx_path": self.onnx_path, "atol": self.atol, "rtol": self.rtol, "passed": self.passed,
                "per_output": self.per_output(), "comparisons": [asdict(c) for c in self.comparisons]}

    def format(self) -> str:
        cases = len({c.case for c in self.comparisons})
        lines = [f"proof: ONNX Runtime vs PyTorch on {cases} inputs; an element passes when "
                 f"|onnx - torch| <= {self.atol:g} + {self.rtol:g} * |torch|",
                 f"  {'output':<16}{'max abs err':>13}{'max rel err':>13}{'argmax agree':>14}{'failing':>9}  result"]
        for name, row in self.per_output().items():
            agree = "-" if row["min_argmax_agreement"] is None else f"{100 * row['min_argmax_agreement']:.3f}%"
            lines.append(f"  {name:<16}{row['max_abs']:>13.3e}{row['max_rel']:>13.3e}{agree:>14}{row['failing']:>9}  "
                         + ("ok" if row["failing"] == 0 else "FAILED"))
        return "\n".join(lines)


def _flatten_outputs(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten_outputs(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _flatten_outputs(v)]
    return [value]


def _compare(case: str, name: str, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float,
             class_axis: int | None) -> OutputComparison:
    if got.shape != ref.shape:
        return OutputComparison(case, name, list(ref.shape), float("inf"), float("inf"), 0.0, ref.size, ref.size,
                                None, f"ONNX shape {list(got.shape)} != PyTorch shape {list(ref.shape)}")
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(got64 - ref64)
    problem = None
    if np.isnan(got64).any() != np.isnan(ref64).any():
        problem = "NaN in one output but not the other"
    diff = np.nan_to_num(diff, nan=np.inf)
    mag = np.abs(ref64)
    failing = int(np.count_nonzero(diff > atol + rtol * mag))
    max_mag = float(np.nanmax(mag)) if mag.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max_mag if max_mag > 0 else (0.0 if max_abs == 0 else float("inf"))
    agree = None
    if class_axis is not None and ref.ndim == 4 and ref.shape[class_axis] > 1:
        agree = float(np.mean(np.argmax(got, axis=class_axis) == np.argmax(ref, axis=class_axis)))
    return OutputComparison(case, name, list(ref.shape), max_abs, max_rel, max_mag, failing, int(ref.size), agree,
                            problem)


def proof_inputs(contract: ModelContract | None, input_shape: Sequence[int], dtype: np.dtype, n_random: int = 3,
                 n_frames: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Labelled inputs for the proof: raw random tensors, random frames and phantom frames.

    Frames go through the runtime's :class:`Preprocessor` (resize, colour, normalisation, layout), so
    the proof covers the value range production feeds the model, not only unit Gaussians.
    """
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, np.ndarray]] = []
    if np.issubdtype(dtype, np.floating):
        for i in range(n_random):
            cases.append((f"random tensor #{i}", rng.standard_normal(tuple(input_shape)).astype(dtype)))
    if contract is None:
        return cases
    from medstream.runtime.preprocess import Preprocessor

    spec = contract.input
    pre = Preprocessor(contract)
    for i in range(n_random):
        shape = (spec.height, spec.width) if spec.channels == 1 else (spec.height, spec.width, 3)
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        cases.append((f"random frame #{i}", pre(image, "gray" if spec.channels == 1 else "rgb").copy()))
    if n_frames > 0:
        from medstream.runtime.phantom import make_phantom

        kind = contract.modality if contract.modality in ("ultrasound", "fluoroscopy") else "ultrasound"
        phantom = make_phantom(kind, height=256, width=256, seed=12345)
        for i in range(n_frames):
            image, _ = phantom.render(17 * i)
            cases.append((f"{kind} phantom frame {17 * i}", pre(image, "gray").copy()))
    return cases


def _contract_with_size(contract: ModelContract, height: int, width: int) -> ModelContract:
    return contract.model_copy(update={"input": contract.input.model_copy(update={"height": height, "width": width})})


def prove_export(model: Any, onnx_path: str | Path, *, contract: ModelContract | None = None,
                 inputs: list[tuple[str, np.ndarray]] | None = None, atol: float = DEFAULT_ATOL,
                 rtol: float = DEFAULT_RTOL, n_random: int = 3, n_frames: int = 4,
                 raise_on_failure: bool = True) -> ProofReport:
    """Run ``model`` (PyTorch) and the ONNX file at ``onnx_path`` (ONNX Runtime, CPU) on the same inputs.

    Parameters
    ----------
    model
        The PyTorch module that was exported (eval mode).
    onnx_path
        The file to prove: the final one, contract included.
    contract
        Read from the file when ``None``; gives the preprocessing for frame inputs and which output
        holds class logits. Without one, only random tensors are used.
    inputs
        Extra ``(label, array)`` inputs (in the model's input layout).
    raise_on_failure
        Raise :class:`ExportError` when any element is out of tolerance (default), else just report.
    """
    torch = require("torch", "train", "proving an ONNX export against PyTorch")
    from medstream.runtime.backends.onnxruntime_backend import make_session

    onnx_path = Path(onnx_path)
    if contract is None:
        contract = read_model_contract(onnx_path, required=False)
    session = make_session(str(onnx_path), ["CPUExecutionProvider"])
    onnx_in = session.get_inputs()[0]
    out_names = [o.name for o in session.get_outputs()]
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(onnx_in.type)
    if dtype is None:
        raise ExportError(f"{onnx_path}: input {onnx_in.name!r} has type {onnx_in.type}, which the proof cannot feed",
                          "medstream models take float32, float16 or uint8 image input")
    static = [d if isinstance(d, int) else 1 for d in onnx_in.shape]
    if contract is not None:
        spec = contract.input
        static = [1, spec.channels, spec.height, spec.width] if spec.layout == "NCHW" else \
            [1, spec.height, spec.width, spec.channels]
    cases = proof_inputs(contract, static, np.dtype(dtype), n_random, n_frames) + list(inputs or [])
    if contract is not None and contract.input.dynamic_batch and len(cases) >= 3:
        cases.append(("batch of 3", np.concatenate([c[1] for c in cases[-3:]], axis=0)))
    if contract is not None and contract.input.dynamic_spatial:
        h, w = contract.input.height // 2, contract.input.width // 2
        if h >= 32 and w >= 32 and h % 32 == 0 and w % 32 == 0:
            small = _contract_with_size(contract, h, w)
            small_shape = [1, small.input.channels, h, w] if small.input.layout == "NCHW" else \
                [1, h, w, small.input.channels]
            cases += [(f"{h}x{w} {label}", arr) for label, arr in proof_inputs(small, small_shape, np.dtype(dtype), 1, 1)]
    primary = contract.primary_output if contract is not None and contract.task == "segmentation" else None
    class_axis = None if primary is None or primary.kind not in ("logits", "probabilities") else \
        (1 if primary.layout == "NCHW" else 3)
    comparisons: list[OutputComparison] = []
    with torch.inference_mode():
        for label, array in cases:
            ref = [t.detach().float().numpy() if t.dtype.is_floating_point else t.numpy()
                   for t in _flatten_outputs(model(torch.from_numpy(np.ascontiguousarray(array))))]
            got = session.run(out_names, {onnx_in.name: array})
            if len(ref) != len(got):
                raise ExportError(f"{onnx_path} has {len(got)} outputs, the PyTorch model returns {len(ref)}",
                                  "re-export; the output list must match the model's return values")
            for name, g, r in zip(out_names, got, ref, strict=True):
                axis = class_axis if primary is not None and name == primary.name else None
                comparisons.append(_compare(label, name, np.asarray(g), r, atol, rtol, axis))
    report = ProofReport(str(onnx_path), atol, rtol, comparisons)
    if raise_on_failure and not report.passed:
        w = report.worst()
        detail = w.problem or (f"max abs error {w.max_abs:.3g} (max rel {w.max_rel:.3g}); {w.failing} of "
                               f"{w.elements} elements beyond {atol:g} + {rtol:g} * |torch|")
        raise ExportError(
            f"export proof failed: output {w.output!r} of {onnx_path} differs from PyTorch on {w.case}: {detail}",
            "the ONNX graph does not compute what the PyTorch model computes; do not deploy it. Re-export "
            "(try --no-simplify, or another --opset) and report the model to the medstream developers; loosen "
            "--atol/--rtol only if you have shown the difference is harmless numerical noise",
        )
    return report


# ------------------------------------------------------------------------------------------ contract
def _default_layout(rank: int) -> str:
    return {1: "N", 2: "NC", 4: "NCHW"}.get(rank, "NC")


def build_contract(spec: ExportSpec, out_path: Path, output_shapes: list[tuple[int, ...]],
                   output_names: list[str], exporter_text: str) -> ModelContract:
    """The contract to embed: the user's fields plus what the export itself knows (names, shapes, provenance)."""
    from medstream.runtime.version import git_commit

    _, c, h, w = spec.geometry()
    fields = dict(spec.contract)
    given_input = dict(fields.pop("input", {}) or {})
    for key, value in (("height", h), ("width", w), ("channels", c), ("layout", spec.layout), ("name", spec.input_name)):
        if key in given_input and given_input[key] != value:
            raise ExportError(f"the contract's input.{key}={given_input[key]!r} contradicts the export ({value!r})",
                              f"remove input.{key} from the contract file or fix --input-shape/--layout")
    given_input.update(name=spec.input_name, layout=spec.layout, channels=c, height=h, width=w,
                       dynamic_batch=spec.dynamic_batch, dynamic_spatial=spec.dynamic_spatial)
    given_input.setdefault("color_order", "gray" if c == 1 else "rgb")
    given_input.setdefault("dtype", "float32")
    outputs = []
    given_outputs = {o["name"]: o for o in (spec.outputs or fields.get("outputs") or []) if "name" in o}
    for i, (name, shape) in enumerate(zip(output_names, output_shapes, strict=True)):
        o = dict(given_outputs.get(name, {}))
        o["name"] = name
        o.setdefault("kind", "logits" if i == 0 else "auxiliary")
        o.setdefault("layout", _default_layout(len(shape)))
        outputs.append(o)
    fields["outputs"] = outputs
    fields["input"] = given_input
    fields.setdefault("model_id", out_path.stem)
    if "classes" not in fields:
        raise ExportError("no class list for the contract",
                          "give --classes background,vessel,... (or 'classes:' in --contract FILE)")
    provenance = dict(fields.get("provenance") or {})
    provenance.setdefault("training_data", "unknown")
    provenance.update(git_commit=provenance.get("git_commit") or git_commit(), exporter=exporter_text,
                      date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    fields["provenance"] = provenance
    try:
        contract = ModelContract.model_validate(fields)
    except Exception as exc:  # pydantic ValidationError: make it one readable line
        errors = getattr(exc, "errors", None)
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors()) if errors else str(exc)
        raise ExportError(f"the model contract is invalid: {text}", "fix those fields (flags or --contract FILE)") from None
    if contract.task == "segmentation":
        primary = contract.primary_output
        shape = output_shapes[output_names.index(primary.name)]
        axis = 1 if primary.layout == "NCHW" else -1
        if primary.kind in ("logits", "probabilities") and len(shape) == 4 and shape[axis] != len(contract.classes):
            raise ExportError(
                f"output {primary.name!r} has {shape[axis]} classes on axis {axis} (shape {list(shape)}), "
                f"but {len(contract.classes)} class names were given ({', '.join(contract.class_names)})",
                "give one name per output channel with --classes, background first",
            )
    return contract


# ------------------------------------------------------------------------------------------ export
@dataclass
class ExportResult:
    path: Path
    contract: ModelContract
    proof: ProofReport
    card: ModelCard
    notes: list[str]


def _exporter_text(torch: Any, opset: int, simplified_with: str | None) -> str:
    text = f"medstream export: torch {torch.__version__} TorchScript exporter, opset {opset}"
    return text + (f", {simplified_with}" if simplified_with else ", not simplified")


def _simplify(proto: Any, notes: list[str]) -> tuple[Any, str | None]:
    try:
        import onnxslim
    except ImportError:
        notes.append("onnxslim is not installed: graph not simplified (pip install onnxslim); constant "
                     "folding by the exporter still applies")
        return proto, None
    try:
        slim = onnxslim.slim(proto)
    except Exception as exc:  # noqa: BLE001 - simplification is an optimisation, never a reason to fail
        notes.append(f"onnxslim failed ({type(exc).__name__}: {str(exc)[:120]}); kept the unsimplified graph")
        return proto, None
    return slim, f"onnxslim {getattr(onnxslim, '__version__', '?')}"


def export_model(model: Any, out_path: str | Path, spec: ExportSpec,
                 before_proof: Callable[[Path], None] | None = None, torch_parameters: int | None = None) -> ExportResult:
    """Export ``model`` to ``out_path`` as ONNX with an embedded contract, proven against PyTorch.

    Parameters
    ----------
    model
        ``torch.nn.Module`` (also TorchScript or a wrapped ``torch.export`` program), put in eval mode.
    out_path
        Where the proven file goes. Nothing is written there unless the proof passes.
    spec
        See :class:`ExportSpec`.
    before_proof
        Called with the final file's path just before the proof runs (tests plant divergences here).

    Raises
    ------
    ExportError
        When the export, the checker, the contract or the proof fails; the message names the file.
    """
    torch = require("torch", "train", "medstream export")
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    spec.geometry()  # validates shape and layout before anything runs
    model.eval()
    if torch_parameters is None and hasattr(model, "parameters"):
        torch_parameters = int(sum(p.numel() for p in model.parameters() if p.requires_grad)) or None
    in_dtype = (spec.contract.get("input") or {}).get("dtype", "float32")
    gen = torch.Generator().manual_seed(0)
    if in_dtype == "uint8":
        example = torch.randint(0, 256, tuple(spec.input_shape), generator=gen, dtype=torch.uint8)
    else:
        example = torch.randn(*spec.input_shape, generator=gen).to(torch.float16 if in_dtype == "float16" else torch.float32)
    with torch.inference_mode():
        example_out = _flatten_outputs(model(example))
    output_shapes = [tuple(t.shape) for t in example_out]
    if spec.outputs:
        output_names = [o["name"] for o in spec.outputs]
    elif spec.contract.get("outputs"):
        output_names = [o["name"] for o in spec.contract["outputs"]]
    else:
        output_names = ["logits"] + [f"output{i}" for i in range(1, len(example_out))]
    if len(output_names) != len(example_out):
        raise ExportError(f"{len(output_names)} output names given ({', '.join(output_names)}) but the model returns "
                          f"{len(example_out)} tensors of shapes {[list(s) for s in output_shapes]}",
                          "give one name per returned tensor with --outputs")
    dynamic_axes: dict[str, dict[int, str]] = {}
    if spec.dynamic_batch or spec.dynamic_spatial:
        axes_in: dict[int, str] = {0: "batch"} if spec.dynamic_batch else {}
        if spec.dynamic_spatial:
            axes_in.update({2: "height", 3: "width"} if spec.layout == "NCHW" else {1: "height", 2: "width"})
        dynamic_axes[spec.input_name] = axes_in
        given = {o["name"]: o for o in (spec.outputs or spec.contract.get("outputs") or []) if "name" in o}
        for name, shape in zip(output_names, output_shapes, strict=True):
            axes: dict[int, str] = {0: "batch"} if spec.dynamic_batch and len(shape) >= 1 else {}
            if spec.dynamic_spatial and len(shape) == 4:
                nhwc = given.get(name, {}).get("layout") == "NHWC"
                axes.update({1: f"{name}_height", 2: f"{name}_width"} if nhwc else {2: f"{name}_height", 3: f"{name}_width"})
            if axes:
                dynamic_axes[name] = axes
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=spec.opset,
                              input_names=[spec.input_name], output_names=output_names,
                              dynamic_axes=dynamic_axes or None, do_constant_folding=True)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"torch.onnx.export failed for {out_path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}",
                              "the model uses an operation the TorchScript exporter cannot express at opset "
                              f"{spec.opset}; see the message, simplify that part of the model or try another --opset") from None
    for wmsg in caught:
        if issubclass(wmsg.category, torch.jit.TracerWarning):
            notes.append(f"tracing warning (data-dependent Python is frozen at the example input): {wmsg.message}")
    try:
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        proto, slim_text = _simplify(proto, notes) if spec.simplify else (proto, None)
        onnx.checker.check_model(proto, full_check=True)
    except ExportError:
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"the exported graph for {out_path} fails the ONNX checker: {str(exc).splitlines()[0][:300]}",
                          "re-export with --no-simplify; if it still fails, the model uses an op the exporter "
                          "translates wrongly at this opset") from None
    risky = sorted({node.op_type for node in proto.graph.node} & TENSORRT_UNFRIENDLY)
    if risky:
        notes.append(f"ops TensorRT may not build without plugins: {', '.join(risky)}")
    contract = build_contract(spec, out_path, output_shapes, output_names, _exporter_text(torch, spec.opset, slim_text))
    write_contract(proto, contract)
    proto.doc_string = f"{contract.model_id}: {contract.task} for {contract.modality}, exported by medstream"
    onnx.save(proto, str(tmp))
    if before_proof is not None:
        before_proof(tmp)
    try:
        proof = prove_export(model, tmp, contract=contract, atol=spec.atol, rtol=spec.rtol,
                             n_random=spec.proof_random, n_frames=spec.proof_frames)
    except ExportError as exc:
        rejected = out_path.with_name(out_path.stem + ".rejected.onnx")
        publish(tmp, rejected)
        raise ExportError(exc.what, f"{exc.fix}. The rejected file was kept at {rejected} for inspection") from None
    except MedstreamError:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, out_path)
    card = model_card(out_path, torch_parameters=torch_parameters)
    card.notes.extend(notes)
    if read_model_contract(out_path) != contract:  # the file on disk must carry exactly what was proven
        raise ContractError(f"the contract read back from {out_path} differs from the one written",
                            "the file was changed during export; export again")
    return ExportResult(out_path, contract, proof, card, notes)
