"""Soak test: the whole pipeline, as real processes, for minutes or hours, with faults on a schedule.

::

    simulate (PUB, above the model's capacity) -> run (SUB -> model -> PUB) -> subscriber (this process)

Every ``--fault-every`` seconds one fault from a rotating list is injected:

``sender_restart``
    the simulator is stopped (SIGTERM), stays away for a few seconds and is started again; the
    runtime must report ``stalled``/``reconnecting`` and resume without a restart.
``malformed_burst``
    the simulator is stopped and this process binds its port and sends a burst of malformed frame
    messages (plus a few valid ones); each must be counted as ``dropped{invalid}`` by reason.
``subscriber_stall``
    the subscriber stops reading for a while (its queue fills; the runtime must not slow down), then
    closes its socket and reconnects.
``hostile_sender``
    the simulator is stopped and this process binds its port as a hostile sender (issue 14): a 1.2 GB
    multipart message in 20 parts each under ``MAXMSGSIZE`` (libzmq assembles it: the source's memory
    guard must cut it), an 11-part message (rejected part by part), three of the largest frames the limits
    accept (4096x4096 BGRA, 64 MiB: the peak RSS under the largest accepted message), frames whose ``seq``
    jumps by 2^40 (a lying sender: ``seq_jumps``, not lost frames) and 3,000 frames under as many
    ``source_id`` values (dropped as ``other_source``; the id table stays bounded).

The ``run`` process is sampled every ``--sample-s`` seconds (RSS, open file descriptors, threads, CPU),
its RSS also every 50 ms for the peaks (overall, during each hostile fault, and under the largest frame),
and overlay latency (capture to receipt, same host clock) is bucketed per window. At the end the run
is stopped with SIGTERM and its ``--summary`` is checked: ``received == processed + dropped`` and
``in_flight == 0``. Results go to ``benchmarks/results/soak-<date>.{json,md}``.

Start the one-hour soak (bundled ultrasound model; give ``--model PATH`` for another)::

    nohup python -m medstream.benchmarks.soak --minutes 60 > soak.log 2>&1 &

The acceptance criteria (issue 8): RSS growth after warm-up under 1 %, no file descriptor or thread
growth, zero frames unaccounted, no overlay repeated.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
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

FAULTS = ("sender_restart", "malformed_burst", "subscriber_stall", "hostile_sender")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medstream.cli.main", *args]


def malformed_messages(n: int) -> list[list[bytes]]:
    """``n`` malformed frame messages cycling through the decoder's rejection reasons."""
    good = encode_frame(Frame(seq=1, t_capture_ns=now_ns(), image=np.zeros((64, 64), np.uint8)))
    header, pixels = bytes(good[1]), bytes(good[2])
    kinds = [
        [b"frame", b"{not json", pixels],
        [b"frame", header.replace(b"medstream.frame/1", b"other/9"), pixels],
        [b"frame", header, pixels[:-1]],
        [b"frame", header.replace(b'"|u1"', b'"<f8"'), pixels],
        [b"frame", header.replace(b"[64,64]", b"[100000,100000]"), b""],
        [b"frame", header],
        [b"frame", header.replace(b'"seq":1', b'"seq":-5'), pixels],
        [b"frame", b"[" * 5000 + b"]" * 5000, pixels],
        [b"frame", b"\xff\xfe" + header, pixels],
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


class Subscriber:
    """SUB on the runtime's publisher in a thread: latency per window, status snapshots, duplicates."""

    def __init__(self, endpoint: str, t0: float, window_s: float) -> None:
        self.endpoint, self.t0, self.window_s = endpoint, t0, window_s
        self.ctx = zmq.Context.instance()
        self.latency: dict[int, list[float]] = {}
        self.overlays = 0
        self.duplicates = 0
        self._seen: set[tuple[int, int]] = set()
        self.statuses: list[dict[str, Any]] = []
        self.status_violations: list[str] = []
        self.invalid = 0
        self.reconnects = 0
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock = self._connect()
        self.thread = threading.Thread(target=self._loop, name="soak-subscriber", daemon=True)
        self.thread.start()

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVHWM, 8)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def reconnect(self) -> None:
        with self._lock:
            self._sock.close(0)
            self._sock = self._connect()
            self.reconnects += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.stalled.is_set():
                time.sleep(0.05)
                continue
            with self._lock:
                if not self._sock.poll(50):
                    continue
                parts = self._sock.recv_multipart()
            t_now = now_ns()
            try:
                if parts[0] == b"overlay":
                    ov = decode_overlay(parts)
                    key = (ov.seq, ov.t_capture_ns)
                    if key in self._seen:
                        self.duplicates += 1
                    self._seen.add(key)
                    if len(self._seen) > 100_000:
                        self._seen.clear()
                    self.overlays += 1
                    w = int((time.monotonic() - self.t0) // self.window_s)
                    self.latency.setdefault(w, []).append((t_now - ov.t_capture_ns) / 1e6)
                elif parts[0] == b"status":
                    st = decode_status(parts)
                    c = st["counters"]
                    gap = c["received"] - c["processed"] - c["dropped_total"]
                    if gap != c["in_flight"] or not 0 <= gap <= 2:
                        self.status_violations.append(f"status seq {st['seq']}: in_flight {gap}")
                    self.statuses.append({"t": round(time.monotonic() - self.t0, 2), "source_state": st["source_state"],
                                          "counters": c})
            except WireError:
                self.invalid += 1

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self._sock.close(0)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.total_s = args.minutes * 60.0
        self.window_s = args.window_s or min(60.0, max(self.total_s / 4, 5.0))
        self.fault_every = args.fault_every or max(self.total_s / 4, 5.0)
        self.warmup_s = args.warmup_s if args.warmup_s is not None else min(300.0, self.total_s * 0.2)
        self.frames_port, self.overlay_port = free_port(), free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="medstream-soak-"))
        self.summary_path = self.tmp / "summary.json"
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.sim: subprocess.Popen | None = None
        self.sim_starts = 0
        self.malformed_sent = 0
        self.hostile: list[dict[str, Any]] = []
        self.rss_peak = 0
        self._rss_window_peak = 0

    # ---------------------------------------------------------------------------------- processes
    def start_sim(self) -> None:
        log = open(self.tmp / f"simulate-{self.sim_starts}.log", "w")  # noqa: SIM115 - closed with the process
        self.sim = subprocess.Popen(_cli("simulate", "--publish", f"tcp://127.0.0.1:{self.frames_port}",
                                         "--rate", str(self.args.rate), "--width", str(self.args.size),
                                         "--height", str(self.args.size), "--seed", str(self.sim_starts),
                                         "--preload", "300"),
                                    stdout=log, stderr=subprocess.STDOUT)
        self.sim_starts += 1

    def stop_sim(self) -> None:
        if self.sim is not None and self.sim.poll() is None:
            self.sim.send_signal(signal.SIGTERM)
            try:
                self.sim.wait(10)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.sim.wait(5)
        self.sim = None

    def start_run(self) -> subprocess.Popen:
        self.run_log = self.tmp / "run.log"
        cmd = _cli("run", "--source", f"zmq+tcp://127.0.0.1:{self.frames_port}", "--model", self.args.model,
                   "--publish", f"tcp://127.0.0.1:{self.overlay_port}", "--summary", str(self.summary_path))
        if self.args.threads:
            cmd += ["--threads", str(self.args.threads)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.run_log, "w"), text=True)  # noqa: SIM115

    # -------------------------------------------------------------------------------------- faults
    def _bind_hostile(self) -> zmq.Socket:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 100_000)
        for _ in range(50):  # the simulator's socket may take a moment to release the port
            try:
                pub.bind(f"tcp://127.0.0.1:{self.frames_port}")
                break
            except zmq.ZMQError:
                time.sleep(0.1)
        time.sleep(1.5)  # the runtime's SUB reconnects (backoff up to 2 s)
        return pub

    def _window_peak(self) -> float:
        peak, self._rss_window_peak = self._rss_window_peak, 0
        return round(peak / 2**20, 1)

    def hostile_sender(self) -> None:
        """Issue 14's hostile sender (see the module docstring); peak RSS of the runtime per step."""
        pub = self._bind_hostile()
        header = bytes(encode_frame(Frame(seq=1, t_capture_ns=now_ns(), image=np.zeros((8, 8), np.uint8)))[1])
        steps: dict[str, Any] = {"rss_before_mib": self._window_peak()}
        big = bytes(60 * 2**20)
        pub.send_multipart([b"frame", header] + [big] * 20, copy=False)  # 1.2 GB, parts under MAXMSGSIZE
        time.sleep(4.0)
        steps["oversized_1200mb_peak_mib"] = self._window_peak()
        pub.send_multipart([b"frame", header] + [b"x" * 1024] * 9)  # 11 parts
        time.sleep(1.5)
        self._window_peak()
        largest = np.full((4096, 4096, 4), 90, np.uint8)  # 64 MiB: the largest payload the default limits accept
        for i in range(3):
            pub.send_multipart(encode_frame(Frame(seq=i, t_capture_ns=now_ns(), image=largest, source_id="largest",
                                                  color_order="bgra")), copy=False)
            time.sleep(1.0)
        steps["largest_frame_peak_mib"] = self._window_peak()
        del largest
        time.sleep(1.2)  # past stall_timeout_s: the liar's id becomes the stream's
        for i in range(20):
            pub.send_multipart(encode_frame(Frame(seq=i * 2**40, t_capture_ns=now_ns(),
                                                  image=np.zeros((64, 64), np.uint8), source_id="liar")))
            time.sleep(0.05)
        for i in range(3000):
            pub.send_multipart(encode_frame(Frame(seq=i, t_capture_ns=now_ns(), image=np.zeros((8, 8), np.uint8),
                                                  source_id=f"id{self.sim_starts}-{i}")))
            time.sleep(0.001)
        time.sleep(0.5)
        steps["ids_and_liar_peak_mib"] = self._window_peak()
        pub.close()
        self.hostile.append(steps)

    def fault(self, kind: str, sub: Subscriber) -> None:
        t = round(time.monotonic() - self.t0, 2)
        self.events.append({"t": t, "fault": kind})
        if kind == "sender_restart":
            self.stop_sim()
            time.sleep(2.5)
            self.start_sim()
        elif kind == "malformed_burst":
            self.stop_sim()
            ctx = zmq.Context.instance()
            pub = ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 500)
            for _ in range(50):  # the simulator's socket may take a moment to release the port
                try:
                    pub.bind(f"tcp://127.0.0.1:{self.frames_port}")
                    break
                except zmq.ZMQError:
                    time.sleep(0.1)
            time.sleep(1.5)  # the runtime's SUB reconnects (backoff up to 2 s)
            for msg in malformed_messages(90):
                pub.send_multipart(msg)
                self.malformed_sent += 1
                time.sleep(0.005)
            time.sleep(0.2)
            pub.close()
            self.start_sim()
        elif kind == "hostile_sender":
            self.stop_sim()
            self.hostile_sender()
            self.start_sim()
        elif kind == "subscriber_stall":
            sub.stalled.set()
            time.sleep(min(5.0, self.fault_every / 3))
            sub.reconnect()
            sub.stalled.clear()

    # ------------------------------------------------------------------------------------- sampling
    def sample(self, proc: psutil.Process, sub: Subscriber) -> None:
        with proc.oneshot():
            mem = proc.memory_info()
            self.samples.append({"t": round(time.monotonic() - self.t0, 2), "rss_mib": round(mem.rss / 2**20, 3),
                                 "fds": proc.num_fds(), "threads": proc.num_threads(),
                                 "cpu_percent": proc.cpu_percent(None), "overlays": sub.overlays})

    # ------------------------------------------------------------------------------------------ run
    def _watch_rss(self, proc: psutil.Process, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                return
            self.rss_peak = max(self.rss_peak, rss)
            self._rss_window_peak = max(self._rss_window_peak, rss)

    def run(self) -> dict[str, Any]:
        self.start_sim()
        run = self.start_run()
        self.t0 = time.monotonic()
        sub = Subscriber(f"tcp://127.0.0.1:{self.overlay_port}", self.t0, self.window_s)
        proc = psutil.Process(run.pid)
        proc.cpu_percent(None)
        watch_stop = threading.Event()
        threading.Thread(target=self._watch_rss, args=(proc, watch_stop), daemon=True).start()
        next_sample, next_fault, i_fault = 0.0, self.fault_every, 0
        rc = None
        try:
            while (elapsed := time.monotonic() - self.t0) < self.total_s:
                if run.poll() is not None:
                    rc = run.returncode
                    self.events.append({"t": round(elapsed, 2), "error": f"run exited early with {rc}"})
                    break
                if elapsed >= next_sample:
                    self.sample(proc, sub)
                    next_sample += self.args.sample_s
                if elapsed >= next_fault:
                    self.fault(FAULTS[i_fault % len(FAULTS)], sub)
                    i_fault += 1
                    next_fault += self.fault_every
                time.sleep(0.05)
            if rc is None:
                self.sample(proc, sub)
                run.send_signal(signal.SIGTERM)
                try:
                    out, _ = run.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    run.kill()
                    out, _ = run.communicate()
                    self.events.append({"error": "run did not stop within 30 s of SIGTERM"})
                rc = run.returncode
        finally:
            watch_stop.set()
            if run.poll() is None:
                run.kill()
            self.stop_sim()
            time.sleep(0.3)
            sub.close()
        summary = json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None
        return self.report(rc, summary, sub)

    def report(self, rc: int | None, summary: dict[str, Any] | None, sub: Subscriber) -> dict[str, Any]:
        post = [s for s in self.samples if s["t"] >= self.warmup_s] or self.samples[-2:]
        k = max(1, len(post) // 10)
        base, last = post[:k], post[-k:]

        def med(rows, key):
            return float(np.median([r[key] for r in rows]))

        rss_growth = (med(last, "rss_mib") - med(base, "rss_mib")) / med(base, "rss_mib") * 100
        slope = (float(np.polyfit([s["t"] for s in post], [s["rss_mib"] for s in post], 1)[0]) * 3600
                 if len(post) >= 3 else 0.0)
        fd_growth = max(r["fds"] for r in last) - max(r["fds"] for r in base)
        thread_growth = max(r["threads"] for r in last) - max(r["threads"] for r in base)
        windows = []
        for w in sorted(sub.latency):
            arr = np.asarray(sub.latency[w])
            windows.append({"window": w, "start_s": w * self.window_s, "overlays": int(arr.size),
                            "p50_ms": round(float(np.percentile(arr, 50)), 3),
                            "p99_ms": round(float(np.percentile(arr, 99)), 3), "max_ms": round(float(arr.max()), 3)})
        c = (summary or {}).get("counters", {})
        unaccounted = (c["received"] - c["processed"] - c["dropped_total"]) if c else None
        states = sorted({s["source_state"] for s in sub.statuses})
        checks = {
            "run_exit_ok": rc == 0,
            "summary_written": summary is not None,
            "accounting_ok": bool(summary and summary["accounting_ok"]) and unaccounted == 0,
            "status_invariant_ok": not sub.status_violations,
            "no_overlay_repeated": sub.duplicates == 0,
            "rss_growth_under_1pct": rss_growth < 1.0,
            "no_fd_growth": fd_growth <= 0,
            "no_thread_growth": thread_growth <= 0,
            "malformed_counted": self.malformed_sent == 0 or c.get("dropped", {}).get("invalid", 0) > 0,
            "hostile_counted": not self.hostile or (
                (summary or {}).get("source", {}).get("oversized_messages", 0) >= len(self.hostile)
                and c.get("invalid_by_reason", {}).get("bad_parts", 0) >= len(self.hostile)
                and c.get("seq_jumps", 0) >= 1 and c.get("lost_upstream", 0) < 2**32
                and c.get("source_ids_tracked", 0) <= 64),
            "hostile_rss_bounded": all(h["oversized_1200mb_peak_mib"] - h["rss_before_mib"] < 900 for h in self.hostile),
        }
        return {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "config": {"minutes": self.args.minutes, "model": self.args.model, "rate": self.args.rate,
                       "size": self.args.size, "fault_every_s": self.fault_every, "warmup_s": self.warmup_s,
                       "window_s": self.window_s, "sample_s": self.args.sample_s},
            "run_exit_code": rc,
            "summary": summary,
            "frames_unaccounted": unaccounted,
            "rss_mib_start": med(base, "rss_mib"), "rss_mib_end": med(last, "rss_mib"),
            "rss_growth_pct": round(rss_growth, 3), "rss_slope_mib_per_hour": round(slope, 3),
            "fd_growth": fd_growth, "thread_growth": thread_growth,
            "latency_windows": windows,
            "subscriber": {"overlays": sub.overlays, "duplicates": sub.duplicates, "reconnects": sub.reconnects,
                           "invalid": sub.invalid, "status_messages": len(sub.statuses),
                           "status_violations": sub.status_violations[:20], "source_states_seen": states},
            "faults": self.events, "malformed_sent": self.malformed_sent, "sender_starts": self.sim_starts,
            "rss_peak_mib": round(self.rss_peak / 2**20, 1), "hostile_sender": self.hostile,
            "samples": self.samples,
            "checks": checks, "passed": all(checks.values()),
            "logs": str(self.tmp),
        }


def markdown(r: dict[str, Any]) -> str:
    c = (r["summary"] or {}).get("counters", {})
    lines = [
        f"# Soak {r['date']}", "",
        f"{r['config']['minutes']} min, model `{r['config']['model']}`, sender {r['config']['rate']} fps at "
        f"{r['config']['size']}x{r['config']['size']}, a fault every {r['config']['fault_every_s']:.0f} s, "
        f"warm-up {r['config']['warmup_s']:.0f} s, {r['host']['cpus']} CPUs. **{'PASSED' if r['passed'] else 'FAILED'}**", "",
        "| check | result |", "| --- | --- |",
        *[f"| {k} | {'ok' if v else 'FAIL'} |" for k, v in r["checks"].items()], "",
        "| figure | value |", "| --- | --- |",
        f"| RSS after warm-up -> end (MiB) | {r['rss_mib_start']:.1f} -> {r['rss_mib_end']:.1f} |",
        f"| RSS growth | {r['rss_growth_pct']:.2f} % ({r['rss_slope_mib_per_hour']:+.2f} MiB/h fitted) |",
        f"| fd growth / thread growth | {r['fd_growth']} / {r['thread_growth']} |",
        f"| frames received / processed / published | {c.get('received')} / {c.get('processed')} / {c.get('published')} |",
        f"| dropped | {c.get('dropped')} |",
        f"| invalid by reason | {c.get('invalid_by_reason')} |",
        f"| frames unaccounted | {r['frames_unaccounted']} |",
        f"| lost upstream / seq jumps / source ids tracked, evicted | {c.get('lost_upstream')} / {c.get('seq_jumps')} / "
        f"{c.get('source_ids_tracked')}, {c.get('source_ids_evicted')} |",
        f"| peak RSS whole run (MiB, sampled every 50 ms) | {r['rss_peak_mib']} |",
        *[f"| hostile sender #{i + 1}: RSS before / 1.2 GB multipart / largest frame (64 MiB) / ids+liar (peak MiB) | "
          f"{h['rss_before_mib']} / {h['oversized_1200mb_peak_mib']} / {h['largest_frame_peak_mib']} / "
          f"{h['ids_and_liar_peak_mib']} |" for i, h in enumerate(r["hostile_sender"])],
        f"| overlays received by the subscriber / repeated | {r['subscriber']['overlays']} / {r['subscriber']['duplicates']} |",
        f"| faults injected | {len(r['faults'])} ({', '.join(sorted({e.get('fault', 'error') for e in r['faults']}))}) |",
        f"| source states seen in status | {', '.join(r['subscriber']['source_states_seen'])} |", "",
        "## Overlay latency per window (capture -> subscriber)", "",
        "| window start (s) | overlays | p50 ms | p99 ms | max ms |", "| --- | --- | --- | --- | --- |",
        *[f"| {w['start_s']:.0f} | {w['overlays']} | {w['p50_ms']} | {w['p99_ms']} | {w['max_ms']} |" for w in r["latency_windows"]],
        "",
    ]
    return "\n".join(lines)


def default_model() -> str:
    from medstream.runtime.models import BUNDLED, MODELS_DIR

    return "ultrasound" if (MODELS_DIR / BUNDLED["ultrasound"]).is_file() else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--model", default=None, help="model name or path (default: the bundled ultrasound model)")
    p.add_argument("--rate", type=float, default=60.0, help="sender frames per second (above the model's capacity)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fault-every", type=float, default=None, help="seconds between faults (default: a quarter of the run)")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--window-s", type=float, default=None, help="latency window (default 60 s)")
    p.add_argument("--warmup-s", type=float, default=None, help="ignored for RSS growth (default 20 %%, at most 300 s)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for soak-<date>.json/.md")
    args = p.parse_args(argv)
    if args.model is None:
        args.model = default_model()
        if not args.model:
            p.error("the bundled ultrasound model is not built yet: give --model PATH")
    if args.fault_every is None and args.minutes >= 10:
        args.fault_every = 60.0
    result = Soak(args).run()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{dt.datetime.now():%Y-%m-%d-%H%M}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written {out / stem}.json and .md")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
