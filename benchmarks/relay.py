"""The transport floor: frames in, overlays out, and nothing in between.

    SUB frames -> decode -> an empty overlay of the model's size -> PUB

The ``transport`` scenario puts this relay where ``medstream run`` sits in ``glass`` (same simulator,
same rate, same measuring subscriber), so its age at arrival is what the two ZeroMQ hops, the wire
format and three processes' wake-ups cost on this machine with no model and no postprocessing. No
runtime on this host can deliver an overlay faster than that over ZeroMQ; ``glass`` minus ``floor``
minus this is the runtime's own work (queue, preprocess, postprocess, and inference running slower
in a stream than back-to-back). The overlay carries the frame's ``seq`` and ``t_capture_ns`` and a
zero mask of the model's output size, so it weighs what a real one weighs on the wire.

Run: ``python -m medstream.benchmarks.relay --model M.onnx --source tcp://127.0.0.1:5555
--publish tcp://127.0.0.1:5556``; stop with SIGTERM (writes ``--summary``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence

import numpy as np
import zmq

from medstream.runtime.contract import read_contract
from medstream.runtime.files import write_json_atomic
from medstream.runtime.frame import Overlay
from medstream.runtime.wire import WireError, decode_frame, encode_overlay


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.relay", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="ONNX model with a medstream contract (only its sizes and classes)")
    p.add_argument("--source", required=True, help="frame endpoint to connect to")
    p.add_argument("--publish", required=True, help="overlay endpoint to bind")
    p.add_argument("--summary", default=None, help="write a JSON summary here at exit")
    args = p.parse_args(argv)

    contract = read_contract(args.model)
    mask = np.zeros((contract.input.height, contract.input.width), np.uint8)
    ctx = zmq.Context()
    frames = ctx.socket(zmq.SUB)
    frames.setsockopt(zmq.SUBSCRIBE, b"frame")
    frames.connect(args.source)
    overlays = ctx.socket(zmq.PUB)
    overlays.bind(args.publish)

    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    signal.signal(signal.SIGINT, lambda *_: running.__setitem__(0, False))
    received = processed = invalid = 0
    while running[0]:
        if not frames.poll(100):
            continue
        parts = frames.recv_multipart(copy=False)
        received += 1
        try:
            frame = decode_frame(parts)
        except WireError:
            invalid += 1
            continue
        overlay = Overlay(seq=frame.seq, t_capture_ns=frame.t_capture_ns, source_id=frame.source_id,
                          model_id=contract.model_id, class_names=contract.class_names,
                          class_colors=contract.class_colors, mask=mask,
                          frame_size=(frame.image.shape[0], frame.image.shape[1]))
        overlay.t_publish_ns = time.time_ns()
        overlay.stages_ms = {"total": (overlay.t_publish_ns - frame.t_capture_ns) / 1e6}
        overlays.send_multipart(encode_overlay(overlay))
        processed += 1

    summary = {"received": received, "processed": processed, "dropped_total": invalid,
               "dropped": {"invalid": invalid} if invalid else {}}
    if args.summary:
        write_json_atomic(args.summary, summary)
    ctx.destroy(linger=200)  # closes both sockets; the last overlays may still be on their way
    return 0


if __name__ == "__main__":
    sys.exit(main())
