"""The measuring subscriber: how old is each overlay when it reaches the consumer?

Runs as its own process (``python -m medstream.benchmarks.subscriber``), like a display would, and
subscribes to a ``medstream run`` (or the naive loop) overlay socket. For every overlay it stamps
``time.time_ns()`` the moment ``recv_multipart`` returns and computes the **age at arrival**::

    age = t_arrival_ns - t_capture_ns      (both UNIX-epoch wall clock, same host)

It also keeps the per-stage times the pipeline wrote into the overlay header (``stages_ms``), so the
age can be split into capture->receive, queue, preprocess, infer, postprocess and the overlay's own
trip over the wire (``age - stages_ms.total``).

The analysis (:func:`analyse`) is a pure function over the recorded samples so the tests can feed it
synthetic timestamps:

* warm-up excluded: samples arriving in the first ``warmup_s`` seconds after the first overlay, and the
  first ``warmup_frames`` overlays, are left out of every figure (they still appear in the timeline);
* HdrHistogram (1 us .. 60 s, 3 significant digits) per figure;
* coordinated-omission correction for fixed-rate sources: a second histogram fed with
  ``record_corrected_value(age, expected_interval)``, the interval being the source period. When a
  stall makes the pipeline skip frames (they are superseded, so no overlay measures them), the
  correction back-fills the ages those frames would have reported. Both histograms are reported:
  ``age_ms`` (one sample per overlay: literally the age at arrival) and ``age_ms_co``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

MAX_US = 60_000_000
PERCENTILES = (10, 50, 90, 95, 99, 99.9)
#: Stages the runtime writes into ``stages_ms`` (docs/WIRE.md); ``total`` = publish - capture.
STAGES = ("queue", "preprocess", "infer", "compute", "postprocess", "total")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, MAX_US, 3)


def encode_histogram(hist: HdrHistogram) -> str:
    """HdrHistogram's own compressed base64 form (a few hundred bytes), for JSON."""
    return hist.encode().decode("ascii")


def decode_histogram(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


def _us(ms: float) -> int:
    return int(min(max(round(ms * 1000.0), 1), MAX_US))


def figures(hist: HdrHistogram) -> dict[str, float]:
    """p10..p99.9, max, mean plus HoloHub's ``tail`` (max - p95) and ``flatness`` (p90 - p10), in ms."""
    n = hist.get_total_count()
    if n == 0:
        return {"count": 0}
    out: dict[str, float] = {"count": int(n), "min": hist.get_min_value() / 1000.0, "mean": hist.get_mean_value() / 1000.0}
    for p in PERCENTILES:
        out[f"p{p:g}"] = hist.get_value_at_percentile(p) / 1000.0
    out["max"] = hist.get_max_value() / 1000.0
    out["tail"] = out["max"] - out["p95"]
    out["flatness"] = out["p90"] - out["p10"]
    return out


def cdf_points(hist: HdrHistogram, n: int = 120) -> list[list[float]]:
    """``[[latency_ms, fraction], ...]`` dense near the tail (for the CDF plot)."""
    if hist.get_total_count() == 0:
        return []
    qs = sorted({round(100.0 * (1.0 - 10 ** (-4.0 * i / n)), 5) for i in range(n + 1)} | {float(p) for p in range(0, 101, 5)})
    pts = [[hist.get_value_at_percentile(max(q, 0.0001)) / 1000.0, q / 100.0] for q in qs]
    pts[-1] = [hist.get_max_value() / 1000.0, 1.0]
    return pts


@dataclass
class Sample:
    """One overlay as the subscriber saw it."""

    seq: int
    t_capture_ns: int
    t_arrival_ns: int
    t_publish_ns: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)

    @property
    def age_ms(self) -> float:
        return (self.t_arrival_ns - self.t_capture_ns) / 1e6


