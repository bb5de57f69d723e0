"""What ``spin_after_run`` costs: CPU per frame and inference time, each inference followed by idle time
as in a stream under capacity, both settings interleaved in blocks so the machine's drift hits both.

::

    python -m medstream.benchmarks.spin_after_run [--model ultrasound] [--idle-ms 18] [--blocks 10]

Writes ``spin_after_run.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medstream.benchmarks.floor_drift import make_backend
from medstream.runtime.files import write_json_atomic


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.spin_after_run", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ultrasound")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every usable core)")
    p.add_argument("--idle-ms", type=float, default=18.0, help="idle time after each inference")
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--per-block", type=int, default=15)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    backends = {spin: make_backend(args.model, args.threads, spin) for spin in (False, True)}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    wall: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.blocks):
        for spin, (backend, x) in backends.items():
            c0 = time.process_time()  # this process's CPU: the caller and ONNX Runtime's threads
            for _ in range(args.per_block):
                backend.infer(x)
                wall[spin].append(backend.last_compute_ms)
                time.sleep(args.idle_ms / 1000.0)
            cpu[spin].append((time.process_time() - c0) / args.per_block * 1000.0)
    result = {"model": args.model, "threads": args.threads, "idle_ms": args.idle_ms,
              "runs_per_setting": args.blocks * args.per_block, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for spin in (False, True):
        key = f"spin_after_run_{str(spin).lower()}"
        result[key] = {"cpu_ms_per_frame": round(float(np.mean(cpu[spin])), 3),
                       "inference_p50_ms": round(float(np.median(wall[spin])), 2),
                       "inference_p90_ms": round(float(np.percentile(wall[spin], 90)), 2)}
        print(f"{key}: CPU {result[key]['cpu_ms_per_frame']} ms per frame, inference p50 "
              f"{result[key]['inference_p50_ms']} ms, p90 {result[key]['inference_p90_ms']} ms")
    write_json_atomic(Path(args.out) / "spin_after_run.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
