"""How much this machine's speed drifts: the same inference, back to back, summarised every two seconds.

::

    python -m medstream.benchmarks.floor_drift [--model ultrasound] [--seconds 60] [--out benchmarks/results]

On a shared or virtual host the median of one and the same inference can move by tens of percent
from one minute, or one few-second spell, to the next. That is why ``medstream bench`` runs its
scenarios in rounds and pools them (``benchmarks/pooling.py``). Prints each two-second median and
writes ``floor_drift.json``.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medstream.runtime.files import write_json_atomic


def make_backend(model: str, threads: int | None, spin_after_run: bool = False):
    """The bench's floor setup: the model's ONNX Runtime backend on the CPU and one preprocessed phantom frame."""
    from medstream.runtime.backends import load_backend
    from medstream.runtime.models.loader import load_model
    from medstream.runtime.phantom import make_phantom

    loaded = load_model(model, backend="onnxruntime")
    c = loaded.contract
    backend = load_backend(loaded, intra_op_threads=threads, spin_after_run=spin_after_run).activate()
    kind = "fluoroscopy" if c.modality == "fluoroscopy" else "ultrasound"
    image, _ = make_phantom(kind, fps=30, height=c.input.height, width=c.input.width, seed=0).render(0)
    x = {c.input.name: backend.make_preprocessor()(image, "gray").copy()}
    for _ in range(10):
        backend.infer(x)
    return backend, x


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.floor_drift", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ultrasound")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every usable core)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--block-s", type=float, default=2.0, help="summarise every this many seconds")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    backend, x = make_backend(args.model, args.threads)
    blocks: list[float] = []
    block: list[float] = []
    t_block = t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        backend.infer(x)
        block.append(backend.last_compute_ms)
        if time.perf_counter() - t_block >= args.block_s:
            blocks.append(round(float(np.median(block)), 2))
            print(f"{time.perf_counter() - t0:6.1f} s  median {blocks[-1]:.2f} ms  ({len(block)} runs)")
            block, t_block = [], time.perf_counter()
    backend.deactivate()
    result = {"model": args.model, "threads": args.threads, "block_s": args.block_s, "block_medians_ms": blocks,
              "min_ms": min(blocks), "max_ms": max(blocks), "max_over_min": round(max(blocks) / min(blocks), 3),
              "machine": platform.processor() or platform.machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"two-second medians {result['min_ms']:.2f} .. {result['max_ms']:.2f} ms (max/min {result['max_over_min']:.2f})")
    write_json_atomic(Path(args.out) / "floor_drift.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
