"""`medstream simulate` -> `medstream run` -> a subscriber: three real processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from medstream.runtime.wire import decode_frame, decode_overlay, decode_status
from tests.conftest import free_port

MEDSTREAM = [sys.executable, "-m", "medstream.cli.main"]


def _spawn(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(MEDSTREAM + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


class Sub(threading.Thread):
    """Collects decoded messages of ``topic``; ``statuses`` gets status messages when ``with_status``."""

    def __init__(self, endpoint: str, topic: bytes, decode, with_status: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.statuses = []
        if with_status:
            self.sock.setsockopt(zmq.SUBSCRIBE, b"status")
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.decode = decode
        self.items = []
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                parts = self.sock.recv_multipart()
                if parts[0] == b"status":
                    self.statuses.append(decode_status(parts))
                else:
                    self.items.append(self.decode(parts))

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        self.sock.close()


def test_three_processes_600_frames_exact_accounting(tiny_model, tmp_path):
    frames_port, overlay_port = free_port(), free_port()
    summary_path = tmp_path / "summary.json"
    overlays = Sub(f"tcp://127.0.0.1:{overlay_port}", b"overlay", decode_overlay, with_status=True)
    frames = Sub(f"tcp://127.0.0.1:{frames_port}", b"frame", decode_frame)
    run = _spawn(["run", "--source", f"zmq+tcp://127.0.0.1:{frames_port}", "--model", str(tiny_model),
                  "--publish", f"tcp://127.0.0.1:{overlay_port}", "--max-frames", "600", "--threads", "1",
                  "--summary", str(summary_path)])
    # Frames flow only once our overlay subscriber is known to be connected (it has heard a status),
    # so no overlay can be lost to ZeroMQ's slow-joiner window.
    deadline = time.monotonic() + 60
    while not overlays.statuses and time.monotonic() < deadline:
        time.sleep(0.05)
    # Two subscribers on the frame stream: medstream run and this test (to learn each frame's capture time).
    sim = _spawn(["simulate", "--publish", f"tcp://127.0.0.1:{frames_port}", "--frames", "600", "--rate", "150",
                  "--truth", "--wait-subscribers", "2", "--wait-timeout", "60"])
    try:
        assert sim.wait(timeout=90) == 0, sim.stderr.read()
        out, err = run.communicate(timeout=60)
    finally:
        for p in (sim, run):
            if p.poll() is None:
                p.kill()
    time.sleep(0.3)
    overlays.close()
    frames.close()
    assert run.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    c = summary["counters"]
    assert c["received"] == 600
    assert c["processed"] + c["dropped_total"] == 600 and c["in_flight"] == 0
    assert summary["accounting_ok"] is True
    assert len(frames.items) == 600
    capture = {f.seq: f.t_capture_ns for f in frames.items}
    assert len(overlays.items) == c["published"] > 0
    for ov in overlays.items:
        assert ov.t_capture_ns == capture[ov.seq], f"overlay {ov.seq} carries another frame's capture time"
    seqs = [ov.seq for ov in overlays.items]
    assert seqs == sorted(seqs)


def test_sigterm_mid_stream_finishes_cleanly_and_writes_summary(tiny_model, tmp_path):
    overlay_port = free_port()
    summary_path = tmp_path / "summary.json"
    overlays = Sub(f"tcp://127.0.0.1:{overlay_port}", b"overlay", decode_overlay)
    run = _spawn(["run", "--source", "synthetic://ultrasound?fps=30", "--model", str(tiny_model), "--threads", "1",
                  "--publish", f"tcp://127.0.0.1:{overlay_port}", "--summary", str(summary_path)])
    deadline = time.monotonic() + 30
    while len(overlays.items) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(overlays.items) >= 10, "no overlays arrived"
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=10)
    overlays.close()
    assert run.returncode == 0, err
    assert "SIGTERM" in err
    summary = json.loads(summary_path.read_text())
    assert summary["accounting_ok"] is True and summary["counters"]["received"] >= 10
    # The port is released: we can bind it ourselves now.
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.bind(f"tcp://127.0.0.1:{overlay_port}")
    sock.close(0)


def test_invalid_config_is_refused_before_anything_starts(tiny_model, tmp_path):
    port = free_port()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"model: {tiny_model}\npublish: tcp://127.0.0.1:{port}\nsourse: synthetic://ultrasound\nthreads: -1\n")
    run = _spawn(["run", "--config", str(cfg)])
    _, err = run.communicate(timeout=30)
    assert run.returncode == 2
    assert "unknown key 'sourse'" in err and "'threads'" in err and str(cfg) in err
    assert "nothing was started" in err
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.bind(f"tcp://127.0.0.1:{port}")  # never bound by the refused run
    sock.close(0)


def test_missing_model_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    run = _spawn(["run", "--model", str(missing), "--max-frames", "1", "--publish", f"tcp://127.0.0.1:{free_port()}"])
    _, err = run.communicate(timeout=30)
    assert run.returncode == 2
    assert str(missing) in err and ("does not exist" in err or "existing file" in err)


def test_view_saves_rendered_overlays(tiny_model, tmp_path):
    overlay_port = free_port()
    out_dir = tmp_path / "frames"
    view = _spawn(["view", "--connect", f"tcp://127.0.0.1:{overlay_port}", "--save", f"{out_dir}/", "--count", "5",
                   "--timeout", "30"])
    run = _spawn(["run", "--source", "synthetic://ultrasound?fps=30", "--model", str(tiny_model), "--threads", "1",
                  "--publish", f"tcp://127.0.0.1:{overlay_port}", "--duration", "6"])
    try:
        out, err = view.communicate(timeout=40)
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=15)
    assert view.returncode == 0, err
    pngs = sorted(Path(out_dir).glob("*.png"))
    assert len(pngs) == 5
    import cv2

    img = cv2.imread(str(pngs[0]))
    assert img.shape == (256, 256, 3)


def test_view_stops_within_a_second_of_the_end_of_the_stream(tiny_model, tmp_path):
    """The run's last status says the stream ended; the viewer stops on it instead of waiting out --timeout."""
    overlay_port, frame_port = free_port(), free_port()
    out_dir = tmp_path / "frames"
    view = _spawn(["view", "--connect", f"tcp://127.0.0.1:{overlay_port}", "--frames-from",
                   f"tcp://127.0.0.1:{frame_port}", "--save", f"{out_dir}/", "--timeout", "30"])
    run = _spawn(["run", "--source", f"zmq+tcp://127.0.0.1:{frame_port}", "--model", str(tiny_model), "--threads", "1",
                  "--publish", f"tcp://127.0.0.1:{overlay_port}", "--max-frames", "40"])
    sim = _spawn(["simulate", "--kind", "ultrasound", "--rate", "30", "--frames", "40", "--width", "64", "--height",
                  "64", "--publish", f"tcp://127.0.0.1:{frame_port}", "--wait-subscribers", "2"])
    try:
        run.communicate(timeout=60)
        t_end = time.monotonic()
        view.communicate(timeout=30)
        stopped_after = time.monotonic() - t_end
    finally:
        for p in (sim, run, view):
            if p.poll() is None:
                p.kill()
    assert run.returncode == 0 and view.returncode == 0
    assert stopped_after < 1.5, f"view kept waiting {stopped_after:.1f} s after the run ended"
    assert len(list(out_dir.glob("*.png"))) >= 30  # it drew the stream, on its frames, before stopping
