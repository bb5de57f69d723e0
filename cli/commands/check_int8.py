"""Check an INT8 ONNX file against TensorRT's Q/DQ rules, without TensorRT.

Lists every violation with the node and the rule (uint8 or asymmetric Q/DQ, QOperator nodes such as
QLinearConv, dynamic quantization, per-channel scales without an axis, opset < 13...) and exits 1
if there is any, so a file that TensorRT 10/11 would refuse is caught before it reaches the target.
"""

from __future__ import annotations

import json

HELP = "check that an INT8 (QDQ) ONNX file follows TensorRT's quantization rules"


def add_arguments(p) -> None:
    p.add_argument("model", help="the INT8 .onnx file (e.g. M.int8.onnx written by medstream calibrate)")
    p.add_argument("--json", action="store_true", help="print the violations as JSON")


def main(args) -> int:
    from pathlib import Path

    from medstream.calibration.validator import RULES, summarize, validate_model
    from medstream.runtime.errors import ModelLoadError

    path = Path(args.model)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist", "check the path")
    try:
        violations = validate_model(path)
    except Exception as exc:  # noqa: BLE001 - protobuf parse errors come in several types
        raise ModelLoadError(f"cannot read {path} as ONNX: {str(exc).splitlines()[0][:200]}",
                             "the file is corrupt or not ONNX") from None
    if args.json:
        print(json.dumps({"model": str(path), "ok": not violations, "violations": [v.to_dict() for v in violations]},
                         indent=2))
        return 1 if violations else 0
    if not violations:
        print(f"{path}: OK, no TensorRT Q/DQ rule broken")
        return 0
    print(f"{path}: {len(violations)} violation(s) of TensorRT's Q/DQ rules")
    for v in violations:
        print(f"  {v}")
    print("rules broken:")
    for rule, n in summarize(violations).items():
        print(f"  {rule} ({n}x): {RULES[rule]}")
    return 1
