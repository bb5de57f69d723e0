"""The loop a user would write without medstream: the benchmark's point of comparison.

    SUB frames -> numpy/OpenCV preprocess -> onnxruntime run -> argmax -> PUB overlay

One thread, no drop policy: every frame is received and processed in order, so when frames come
faster than the model runs they wait in ZeroMQ's receive queue and the overlay gets older and older.
That is the honest default of such a loop (ZeroMQ's receive queue is unbounded here, as it is with
``RCVHWM=0``; with the default of 1000 messages it would also silently drop the newest frames once
full). It publishes overlays in medstream's wire format (``medstream.runtime.wire``) only so the same
measuring subscriber can read them, and it uses the same ONNX Runtime thread count as
``medstream run --threads``. It does less per frame than medstream (no contours, no status messages). It is the one module outside
``medstream.runtime.sources`` allowed a SUB socket of its own for frames (listed, with this reason, in
``tests/architecture/test_frame_ownership.py``): reading through medstream's source would make it
no longer the loop a user writes without medstream.

Run: ``python -m medstream.benchmarks.naive_loop --model M.onnx --source tcp://127.0.0.1:5555
--publish tcp://127.0.0.1:5556 --threads 1``; stop with SIGTERM (prints a JSON summary).
"""

import argparse
import json
import signal
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort
import zmq

from medstream.runtime.contract import read_contract
from medstream.runtime.frame import Overlay
from medstream.runtime.wire import decode_frame, encode_overlay


def main(argv=None):
    p = argparse.ArgumentParser(description="naive single-thread inference loop (benchmark baseline)")
    p.add_argument("--model", required=True)
    p.add_argument("--source", required=True, help="frame endpoint to connect to")
    p.add_argument("--publish", required=True, help="overlay endpoint to bind")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="openvino: the loop a user writes with OpenVINO's compile_model (medstream bench --backend)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default="auto",
                   help="openvino only: int8 runs M.int8.onnx beside M.onnx; fp32/bf16 set the precision hint; "
                        "auto leaves OpenVINO's default")
    p.add_argument("--delay-ms", type=float, default=0.0, help="sleep added per frame (harness tests only)")
    p.add_argument("--summary", default=None, help="write a JSON summary here at exit")
    args = p.parse_args(argv)

    # What the user knows about their model: input name and size, normalisation, class names.
    contract = read_contract(args.model)
    spec = contract.input
    norm = spec.normalization
    output_name = contract.primary_output.name
    if args.backend == "openvino":
        session = _OpenVinoSession(args.model, args.threads, args.precision, output_name)
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    dtype = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[spec.dtype]
    shape = (1, spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, spec.channels)
    session.run([output_name], {spec.name: np.zeros(shape, dtype)})  # warm-up

    ctx = zmq.Context()
    frames = ctx.socket(zmq.SUB)
    frames.setsockopt(zmq.RCVHWM, 0)  # keep every frame
    frames.setsockopt(zmq.SUBSCRIBE, b"frame")
    frames.connect(args.source)
    overlays = ctx.socket(zmq.PUB)
    overlays.bind(args.publish)

    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    signal.signal(signal.SIGINT, lambda *_: running.__setitem__(0, False))
    received = processed = 0
    last_seq = None
    seq_gaps = 0
    while running[0]:
        if not frames.poll(100):
            continue
        frame = decode_frame(frames.recv_multipart())
        received += 1
        if last_seq is not None and frame.seq != last_seq + 1:
            seq_gaps += 1
        last_seq = frame.seq
        t0 = time.perf_counter()

        # preprocess: grey -> model size -> float, normalised as the model expects, NCHW
        img = frame.image if frame.image.ndim == 2 else cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
        img = cv2.resize(img, (spec.width, spec.height))
        x = img.astype(np.float32)
        if norm.kind == "window":
            x = np.clip((x - norm.low) / (norm.high - norm.low), 0.0, 1.0)
        else:
            x = (x * norm.scale - norm.mean[0]) / norm.std[0]
        x = np.repeat(x[None, None], spec.channels, axis=1).astype(dtype)
        if spec.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        t1 = time.perf_counter()

        if args.delay_ms:
            time.sleep(args.delay_ms / 1000.0)
        logits = session.run([output_name], {spec.name: x})[0]
        t2 = time.perf_counter()

        class_axis = 0 if contract.primary_output.layout == "NCHW" else -1
        mask = np.argmax(logits[0], axis=class_axis).astype(np.uint8)
        t3 = time.perf_counter()

        overlay = Overlay(
            seq=frame.seq, t_capture_ns=frame.t_capture_ns, source_id=frame.source_id, model_id=contract.model_id,
            class_names=contract.class_names, class_colors=contract.class_colors, mask=mask,
            frame_size=(frame.image.shape[0], frame.image.shape[1]),
            stages_ms={"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3},
        )
        overlay.t_publish_ns = time.time_ns()
        overlay.stages_ms["total"] = (overlay.t_publish_ns - frame.t_capture_ns) / 1e6
        overlays.send_multipart(encode_overlay(overlay))
        processed += 1

    summary = {"received": received, "processed": processed, "dropped_total": 0, "seq_gaps": seq_gaps,
               "last_seq": last_seq}
    print(json.dumps(summary))
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f)
    frames.close(0)
    overlays.close(200)
    ctx.term()
    return 0


class _OpenVinoSession:
    """What a user writes with OpenVINO: ``compile_model`` with a thread count (and a precision hint if asked)."""

    def __init__(self, model: str, threads: int, precision: str, output_name: str) -> None:
        import openvino as ov

        if precision == "int8":
            model = model[:-len(".onnx")] + ".int8.onnx"
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision in ("fp32", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
        self._request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        self._output = output_name

    def run(self, names, feeds):
        return [self._request.infer(feeds)[self._output]]


if __name__ == "__main__":
    sys.exit(main())
