"""The Slicer-like measuring client: how old is each label map when it reaches an OpenIGTLink receiver?

Runs as its own process (``python -m medstream.benchmarks.igtl_receiver --connect igtl://127.0.0.1:18945``),
connects to a ``medstream run --publish igtl://...`` sink as 3D Slicer's OpenIGTLinkIF would, reads every
label map with its overlay JSON (:class:`medstream.runtime.igtl.receiver.OverlayReceiver`, CRC checked, the
IMAGE decoded as Slicer would need it) and stamps ``time.time_ns()`` when the pair is complete::

    age = t_arrival_ns - t_capture_ns      (the IMAGE timestamp: PLUS's capture time, same host)

The figures come from :func:`medstream.benchmarks.subscriber.analyse`, so they compare one to one with the
ZeroMQ subscriber's.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from medstream.benchmarks.subscriber import Sample, analyse


def collect(connect: str, *, stop, ready_file: Path | None, max_s: float | None, idle_exit_s: float | None) -> list[Sample]:
    from medstream.runtime.errors import SourceError
    from medstream.runtime.igtl.receiver import OverlayReceiver
    from medstream.runtime.igtl.server import split_host_port

    host, port = split_host_port(connect, default_port=18945)
    start = time.monotonic()
    receiver = None
    while receiver is None:  # the sink binds when medstream run has loaded the model
        try:
            receiver = OverlayReceiver(host, port)
        except SourceError:
            if stop() or (max_s is not None and time.monotonic() - start > max_s):
                return []
            time.sleep(0.1)
    if ready_file is not None:
        ready_file.write_text("ready\n")
    samples: list[Sample] = []
    last = time.monotonic()
    try:
        while not stop():
            now = time.monotonic()
            if (max_s is not None and now - start > max_s) or (idle_exit_s is not None and samples
                                                               and now - last > idle_exit_s):
                break
            try:
                ov = receiver.read(0.1)
            except SourceError:
                break
            if ov is None:
                continue
            t_arrival = time.time_ns()
            last = time.monotonic()
            samples.append(Sample(ov.seq, ov.t_capture_ns, t_arrival, ov.t_publish_ns, dict(ov.stages_ms)))
    finally:
        receiver.close()
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.igtl_receiver", description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="the OpenIGTLink sink, e.g. igtl://127.0.0.1:18945")
    p.add_argument("--out", required=True, help="JSON file for figures and samples")
    p.add_argument("--interval-ms", type=float, default=None, help="source period for coordinated-omission correction")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--ready-file", default=None, help="written once connected to the sink")
    p.add_argument("--max-s", type=float, default=None, help="give up after this many seconds (safety)")
    p.add_argument("--idle-exit-s", type=float, default=None, help="exit this long after the last label map")
    args = p.parse_args(argv)
    flag = {"stop": False}
    signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__("stop", True))
    signal.signal(signal.SIGINT, lambda *_: flag.__setitem__("stop", True))
    samples = collect(args.connect, stop=lambda: flag["stop"], ready_file=Path(args.ready_file) if args.ready_file else None,
                      max_s=args.max_s, idle_exit_s=args.idle_exit_s)
    result = analyse(samples, expected_interval_ms=args.interval_ms, warmup_s=args.warmup_s)
    result["samples"] = {"seq": [s.seq for s in samples], "age_ms": [round(s.age_ms, 4) for s in samples]}
    from medstream.runtime.files import write_json_atomic

    write_json_atomic(Path(args.out), result, indent=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
