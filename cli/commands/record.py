"""Record frames from a live stream to a folder, for calibration and evaluation on your own scanner's images.

``medstream record --connect tcp://127.0.0.1:5555 --frames 300 --out rec/`` subscribes to a publisher
(a scanner bridge, or ``medstream simulate --publish``) and writes ``NNNNNNNN.npy`` frames with a
``NNNNNNNN.json`` header each (and ``NNNNNNNN.truth.npy`` when frames carry ground truth). Replay the
folder with ``--source file://rec/``; calibrate on it with ``medstream calibrate --data rec/``.
Malformed messages are counted and skipped; a full disk stops the recording cleanly.
"""

from __future__ import annotations

import logging
import signal

from medstream.cli.commands._curve import add_client_curve_arguments, client_curve_from_args

HELP = "save frames from a live ZeroMQ stream to a folder (for calibrate/evaluate)"
log = logging.getLogger("medstream.record")


def add_arguments(p) -> None:
    add_client_curve_arguments(p)
    p.add_argument("--connect", required=True, metavar="ENDPOINT",
                   help="publisher endpoint, e.g. tcp://127.0.0.1:5555 (zmq+tcp:// also accepted)")
    p.add_argument("--frames", type=int, required=True, metavar="N", help="how many frames to save")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create (must not hold a recording)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="give up when no frame arrives for S seconds (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args) -> int:
    from tqdm import tqdm

    from medstream.runtime.recording import record

    stop = {"flag": False}
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("flag", True))
    with tqdm(total=args.frames, desc="recording", unit="frame", disable=args.no_progress, leave=False) as bar:
        summary = record(args.connect, args.frames, args.out, curve=client_curve_from_args(args), timeout_s=args.timeout,
                         on_frame=lambda n: bar.update(1), stop=lambda: stop["flag"])
    malformed = ", ".join(f"{k}={v}" for k, v in sorted(summary.malformed.items())) or "none"
    print(f"recorded {summary.frames} frames ({summary.with_truth} with ground truth) from {summary.endpoint} "
          f"into {summary.out_dir} in {summary.seconds:.1f} s; malformed messages skipped: {malformed}; "
          f"gaps in the sender's seq: {summary.seq_gaps}")
    if summary.frames < args.frames:
        log.warning("stopped early: %d of %d frames recorded", summary.frames, args.frames)
        return 130 if stop["flag"] else 1
    return 0
