"""A hostile sender next to a real one: what it costs the real stream, and what it costs in memory.

::

    legit sender (PUB, 256x256 at --fps) --\\
                                            >-- run (SUB bind -> model -> PUB) -> subscriber (this process)
    hostile sender (PUB, one phase each) --/

Phases (``--phase-s`` seconds each), the legit sender running throughout:

``baseline``     no hostile sender
``tiny_flood``   1x1 frames as fast as one core sends them (issue 14: median latency 65 -> 216 ms)
``invalid_flood`` malformed frame messages as fast as possible
``oversized``    multipart messages over the limits: 11 parts of 40 MiB (each part under ``MAXMSGSIZE``, the
                 message far over ``max_parts``) and 2 parts of 100 MiB (over ``MAXMSGSIZE``)
``many_ids``     valid 8x8 frames under 200,000 different ``source_id`` values
``lying_seq``    valid frames whose ``seq`` jumps by up to 2^62

For each phase: the legit stream's overlay latency (capture -> subscriber, p50/p99), legit overlays per
second, the runtime's peak and last RSS (sampled every 50 ms) and the status counters. Prints a table and
writes ``benchmarks/results/hostile_sender.json``::

    python -m medstream.benchmarks.hostile_sender                 # ~2 minutes, bundled ultrasound model
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.wire import WireError, decode_overlay, decode_status, encode_frame

RESULTS = Path(__file__).resolve().parent / "results" / "hostile_sender.json"
PHASES = ("baseline", "tiny_flood", "invalid_flood", "oversized", "many_ids", "lying_seq")
LEGIT_ID = "legit"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------- senders
def _pub(port: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.5)
    return sock


def legit(port: int, fps: float, seconds: float) -> None:
    """256x256 grey frames with a moving bright disc, ``source_id`` ``legit``, at ``fps``."""
    pub = _pub(port)
    yy, xx = np.mgrid[:256, :256]
    t_end, seq, period = time.monotonic() + seconds, 0, 1.0 / fps
    nxt = time.monotonic()
    while time.monotonic() < t_end:
        cx = 128 + 60 * np.sin(seq / 20)
        img = np.where((xx - cx) ** 2 + (yy - 128) ** 2 < 900, 200, 40).astype(np.uint8)
        pub.send_multipart(encode_frame(Frame(seq=seq, t_capture_ns=now_ns(), image=img, source_id=LEGIT_ID)))
        seq += 1
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))
    pub.close(0)


def hostile(port: int, phase: str, seconds: float) -> None:
    os.nice(19)  # the attacker is another host in reality: here it must not take the runtime's cores
    pub = _pub(port)
    t_end, seq = time.monotonic() + seconds, 0
    tiny = np.zeros((1, 1), np.uint8)
    good = encode_frame(Frame(seq=1, t_capture_ns=now_ns(), image=np.zeros((8, 8), np.uint8), source_id="h"))
    header = bytes(good[1])
    while time.monotonic() < t_end:
        if phase == "tiny_flood":
            pub.send_multipart(encode_frame(Frame(seq=seq, t_capture_ns=now_ns(), image=tiny, source_id="tiny")))
        elif phase == "invalid_flood":
            pub.send_multipart([b"frame", header.replace(b'"seq":1', b'"seq":-1'), bytes(good[2])])
        elif phase == "oversized":
            part = bytes(40 * 2**20)
            pub.send_multipart([b"frame", header] + [part] * 9, copy=False)  # 11 parts, 360 MiB
            time.sleep(1.0)
            pub.send_multipart([b"frame", header, bytes(100 * 2**20)], copy=False)  # one part over MAXMSGSIZE
            time.sleep(1.0)
        elif phase == "many_ids":
            pub.send_multipart(encode_frame(Frame(seq=seq, t_capture_ns=now_ns(), image=np.zeros((8, 8), np.uint8),
                                                  source_id=f"id{seq % 200_000}")))
            time.sleep(0.0005)
        elif phase == "lying_seq":
            claim = (seq * 2**40) % 2**62 if seq % 2 else seq
            pub.send_multipart(encode_frame(Frame(seq=claim, t_capture_ns=now_ns(), image=np.zeros((8, 8), np.uint8),
                                                  source_id="liar")))
            time.sleep(0.002)
        seq += 1
    pub.close(0)


# ------------------------------------------------------------------------------------ subscriber
class Subscriber:
    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.latency: list[tuple[float, float]] = []  # (arrival, ms) of legit overlays
        self.other_overlays = 0
        self.status: dict[str, Any] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            parts = self.sock.recv_multipart()
            t = now_ns()
            try:
                if parts[0] == b"overlay":
                    ov = decode_overlay(parts)
                    if ov.source_id == LEGIT_ID:
                        self.latency.append((time.monotonic(), (t - ov.t_capture_ns) / 1e6))
                    else:
                        self.other_overlays += 1
                elif parts[0] == b"status":
                    self.status = decode_status(parts)
            except WireError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close(0)


# ------------------------------------------------------------------------------------------ main
def run(model: str, phase_s: float, fps: float, phases: tuple[str, ...], threads: int | None,
        backend: str) -> dict[str, Any]:
    frames_port, overlay_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="medstream-hostile-"))
    cmd = [sys.executable, "-m", "medstream.cli.main", "run", "--source",
           f"zmq+tcp://127.0.0.1:{frames_port}?bind=1", "--model", model, "--publish",
           f"tcp://127.0.0.1:{overlay_port}", "--summary", str(tmp / "summary.json"), "--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    runtime = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "run.log", "w"))  # noqa: SIM115
    proc = psutil.Process(runtime.pid)
    sub = Subscriber(f"tcp://127.0.0.1:{overlay_port}")
    me = [sys.executable, "-m", "medstream.benchmarks.hostile_sender", "--port", str(frames_port)]
    total = phase_s * len(phases) + 3
    legit_proc = subprocess.Popen([*me, "--role", "legit", "--fps", str(fps), "--seconds", str(2 * total + 30)])
    time.sleep(5.0)  # model load and warm-up
    rows = []
    try:
        for phase in phases:
            attacker = (None if phase == "baseline" else
                        subprocess.Popen([*me, "--role", phase, "--seconds", str(phase_s)]))
            t0 = time.monotonic()
            rss: list[int] = []
            status_before = dict(sub.status.get("counters", {}))
            cpu_before = sum(proc.cpu_times()[:2])
            while time.monotonic() - t0 < phase_s + 0.5:
                rss.append(proc.memory_info().rss)
                time.sleep(0.05)
            cpu_s = sum(proc.cpu_times()[:2]) - cpu_before
            if attacker is not None:
                attacker.wait(10)
            lat = np.asarray([ms for t, ms in sub.latency if t0 + 1.0 <= t <= t0 + phase_s])
            c = sub.status.get("counters", {})
            received = c.get("received", 0) - status_before.get("received", 0)
            rows.append({
                "phase": phase,
                "legit_overlays_per_s": round(lat.size / max(phase_s - 1.0, 1e-6), 2),
                "latency_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "latency_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                "rss_peak_mib": round(max(rss) / 2**20, 1), "rss_last_mib": round(rss[-1] / 2**20, 1),
                "received": received, "runtime_cpu_s": round(cpu_s, 2),
                "runtime_cpu_us_per_message": round(cpu_s / max(received, 1) * 1e6, 1),
                "invalid": c.get("dropped", {}).get("invalid", 0) - status_before.get("dropped", {}).get("invalid", 0),
                "lost_upstream": c.get("lost_upstream"), "seq_jumps": c.get("seq_jumps"),
                "source_ids_tracked": c.get("source_ids_tracked"), "source_ids_evicted": c.get("source_ids_evicted"),
                "invalid_by_reason": c.get("invalid_by_reason"),
            })
            print(json.dumps(rows[-1]), flush=True)
    finally:
        legit_proc.kill()
        runtime.send_signal(signal.SIGTERM)
        try:
            runtime.wait(30)
        except subprocess.TimeoutExpired:
            runtime.kill()
        sub.close()
    summary = json.loads((tmp / "summary.json").read_text()) if (tmp / "summary.json").is_file() else None
    c = (summary or {}).get("counters", {})
    return {"rows": rows, "run_exit_code": runtime.returncode, "accounting_ok": bool(summary and summary["accounting_ok"]),
            "summary_counters": c, "source": (summary or {}).get("source"), "logs": str(tmp)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ultrasound")
    p.add_argument("--phase-s", type=float, default=15.0)
    p.add_argument("--fps", type=float, default=15.0, help="legit sender rate (below the model's capacity)")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", default="onnxruntime", help="pinned so runs compare (auto may pick another)")
    p.add_argument("--label", default="", help="stored with the result (e.g. before/after)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--role", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "legit":
        legit(args.port, args.fps, args.seconds)
        return 0
    if args.role:
        hostile(args.port, args.role, args.seconds)
        return 0
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "label": args.label,
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "config": {"model": args.model, "backend": args.backend, "phase_s": args.phase_s, "legit_fps": args.fps},
              **run(args.model, args.phase_s, args.fps, tuple(args.phases.split(",")), args.threads, args.backend)}
    print(f"{'phase':14s} {'legit/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'RSS peak':>9s} {'RSS last':>9s} "
          f"{'msgs':>7s} {'CPU s':>6s} {'us/msg':>7s}")
    for r in result["rows"]:
        print(f"{r['phase']:14s} {r['legit_overlays_per_s']:8.1f} {r['latency_p50_ms']!s:>8s} {r['latency_p99_ms']!s:>8s} "
              f"{r['rss_peak_mib']:9.1f} {r['rss_last_mib']:9.1f} {r['received']:7d} {r['runtime_cpu_s']:6.2f} "
              f"{r['runtime_cpu_us_per_message']:7.1f}")
    print("accounting ok:", result["accounting_ok"], "exit", result["run_exit_code"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")
    return 0 if result["accounting_ok"] and result["run_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
