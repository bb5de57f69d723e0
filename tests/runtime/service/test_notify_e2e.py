"""The real runtime (`medstream run` subprocess, tiny model, synthetic source) talking to a notify
socket this test owns: READY after warm-up, watchdog pings while frames flow, none while inference
hangs, STOPPING at SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml
import zmq

from medstream.runtime.wire import decode_overlay
from tests.conftest import free_port

HANG_SEQ, HANG_S, FPS = 15, 3.0, 10


class OverlayTimes(threading.Thread):
    """Receive time (monotonic) of each overlay, by frame seq."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"overlay")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.times: dict[int, float] = {}
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            if self.sock.poll(20):
                ov = decode_overlay(self.sock.recv_multipart())
                self.times[ov.seq] = time.monotonic()

    def close(self) -> None:
        self.halt.set()
        self.join(2)
        self.sock.close()


@pytest.mark.slow
def test_ready_watchdog_hang_and_stopping(tiny_model, tmp_path):
    name = f"medstream-notify-{uuid.uuid4().hex}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(b"\0" + name.encode())  # abstract namespace, as systemd may hand out
    notify.settimeout(0.1)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "source": f"synthetic://ultrasound?fps={FPS}&width=128&height=128", "model": str(tiny_model),
        "backend": "onnxruntime", "threads": 1, "publish": endpoint,
        "inject": {"hang_at_seq": HANG_SEQ, "hang_s": HANG_S},
    }))
    env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "PYTHONUNBUFFERED": "1"}
    overlays = OverlayTimes(endpoint)
    proc = subprocess.Popen([sys.executable, "-m", "medstream.cli.main", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    msgs: list[tuple[float, str]] = []
    term_at = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                msgs.append((time.monotonic(), notify.recv(4096).decode()))
            if msgs and msgs[-1][1].startswith("STOPPING=1"):
                break
            # Run on for 1.5 s of normal frames after the hang, then SIGTERM.
            hung = overlays.times.get(HANG_SEQ)
            if term_at is None and hung is not None and time.monotonic() - hung > 1.5:
                proc.send_signal(signal.SIGTERM)
                term_at = time.monotonic()
            if proc.poll() is not None and term_at is None:
                break
        if term_at is None:
            proc.kill()
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        overlays.close()
        notify.close()
    assert term_at is not None, f"the run never got past the hang ({sorted(overlays.times)[-3:]}, {msgs[-3:]}); stderr:\n{err[-3000:]}"
    assert proc.returncode == 0, err[-3000:]

    kinds = [m.split("\n")[0].split("=")[0] for _, m in msgs]
    ready_i = next(i for i, (_, m) in enumerate(msgs) if "READY=1" in m.split("\n"))
    # Before READY: at most the "loading" status line; nothing about frames.
    assert all(k == "STATUS" and "fps" not in m for (_, m), k in zip(msgs[:ready_i], kinds[:ready_i], strict=True))
    t_ready = msgs[ready_i][0]
    assert t_ready < min(overlays.times.values()), "READY=1 must come before the first overlay"
    assert "WATCHDOG" not in kinds[:ready_i]

    pings = [t for t, m in msgs if m == "WATCHDOG=1"]
    assert len(pings) >= 6
    gaps = [(a, b) for a, b in zip(pings, pings[1:], strict=False) if b - a > 1.5]
    # Exactly one long silence: the hung inference. It ends when the hung frame's overlay goes out.
    assert len(gaps) == 1, f"watchdog gaps over 1.5 s: {[round(b - a, 2) for a, b in gaps]}"
    a, b = gaps[0]
    assert b - a >= HANG_S - 0.3
    t_hung_overlay = overlays.times[HANG_SEQ]
    assert abs(b - t_hung_overlay) < 0.5
    # The worker may still finish a frame and send its periodic STATUS just after the last ping `a`; the
    # hang itself starts before the next ping would have been due (a + 0.5 s rate limit + one 0.1 s frame;
    # 0.2 s slack for a loaded box). From then until `b` the worker is stuck: no message at all, while a
    # free-running status or ping thread would send at least two in this >= 2 s window.
    stuck_from = a + 0.5 + 0.1 + 0.2
    assert b - stuck_from >= 1.9
    during = [(round(t - a, 3), m[:120]) for t, m in msgs if stuck_from < t < b]
    assert not during, f"no message at all while the worker is stuck in inference; got {during}"
    # While frames flow the pings come every ~0.5 s (half of WATCHDOG_USEC): never a 1 s silence
    # that would make systemd kill a healthy service (1.5 s allowed for a loaded CI box).
    before_hang = [p for p in pings if t_ready < p <= a]
    after_hang = [p for p in pings if b <= p <= term_at]
    assert len(before_hang) >= 2 and len(after_hang) >= 2
    # And never faster than the rate limit (0.5 s, kept by the runtime's clock; arrival times here carry the
    # receiving thread's scheduling jitter, so 0.1 s of slack: without the limit, pings would come per frame).
    assert min(y - x for x, y in zip(pings, pings[1:], strict=False)) >= 0.4

    assert msgs[-1][1].startswith("STOPPING=1") and msgs[-1][0] >= term_at