def analyse(samples: Sequence[Sample], *, expected_interval_ms: float | None = None, warmup_s: float = 2.0,
            warmup_frames: int = 0, timeline_points: int = 4000) -> dict[str, Any]:
    """Latency figures of a run from its samples (arrival order).

    Parameters
    ----------
    expected_interval_ms
        The source period for a fixed-rate source: enables the coordinated-omission corrected
        histogram ``age_ms_co``. ``None`` for as-fast-as-possible sources.
    warmup_s, warmup_frames
        Samples arriving within ``warmup_s`` of the first one, or among the first ``warmup_frames``,
        are excluded from the figures (not from the timeline).
    """
    out: dict[str, Any] = {"received": len(samples), "warmup": {"seconds": warmup_s, "frames": warmup_frames}}
    if not samples:
        out.update(measured=0, age_ms={"count": 0}, age_ms_co=None, stages_ms={}, throughput_fps=0.0, timeline=[], cdf=[])
        return out
    t0 = samples[0].t_arrival_ns
    cutoff = t0 + int(warmup_s * 1e9)
    measured = [s for i, s in enumerate(samples) if i >= warmup_frames and s.t_arrival_ns >= cutoff]
    raw, co = new_histogram(), new_histogram()
    interval_us = _us(expected_interval_ms) if expected_interval_ms else 0
    stage_h: dict[str, HdrHistogram] = {}

    def rec(name: str, ms: float) -> None:
        h = stage_h.get(name)
        if h is None:
            h = stage_h[name] = new_histogram()
        h.record_value(_us(ms))

    for s in measured:
        age = s.age_ms
        raw.record_value(_us(age))
        if interval_us:
            co.record_corrected_value(_us(age), interval_us)
        st = s.stages_ms
        for name in STAGES:
            if name in st:
                rec(name, st[name])
        if "total" in st:
            # publish -> arrival: overlay encode, ZeroMQ, TCP loopback, the subscriber's wake-up
            rec("wire_out", age - st["total"])
            worked = sum(st.get(k, 0.0) for k in ("queue", "preprocess", "infer", "postprocess"))
            # capture -> received: frame encode, wire, decode in the runtime's receiver thread
            rec("ingress", st["total"] - worked)
    out["measured"] = len(measured)
    out["age_ms"] = figures(raw)
    out["age_ms_co"] = figures(co) if interval_us else None
    out["expected_interval_ms"] = expected_interval_ms
    out["stages_ms"] = {k: figures(h) for k, h in stage_h.items()}
    span = (measured[-1].t_arrival_ns - measured[0].t_arrival_ns) / 1e9 if len(measured) > 1 else 0.0
    out["throughput_fps"] = (len(measured) - 1) / span if span > 0 else 0.0
    out["measured_span_s"] = span
    seqs = [s.seq for s in measured]
    out["out_of_order"] = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a)
    out["seq_first"], out["seq_last"] = (seqs[0], seqs[-1]) if seqs else (None, None)
    out["seq_gaps"] = (seqs[-1] - seqs[0] + 1 - len(set(seqs))) if seqs else 0
    step = max(1, len(samples) // timeline_points)
    out["timeline"] = [[round((s.t_arrival_ns - t0) / 1e9, 4), round(s.age_ms, 3), int(s.t_arrival_ns >= cutoff and i >= warmup_frames)]
                       for i, s in enumerate(samples) if i % step == 0]
    out["cdf"] = cdf_points(raw)
    # Compressed histograms, so rounds of one scenario can be pooled exactly (benchmarks.pooling).
    out["histograms"] = {"age": encode_histogram(raw), "age_co": encode_histogram(co) if interval_us else None,
                         "stages": {k: encode_histogram(h) for k, h in stage_h.items()}}
    return out


# ------------------------------------------------------------------------------------- the process
def collect(connect: str, *, stop: Any, ready_file: Path | None = None, max_s: float | None = None,
            idle_exit_s: float | None = None, stream: str | None = None) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Subscribe to ``connect`` and collect overlays (and status messages) until ``stop()`` is true.

    ``ready_file`` is written once the ZeroMQ handshake with the publisher completed, so the harness
    starts the source only when no overlay can be lost to the slow-joiner window.
    """
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from medstream.runtime.wire import WireError, decode_overlay, decode_status

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)  # never drop: a measuring consumer must see every overlay
    sock.setsockopt(zmq.LINGER, 0)
    # one stream of a multi-stream run: its own topics (overlay/<id>, status/<id>)
    suffix = b"/" + stream.encode() if stream else b""
    sock.setsockopt(zmq.SUBSCRIBE, b"overlay" + suffix)
    sock.setsockopt(zmq.SUBSCRIBE, b"status" + suffix)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(connect)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    samples: list[Sample] = []
    statuses: list[dict[str, Any]] = []
    start = time.monotonic()
    last_msg = start
    try:
        while not stop():
            now = time.monotonic()
            if max_s is not None and now - start > max_s:
                break
            if idle_exit_s is not None and samples and now - last_msg > idle_exit_s:
                break
            ready = dict(poller.poll(100))
            if monitor in ready:
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)
                except zmq.Again:
                    event = None
                if event and event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and ready_file is not None:
                    ready_file.write_text("ready\n")
            if sock not in ready:
                continue
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t_arrival = time.time_ns()  # first thing after the message is ours
                try:
                    if parts[0].startswith(b"overlay"):
                        last_msg = time.monotonic()
                        ov = decode_overlay(parts)
                        samples.append(Sample(ov.seq, ov.t_capture_ns, t_arrival, ov.t_publish_ns, dict(ov.stages_ms)))
                    elif parts[0].startswith(b"status"):
                        statuses.append(decode_status(parts))
                except WireError as exc:
                    print(f"subscriber: malformed {parts[0][:16]!r} message: {exc}", file=sys.stderr)
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
    return samples, statuses


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.subscriber", description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="overlay endpoint to subscribe to, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--out", required=True, help="JSON file for figures and samples")
    p.add_argument("--interval-ms", type=float, default=None, help="source period for coordinated-omission correction")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--warmup-frames", type=int, default=0)
    p.add_argument("--ready-file", default=None, help="written when connected to the publisher")
    p.add_argument("--max-s", type=float, default=None, help="give up after this many seconds (safety)")
    p.add_argument("--stream", default=None, help="of a multi-stream run, only this stream id (its own topics)")
    p.add_argument("--idle-exit-s", type=float, default=None,
                   help="exit this many seconds after the last overlay (once at least one arrived)")
    args = p.parse_args(argv)
    flag = {"stop": False}
    signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__("stop", True))
    signal.signal(signal.SIGINT, lambda *_: flag.__setitem__("stop", True))
    samples, statuses = collect(args.connect, stop=lambda: flag["stop"],
                                ready_file=Path(args.ready_file) if args.ready_file else None, max_s=args.max_s,
                                idle_exit_s=args.idle_exit_s, stream=args.stream)
    result = analyse(samples, expected_interval_ms=args.interval_ms, warmup_s=args.warmup_s, warmup_frames=args.warmup_frames)
    result["last_status"] = statuses[-1] if statuses else None
    result["samples"] = {"seq": [s.seq for s in samples], "age_ms": [round(s.age_ms, 4) for s in samples]}
    from medstream.runtime.files import write_json_atomic

    write_json_atomic(Path(args.out), result, indent=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
