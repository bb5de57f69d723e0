"""Score a segmentation model on frames with ground truth: Dice and IoU per class, as a table and JSON.

Examples::

    medstream evaluate                                   # bundled ultrasound model, 300 held-out phantom frames
    medstream evaluate --model fluoroscopy --frames 300 --json fluoro.json
    medstream evaluate --model my.onnx --data "synthetic://ultrasound?seed=10000&scenes=10" --frames 300
    medstream evaluate --model my.onnx --data recordings/ --contract contract.yaml --min-dice needle=0.8
    medstream evaluate --model needle-classifier --data "synthetic://ultrasound?seed=10000&scenes=10"
    medstream evaluate --model ultrasound-detector --min-metric ap50=0.9

Held-out phantom data uses seeds >= 10000, never used in training. Dice/IoU are accumulated over all
frames (the headline); the mean of per-frame scores is shown beside them.
"""

from __future__ import annotations

from pathlib import Path

# load_contract_file is re-exported: export_cmd reads --contract through it
from medstream.cli.commands._model_args import (  # noqa: F401 - load_contract_file: see above
    add_contract_arguments,
    contract_overrides,
    load_contract_file,
    read_contract_for,
)

HELP = ("score a model on held-out frames with ground truth: Dice/IoU (segmentation), accuracy/F1 and confusion "
        "(classification), COCO AP (detection)")


def add_arguments(p) -> None:
    p.add_argument("--model", default="ultrasound", help="ultrasound, fluoroscopy, or an ONNX file (default ultrasound)")
    p.add_argument("--data", default=None,
                   help="synthetic://KIND?seed=N[&scenes=K] or a folder of frames with masks "
                        "(default: the model's modality, synthetic seed 10000)")
    p.add_argument("--frames", type=int, default=300, help="frames to evaluate (default 300)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "auto"])
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all usable cores)")
    p.add_argument("--batch", type=int, default=1, help="frames per inference (needs a dynamic-batch model)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON here")
    p.add_argument("--min-dice", action="append", default=[], metavar="CLASS=VALUE",
                   help="exit 1 when a class's Dice is below VALUE ('mean' = mean foreground Dice); repeatable")
    p.add_argument("--min-metric", action="append", default=[], metavar="METRIC=VALUE",
                   help="classification/detection: exit 1 when METRIC is below VALUE (accuracy, macro_f1, "
                        "f1:CLASS; ap50, ap50_95, ap50:CLASS); repeatable")
    p.add_argument("--truth-rule", default=None, metavar="RULE",
                   help="classification/detection: how labels/boxes come from truth masks (default: the rule the "
                        "model records; see medstream.runtime.task_truth: needle-presence, vessel-needle-boxes)")
    add_contract_arguments(p)


def _thresholds(items: list[str]) -> dict[str, float]:
    from medstream.runtime.errors import ConfigError

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--min-dice {item!r} is not CLASS=VALUE", "e.g. --min-dice needle=0.8 --min-dice mean=0.85")
    return out


def main(args) -> int:
    from medstream.runtime.errors import ConfigError
    from medstream.runtime.evaluation import evaluate_model
    from medstream.runtime.models.loader import resolve_model_file

    model = resolve_model_file(args.model)
    thresholds = _thresholds(args.min_dice)
    contract = read_contract_for(model, args, "evaluate")  # before any frame: a missing contract says --contract
    overrides = contract_overrides(args)
    data = args.data
    if data is None:
        modality = contract.modality
        if modality not in ("ultrasound", "fluoroscopy"):
            raise ConfigError(f"no --data given and model {model} is not for a phantom modality",
                              "give --data synthetic://ultrasound?seed=10000 or a folder of frames with masks")
        data = f"synthetic://{modality}?seed=10000"
    options = {"intra_op_threads": args.threads} if args.threads and args.backend != "tensorrt" else {}
    report = evaluate_model(model, data, args.frames, backend=args.backend, contract_overrides=overrides,
                            batch=args.batch, truth_rule=getattr(args, "truth_rule", None), **options)
    print(report.to_table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(report.to_json() + "\n")
        print(f"wrote {args.json}")
    if getattr(report, "task", "segmentation") != "segmentation":  # classification / detection reports
        if thresholds:
            raise ConfigError("--min-dice applies to segmentation models", "use --min-metric, e.g. accuracy=0.95")
        low = []
        for name, minimum in _thresholds(getattr(args, "min_metric", [])).items():
            value = report.metric(name)
            if value is None or value < minimum:
                low.append(f"{name} {'none' if value is None else f'{value:.4f}'} < {minimum}")
        if low:
            print("BELOW THRESHOLD: " + "; ".join(low))
            return 1
        return 0
    failed = []
    names = [c.name for c in report.classes]
    for name, minimum in thresholds.items():
        if name != "mean" and name not in names:
            raise ConfigError(f"--min-dice names class {name!r}, the model has {names}", "use one of those names, or 'mean'")
        value = report.mean_foreground_dice if name == "mean" else report.dice(name)
        if value is None or value < minimum:
            failed.append(f"{name} Dice {'none' if value is None else f'{value:.4f}'} < {minimum}")
    if failed:
        print("BELOW THRESHOLD: " + "; ".join(failed))
        return 1
    return 0
