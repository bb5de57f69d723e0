"""Quantize a model to INT8 that TensorRT 10/11 accept, and prove it still segments as well as FP32.

One statistics pass over the calibration frames (cached: a second run with the same model and data
skips it), then two QDQ files from the same ranges: ``M.int8.onnx`` (symmetric int8, TensorRT-legal,
checked by the validator) and ``M.int8-cpu.onnx`` (uint8 activations, fastest on ONNX Runtime CPU),
plus ``M.calib.cache`` for ``trtexec --int8 --calib`` (TensorRT 8.x-10.x) and ``M.int8.report.json``.
Both INT8 files are evaluated against FP32 on held-out frames; the command exits 1 when a class
loses more than --max-dice-drop Dice points. --auto tries the standard remedies in order (other
method, first/last layers in float, worst layers in float, more frames) and keeps the first that passes.

Example: medstream calibrate --model ultrasound --data "synthetic://ultrasound?seed=1" --auto

A model without an embedded contract (somebody else's ONNX) takes one with ``--contract FILE.yaml``
(``medstream inspect MODEL.onnx --out FILE.yaml`` proposes one): medstream calibrate --model their.onnx
--contract their.yaml --data frames/ --eval-data "file://labelled/"
"""

from __future__ import annotations

import json
from pathlib import Path

from medstream.cli.commands._model_args import add_contract_arguments, contract_overrides, read_contract_for

HELP = "INT8-calibrate a model (TensorRT-legal QDQ + CPU variant) with an accuracy gate"


def add_arguments(p) -> None:
    from medstream.calibration.gate import DEFAULT_MAX_DICE_DROP
    from medstream.calibration.quantize import DEFAULT_METHOD
    from medstream.calibration.stats import DEFAULT_PERCENTILE, METHODS
    from medstream.calibration.trt_cache import DEFAULT_TRT_VERSION

    p.add_argument("--model", required=True, help="FP32 .onnx file, or a bundled model name (ultrasound, fluoroscopy)")
    p.add_argument("--data", required=True, action="append", metavar="SRC",
                   help="calibration frames: synthetic://..., a folder of images/.npy (e.g. from medstream record), "
                        "a video file; repeat to mix sources")
    p.add_argument("--out", default=None,
                   help="INT8 file to write (default: MODEL.int8.onnx beside the model file; for a bundled model "
                        "name, in the current folder)")
    p.add_argument("--method", choices=METHODS, default=None, help=f"calibration method (default {DEFAULT_METHOD})")
    p.add_argument("--frames", type=int, default=200, help="calibration frames (default 200)")
    p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                   help=f"kept fraction for --method percentile (default {DEFAULT_PERCENTILE})")
    p.add_argument("--max-dice-drop", type=float, default=DEFAULT_MAX_DICE_DROP, metavar="POINTS",
                   help=f"largest Dice drop allowed per class, in points (default {DEFAULT_MAX_DICE_DROP} = 0.01 Dice)")
    p.add_argument("--eval-data", default=None, metavar="SRC",
                   help="held-out frames with ground truth (default for synthetic data: the same phantom, seeds 10000+)")
    p.add_argument("--eval-frames", type=int, default=300, help="held-out frames for the gate (default 300)")
    p.add_argument("--auto", action="store_true", help="when the gate fails, try the remedies in order; keep the first that passes")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="NODE", help="leave these nodes in float")
    p.add_argument("--keep-first-last-float", action="store_true", help="leave the first and the last weighted layer in float")
    p.add_argument("--cache-dir", type=Path, default=None, help="calibration cache folder (default ~/.cache/medstream/calib)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the calibration cache")
    p.add_argument("--no-cpu-variant", action="store_true", help="do not write MODEL.int8-cpu.onnx")
    p.add_argument("--no-trt-cache", action="store_true", help="do not write MODEL.calib.cache")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version named in MODEL.calib.cache's header (default {DEFAULT_TRT_VERSION})")
    p.add_argument("--latency-runs", type=int, default=50, help="runs for the CPU latency comparison (0: skip)")
    p.add_argument("--latency-threads", type=int, default=2, help="ONNX Runtime threads for the latency comparison")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for statistics and the gate")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_contract_arguments(p)


def main(args) -> int:
    from medstream.calibration.pipeline import CalibrateRequest, calibrate
    from medstream.calibration.report import format_report
    from medstream.runtime.models import bundled_model_path

    model = Path(bundled_model_path(args.model))
    read_contract_for(model, args, "calibrate")  # a model without a contract: refused here, the way out is --contract
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    # a bundled name resolves into the installed package: do not write there unless asked to
    beside = Path(args.model).is_file()
    out = Path(args.out) if args.out else (model.with_name(f"{stem}.int8.onnx") if beside else Path(f"{stem}.int8.onnx"))
    req = CalibrateRequest(
        model=model, data=list(args.data), out=out, method=args.method, frames=args.frames,
        max_dice_drop=args.max_dice_drop, eval_data=args.eval_data, eval_frames=args.eval_frames, auto=args.auto,
        exclude=list(args.exclude), keep_first_last_float=args.keep_first_last_float, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, cpu_variant=not args.no_cpu_variant, trt_cache=not args.no_trt_cache,
        trt_version=args.trt_version, percentile=args.percentile, latency_runs=args.latency_runs,
        latency_threads=args.latency_threads, threads=args.threads, progress=not args.no_progress,
        contract_overrides=contract_overrides(args),
    )
    result = calibrate(req)
    report = result.to_dict()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if result.passed else 1
