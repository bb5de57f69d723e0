"""Report what this machine can run: CPU, GPU and driver, CUDA, TensorRT (full, lean or absent),
ONNX Runtime and its providers, CuPy, DLA cores, the Jetson model and power mode, and which backend
``--backend auto`` picks here and why.
"""

from __future__ import annotations

import json

HELP = "show GPU/driver/CUDA/TensorRT/ONNX Runtime facts and which backend 'auto' picks"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args) -> int:
    from medstream.runtime.gpu.doctor import format_report, machine_report

    report = machine_report()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0
