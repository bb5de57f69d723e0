"""Shared pieces of the fault-matrix tests: a collecting subscriber, a pipeline runner, the invariant."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import zmq

from medstream.runtime.config import load_config
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.stream import build_stream
from medstream.runtime.wire import decode_overlay, decode_status, encode_frame


class Collector:
    """SUB on the pipeline's publisher: overlays (arrival time, overlay) and status messages."""

    def __init__(self, endpoint: str, hwm: int = 100_000) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.overlays: list[tuple[float, Any]] = []
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                parts = self.sock.recv_multipart()
                if parts[0] == b"overlay":
                    self.overlays.append((time.monotonic(), decode_overlay(parts)))
                elif parts[0] == b"status":
                    self.statuses.append((time.monotonic(), decode_status(parts)))

    def states_since(self, t: float) -> list[tuple[float, str]]:
        return [(ts, s["source_state"]) for ts, s in self.statuses if ts >= t]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


class Outcomes(PipelineObserver):
    """Records every frame outcome and every proof-of-life ping, with times."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[float, str, int | None]] = []
        self.progress: list[float] = []
        self.ready = threading.Event()

    def on_ready(self, info):
        self.ready.set()

    def on_progress(self):
        self.progress.append(time.monotonic())

    def on_frame(self, outcome, overlay, stages_ms):
        self.outcomes.append((time.monotonic(), outcome, overlay.seq if overlay is not None else None))


def make_pipeline(model, endpoint, source, observers=None, **extra):
    cfg = load_config(None, {"source": source, "model": str(model), "publish": endpoint, "backend": "onnxruntime",
                             "threads": 1, "warmup_runs": 1, **extra})
    return build_stream(cfg, observers=observers)


def run_in_thread(pipeline, **kw):
    """Start ``pipeline.run`` in a thread; return (thread, result dict) once the source is open."""
    result: dict[str, Any] = {}

    def target():
        try:
            result.update(pipeline.run(**kw))
        finally:
            pipeline.publisher.close()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while pipeline.pre is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    return t, result


def frame_msg(seq: int, value: int = 100, size: int = 64) -> list:
    return encode_frame(Frame(seq=seq, t_capture_ns=now_ns(), image=np.full((size, size), value, np.uint8)))


def assert_accounting(summary_or_counters: dict[str, Any]) -> None:
    """received == processed + every drop, nothing in flight: the invariant every fault test ends with."""
    c = summary_or_counters.get("counters", summary_or_counters)
    assert c["received"] == c["processed"] + sum(c["dropped"].values()) == c["processed"] + c["dropped_total"], c
    assert c["in_flight"] == 0, c
    assert c["published"] + c["publish_failed"] == c["processed"], c
    if "accounting_ok" in summary_or_counters:
        assert summary_or_counters["accounting_ok"]


def medstream(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "medstream.cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)
