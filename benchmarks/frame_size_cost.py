"""What one frame costs the worker, by size: the measurement behind the default :class:`WireLimits`.

The worker pings the systemd watchdog (``WatchdogSec=10``, pings at most every 5 s) between frames, so
the largest frame the wire accepts must be processed well inside 5 s on the slowest supported machine.
Issue 14 measured 5.1 s for one 8192x8192x4 16-bit frame (512 MiB). This script times
:class:`~medstream.runtime.preprocess.Preprocessor` (the bundled ultrasound model's input: 256x256
gray float32) and one receive over loopback ZeroMQ for square frames of growing size, for the cheapest
(1-channel uint8) and the dearest (4-channel uint16) pixel formats, and fits milliseconds per MiB::

    python -m medstream.benchmarks.frame_size_cost            # prints, writes results/frame_size_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.models.loader import load_model
from medstream.runtime.preprocess import Preprocessor
from medstream.runtime.wire import WireLimits, decode_frame, encode_frame

RESULTS = Path(__file__).resolve().parent / "results" / "frame_size_cost.json"
FORMATS = {"gray_u8": (1, np.uint8, "gray"), "bgra_u16": (4, np.uint16, "bgra")}


def _best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1000)
    return best


def measure(sides: list[int], repeats: int = 3) -> dict:
    pre = Preprocessor(load_model("ultrasound").contract)
    limits = WireLimits(max_height=8192, max_width=8192, max_payload_bytes=8192 * 8192 * 8)
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    pub.connect(f"tcp://127.0.0.1:{port}")
    rows = []
    rng = np.random.default_rng(0)
    for name, (channels, dtype, order) in FORMATS.items():
        for side in sides:
            shape = (side, side) if channels == 1 else (side, side, channels)
            image = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
            parts = encode_frame(Frame(seq=1, t_capture_ns=now_ns(), image=image, color_order=order))

            def transfer(parts=parts):
                pub.send_multipart(parts, copy=False)
                decode_frame(sub.recv_multipart(copy=False), limits)

            t0 = time.perf_counter()  # first call: fresh buffers, page faults (what a new geometry costs)
            Preprocessor(pre.contract)(image, order)
            cold_ms = (time.perf_counter() - t0) * 1000
            pre_ms = _best_ms(lambda image=image, order=order: pre(image, order), repeats)
            wire_ms = _best_ms(transfer, repeats)
            rows.append({"format": name, "side": side, "mib": round(image.nbytes / 2**20, 3),
                         "preprocess_ms": round(pre_ms, 2), "preprocess_cold_ms": round(cold_ms, 2),
                         "receive_decode_ms": round(wire_ms, 2)})
            print(f"{name:9s} {side:5d}^2 {image.nbytes / 2**20:8.1f} MiB  preprocess {pre_ms:8.1f} ms (cold {cold_ms:8.1f})  "
                  f"receive+decode {wire_ms:8.1f} ms", flush=True)
            del image, parts
    pub.close(0)
    sub.close(0)
    fits = {}
    for name in FORMATS:
        r = [x for x in rows if x["format"] == name and x["mib"] >= 4]
        slope = float(np.polyfit([x["mib"] for x in r], [x["preprocess_cold_ms"] + x["receive_decode_ms"] for x in r], 1)[0])
        fits[name] = round(slope, 3)
    return {"rows": rows, "ms_per_mib": fits}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", default="512,1024,2048,2896,4096,8192", help="2896: 64 MiB as 4-channel uint16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
              "model_input": "ultrasound 256x256 gray float32",
              **measure([int(s) for s in args.sides.split(",")], args.repeats)}
    print("ms per MiB (cold preprocess + receive/decode):", result["ms_per_mib"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
