"""Export a PyTorch model to ONNX that medstream can trust: checked, simplified, contract embedded, proven.

Examples::

    medstream export --model mypkg.nets:UNet --weights unet.pt --input-shape 1,1,256,256 \\
        --classes background,vessel,needle --modality ultrasound --out unet.onnx
    medstream export --model scripted.pt --input-shape 1,256,256,3 --layout NHWC --channels rgb \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --classes background,tool \\
        --outputs seg:logits:NCHW,presence:auxiliary:NC --out tool.onnx
    medstream export --model net.py:Net --weights w.pt --contract contract.yaml --out net.onnx

The proof runs PyTorch and ONNX Runtime on the same random inputs and phantom frames (through the
runtime's own preprocessing) and refuses the export when any output element differs by more than
``--atol + --rtol * |torch|``; nothing is written at ``--out`` unless it passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HELP = "export a PyTorch model to ONNX with an embedded contract, proven against PyTorch"


def add_arguments(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="module.path:Class or file.py:Class (with --weights), TorchScript .pt, or torch.export .pt2")
    g.add_argument("--weights", default=None, help="state_dict file (.pt/.pth) for a module:Class model")
    g.add_argument("--model-kwargs", default=None, metavar="JSON", help="constructor arguments, e.g. '{\"n_classes\": 3}'")
    g = p.add_argument_group("input and outputs")
    g.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="example input shape in the model's layout, e.g. 1,1,256,256 (NCHW) or 1,256,256,3 (NHWC)")
    g.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"], help="how the model takes its input")
    g.add_argument("--channels", default=None, choices=["gray", "rgb", "bgr"],
                   help="channel order the model expects (default gray for 1 channel, rgb for 3)")
    g.add_argument("--input-name", default="image", help="ONNX input name (default image)")
    g.add_argument("--outputs", default=None, metavar="NAME[:KIND[:LAYOUT]],...",
                   help="one per returned tensor; KIND logits|probabilities|mask|boxes|scores|auxiliary "
                        "(default: logits, then auxiliary)")
    g.add_argument("--scale", type=float, default=None, help="normalisation: x = (pixel*scale - mean)/std (default 1/255)")
    g.add_argument("--mean", default=None, help="per-channel mean, comma separated (default 0)")
    g.add_argument("--std", default=None, help="per-channel std, comma separated (default 1)")
    g.add_argument("--window", default=None, metavar="LOW,HIGH",
                   help="normalisation as a display window instead: x = clip((pixel-LOW)/(HIGH-LOW), 0, 1)")
    g = p.add_argument_group("contract")
    g.add_argument("--contract", default=None, metavar="FILE", help="YAML/JSON with contract fields (flags override it)")
    g.add_argument("--classes", default=None, help="class names in output-channel order, background first")
    g.add_argument("--colors", default=None,
                   help="overlay colours, '#rrggbb,...' or 'r,g,b;r,g,b;...' (default: a palette)")
    g.add_argument("--task", default=None, choices=["segmentation", "detection", "classification"])
    g.add_argument("--modality", default=None, help="ultrasound, fluoroscopy, ... (the phantom used in the proof)")
    g.add_argument("--model-id", default=None, help="identifier in logs and overlays (default: --out file name)")
    g.add_argument("--training-data", default=None, help="provenance: what the model was trained on")
    g.add_argument("--seed", type=int, default=None, help="provenance: the training seed")
    g = p.add_argument_group("export")
    g.add_argument("--out", required=True, help="output .onnx file")
    g.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17: TensorRT 8.6-11, ORT >= 1.13)")
    g.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis (default static 1)")
    g.add_argument("--dynamic-spatial", action="store_true", help="symbolic height and width axes")
    g.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")
    g.add_argument("--atol", type=float, default=1e-4, help="proof absolute tolerance (default 1e-4, fp32)")
    g.add_argument("--rtol", type=float, default=1e-3, help="proof relative tolerance (default 1e-3, fp32)")
    g.add_argument("--proof-frames", type=int, default=4, help="phantom frames in the proof (default 4)")
    g.add_argument("--report", default=None, metavar="PATH", help="write the proof and model card as JSON here")


def _floats(text: str, what: str) -> list[float]:
    from medstream.runtime.errors import ConfigError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a comma-separated list of numbers", f"e.g. {what} 0.5,0.5,0.5") from None


def parse_shape(text: str) -> tuple[int, ...]:
    from medstream.runtime.errors import ConfigError

    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {text!r} is not a list of integers", "e.g. --input-shape 1,1,256,256") from None
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise ConfigError(f"--input-shape {text!r} must be four positive integers", "e.g. 1,1,256,256 (NCHW)")
    return shape


def parse_colors(text: str) -> list[list[int]]:
    """``#rrggbb,#rrggbb`` or ``r,g,b;r,g,b``."""
    from medstream.runtime.errors import ConfigError

    colors = []
    try:
        if "#" in text:
            for item in text.split(","):
                h = item.strip().lstrip("#")
                if len(h) != 6:
                    raise ValueError(item)
                colors.append([int(h[i:i + 2], 16) for i in (0, 2, 4)])
        else:
            for item in text.split(";"):
                rgb = [int(v) for v in item.split(",")]
                if len(rgb) != 3:
                    raise ValueError(item)
                colors.append(rgb)
    except ValueError:
        raise ConfigError(f"--colors {text!r} is not '#rrggbb,...' or 'r,g,b;r,g,b;...'",
                          "e.g. --colors '#000000,#dc2828,#28dc28'") from None
    return colors


