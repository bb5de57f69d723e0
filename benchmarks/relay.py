"""The transport floor: frames in, overlays out, and nothing in between.

    frames (the runtime's ZeroMQ source) -> an empty overlay of the model's size -> PUB

The ``transport`` scenario puts this relay where ``medstream run`` sits in ``glass`` (same simulator,
same rate, same measuring subscriber), so its age at arrival is what the two ZeroMQ hops, the wire
format and three processes' wake-ups cost on this machine with no model and no postprocessing. No
runtime on this host can deliver an overlay faster than that over ZeroMQ; ``glass`` minus ``floor``
minus this is the runtime's own work (queue, preprocess, postprocess, and inference running slower
in a stream than back-to-back). The overlay carries the frame's ``seq`` and ``t_capture_ns`` and a
zero mask of the model's output size, so it weighs what a real one weighs on the wire. Frames are read
by the same :class:`~medstream.runtime.sources.zmq_source.ZmqSource` as ``medstream run`` reads them
(with ZeroMQ's default 1000-message receive queue, so the relay never drops), so the floor contains the
runtime's own receive path.

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
from medstream.runtime.sources import open_source
from medstream.runtime.wire import WireError, encode_overlay

#: ZeroMQ's default receive queue: the relay keeps every frame, as the SUB socket it replaced did.
_RECEIVE_QUEUE = 1000


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.relay", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="ONNX model with a medstream contract (only its sizes and classes)")
    p.add_argument("--source", required=True, help="frame endpoint to connect to")
    p.add_argument("--publish", required=True, help="overlay endpoint to bind")
    p.add_argument("--summary", default=None, help="write a JSON summary here at exit")
    args = p.parse_args(argv)

    contract = read_contract(args.model)
    mask = np.zeros((contract.input.height, contract.input.width), np.uint8)
    endpoint = args.source[4:] if args.source.startswith("zmq+") else args.source
    frames = open_source(f"zmq+{endpoint}?hwm={_RECEIVE_QUEUE}", source_id="relay")
    frames.open()
    ctx = zmq.Context()
    overlays = ctx.socket(zmq.PUB)
    overlays.bind(args.publish)

    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    signal.signal(signal.SIGINT, lambda *_: running.__setitem__(0, False))
    received = processed = invalid = 0
    while running[0]:
        try:
            frame = frames.read(timeout=0.1)
        except WireError:
            received += 1
            invalid += 1
            continue
        if frame is None:
            continue
        received += 1
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
    frames.close()
    ctx.destroy(linger=200)  # closes the overlay socket; the last overlays may still be on their way
    return 0


if __name__ == "__main__":
    sys.exit(main())