def parse_outputs(text: str) -> list[dict[str, str]]:
    outputs = []
    for item in text.split(","):
        parts = [s.strip() for s in item.split(":")]
        o = {"name": parts[0]}
        if len(parts) > 1 and parts[1]:
            o["kind"] = parts[1]
        if len(parts) > 2 and parts[2]:
            o["layout"] = parts[2]
        outputs.append(o)
    return outputs


def contract_fields(args, base: dict[str, Any] | None) -> dict[str, Any]:
    """Contract fields from ``--contract`` with the flags given on the command line on top."""
    from medstream.export.train import default_palette
    from medstream.runtime.errors import ConfigError

    fields: dict[str, Any] = json.loads(json.dumps(base or {}))
    inp = fields.setdefault("input", {})
    if args.channels:
        inp["color_order"] = args.channels
    if args.window:
        low, high = (_floats(args.window, "--window") + [0, 0])[:2]
        inp["normalization"] = {"kind": "window", "low": low, "high": high}
    elif args.scale is not None or args.mean or args.std:
        norm = dict(inp.get("normalization") or {})
        norm["kind"] = "scale_mean_std"
        if args.scale is not None:
            norm["scale"] = args.scale
        if args.mean:
            norm["mean"] = _floats(args.mean, "--mean")
        if args.std:
            norm["std"] = _floats(args.std, "--std")
        inp["normalization"] = norm
    for key, value in (("task", args.task), ("modality", args.modality), ("model_id", args.model_id)):
        if value:
            fields[key] = value
    if args.classes:
        names = [n.strip() for n in args.classes.split(",") if n.strip()]
        colors = parse_colors(args.colors) if args.colors else [list(c) for c in default_palette(len(names))]
        if len(colors) != len(names):
            raise ConfigError(f"{len(names)} classes but {len(colors)} colours", "give one colour per class in --colors")
        fields["classes"] = [{"name": n, "color": c} for n, c in zip(names, colors, strict=True)]
    elif args.colors:
        raise ConfigError("--colors given without --classes", "give --classes too")
    prov = fields.setdefault("provenance", {})
    if args.training_data:
        prov["training_data"] = args.training_data
    if args.seed is not None:
        prov["seed"] = args.seed
    return fields


def main(args) -> int:
    from medstream.cli.commands.evaluate import load_contract_file
    from medstream.export.exporter import ExportSpec, export_model
    from medstream.export.loaders import load_torch_model, parse_model_kwargs
    from medstream.runtime.errors import ConfigError

    base = load_contract_file(args.contract)
    fields = contract_fields(args, base)
    if args.input_shape:
        shape = parse_shape(args.input_shape)
    else:
        inp = fields.get("input", {})
        if not all(k in inp for k in ("height", "width")):
            raise ConfigError("no --input-shape given, and the contract file has no input.height/width",
                              "give --input-shape, e.g. 1,1,256,256")
        c = int(inp.get("channels", 1))
        shape = (1, c, int(inp["height"]), int(inp["width"])) if args.layout == "NCHW" else \
            (1, int(inp["height"]), int(inp["width"]), c)
    inp = fields.get("input", {})
    for key in ("height", "width", "channels", "layout", "name"):
        inp.pop(key, None)  # the export itself decides these (checked against the file's values below)
    model = load_torch_model(args.model, args.weights, parse_model_kwargs(args.model_kwargs))
    spec = ExportSpec(
        input_shape=shape, layout=args.layout, input_name=args.input_name,
        outputs=parse_outputs(args.outputs) if args.outputs else None, contract=fields,
        dynamic_batch=args.dynamic_batch, dynamic_spatial=args.dynamic_spatial, opset=args.opset,
        simplify=not args.no_simplify, atol=args.atol, rtol=args.rtol, proof_frames=args.proof_frames,
    )
    if base and isinstance(base.get("input"), dict):
        _check_base_geometry(base["input"], spec)
    result = export_model(model, args.out, spec)
    print(result.proof.format())
    print(result.card.format())
    if args.report:
        Path(args.report).write_text(json.dumps({"proof": result.proof.to_dict(), "card": result.card.to_dict()},
                                                indent=2) + "\n")
        print(f"wrote {args.report}")
    print(f"wrote {result.path}")
    return 0


def _check_base_geometry(given: dict[str, Any], spec) -> None:
    """A contract file that states a size or layout must agree with the export's."""
    from medstream.export.exporter import ExportError

    _, c, h, w = spec.geometry()
    for key, value in (("height", h), ("width", w), ("channels", c), ("layout", spec.layout), ("name", spec.input_name)):
        if key in given and given[key] != value:
            raise ExportError(f"the contract file says input.{key}={given[key]!r} but the export has {value!r}",
                              "make --input-shape/--layout/--input-name and the contract file agree")
