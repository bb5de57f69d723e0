"""The pipeline against real sockets and a real ONNX Runtime session (tiny model, fast)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from medstream.runtime.config import load_config
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.stream import build_stream
from medstream.runtime.wire import decode_overlay, decode_status, encode_frame


class Collector:
    """A SUB socket on the pipeline's publisher, collecting overlays and status in a thread."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.overlays, self.statuses = [], []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(50):
                parts = self.sock.recv_multipart()
                if parts[0] == b"overlay":
                    self.overlays.append((time.time_ns(), decode_overlay(parts)))
                elif parts[0] == b"status":
                    self.statuses.append(decode_status(parts))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def _pipeline(tiny_model, endpoint, source, **extra):
    cfg = load_config(None, {"source": source, "model": str(tiny_model), "publish": endpoint, "backend": "onnxruntime",
                             "threads": 1, **extra})
    return build_stream(cfg)


def _run_in_thread(pipeline, **kw):
    """Start ``pipeline.run`` in a thread; return once its source is open and subscribed."""
    result = {}
    t = threading.Thread(target=lambda: result.update(pipeline.run(**kw)), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not pipeline.source.is_open and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # ZeroMQ's subscription handshake (the slow-joiner window)
    return t, result


def test_source_faster_than_model_drops_superseded_and_accounts_exactly(tiny_model, endpoint):
    # fps=0: the phantom renders as fast as it can; 15 ms injected into inference makes the model the bottleneck.
    pipe = _pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=0&width=128&height=128",
                     inject={"delay_ms": {"infer": 15}})
    col = Collector(endpoint)
    pipe.prepare()
    time.sleep(0.3)  # let the subscriber join
    summary = pipe.run(duration_s=2.0)
    time.sleep(0.2)
    col.close()
    c = summary["counters"]
    assert c["dropped"].get("superseded", 0) > c["processed"], "a fast source must supersede most frames"
    assert c["received"] == c["processed"] + c["dropped_total"]
    assert c["in_flight"] == 0 and summary["accounting_ok"]
    # Latency bounded: the newest frame waits at most one inference; nothing queues.
    assert summary["latency_ms"]["total"]["p99"] < 15 * 4
    assert summary["latency_ms"]["infer"]["p50"] >= 15  # the injected delay is visible where it was put
    seqs = [o.seq for _, o in col.overlays]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len(col.overlays) >= c["processed"] - 2  # the subscriber got (nearly) every published overlay


def test_overlay_carries_the_frames_seq_and_capture_time(tiny_model, endpoint):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    pipe = _pipeline(tiny_model, endpoint, f"zmq+tcp://127.0.0.1:{port}")
    col = Collector(endpoint)
    t, result = _run_in_thread(pipe, max_frames=20)
    sent = {}
    for i in range(20):
        img = np.full((64, 64), 30 + i * 10, np.uint8)  # brightness steps through all three classes
        f = Frame(seq=1000 + i, t_capture_ns=now_ns(), image=img, source_id="probe-A")
        sent[f.seq] = f
        pub.send_multipart(encode_frame(f))
        time.sleep(0.03)
    t.join(10)
    time.sleep(0.2)
    col.close()
    pub.close()
    assert result["accounting_ok"] and result["counters"]["received"] == 20
    assert len(col.overlays) == result["counters"]["processed"] > 0
    for _, ov in col.overlays:
        f = sent[ov.seq]
        assert ov.t_capture_ns == f.t_capture_ns and ov.source_id == "probe-A"
        x = float(f.image[0, 0]) / 255.0
        expected_class = int(np.argmax([0.0, 3 * x - 1, 6 * x - 3]))
        assert np.all(ov.mask == expected_class)


@pytest.mark.parametrize("kind", ["bad_header", "bad_schema", "size_mismatch", "bad_dtype", "too_large", "bad_parts", "bad_field"])
def test_malformed_frames_are_counted_and_the_loop_goes_on(tiny_model, endpoint, kind):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    pipe = _pipeline(tiny_model, endpoint, f"zmq+tcp://127.0.0.1:{port}")
    t, result = _run_in_thread(pipe, max_frames=3)
    good = encode_frame(Frame(seq=1, t_capture_ns=now_ns(), image=np.zeros((64, 64), np.uint8)))
    header = good[1]
    bad = {
        "bad_header": [b"frame", b"{not json", bytes(good[2])],
        "bad_schema": [b"frame", header.replace(b"medstream.frame/1", b"other/9"), bytes(good[2])],
        "size_mismatch": [b"frame", header, bytes(good[2])[:-1]],
        "bad_dtype": [b"frame", header.replace(b'"|u1"', b'"<f8"'), bytes(good[2])],
        "too_large": [b"frame", header.replace(b"[64,64]", b"[100000,100000]"), b""],
        "bad_parts": [b"frame", header],
        "bad_field": [b"frame", header.replace(b'"seq":1', b'"seq":-5'), bytes(good[2])],
    }[kind]
    pub.send_multipart(bad)
    time.sleep(0.05)
    pub.send_multipart(encode_frame(Frame(seq=2, t_capture_ns=now_ns(), image=np.zeros((64, 64), np.uint8))))
    time.sleep(0.1)
    pub.send_multipart(bad)
    time.sleep(0.05)
    t.join(10)
    pub.close()
    c = result["counters"]
    assert c["received"] == 3 and c["processed"] == 1
    assert c["dropped"] == {"invalid": 2}
    assert c["invalid_by_reason"] == {kind: 2}


def test_stalled_source_is_reported_then_resumes(tiny_model, endpoint):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    pipe = _pipeline(tiny_model, endpoint, f"zmq+tcp://127.0.0.1:{port}", stall_timeout_s=0.5, status_interval_s=0.2)
    col = Collector(endpoint)
    t, result = _run_in_thread(pipe, max_frames=10)

    def send(seq):
        pub.send_multipart(encode_frame(Frame(seq=seq, t_capture_ns=now_ns(), image=np.zeros((64, 64), np.uint8))))

    for i in range(5):
        send(i)
        time.sleep(0.05)
    time.sleep(1.5)  # the sender stalls
    states_during_stall = [s["source_state"] for s in col.statuses]
    n_overlays_during_stall = len(col.overlays)
    time.sleep(0.3)
    assert len(col.overlays) == n_overlays_during_stall, "no overlay may be repeated while the source is silent"
    for i in range(5, 10):
        send(i)
        time.sleep(0.05)
    t.join(10)
    time.sleep(0.2)
    col.close()
    pub.close()
    assert "stalled" in states_during_stall
    assert result["counters"]["received"] == 10 and result["accounting_ok"]
    assert [o.seq for _, o in col.overlays][-1] == 9
    assert col.statuses[-1]["state"] == "stopped"


def test_status_is_published_at_least_once_a_second_with_counters(tiny_model, endpoint):
    pipe = _pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=20&width=64&height=64")
    col = Collector(endpoint)
    time.sleep(0.2)
    summary = pipe.run(duration_s=2.5)
    time.sleep(0.2)
    col.close()
    assert len(col.statuses) >= 3
    gaps = np.diff([s["t_capture_ns"] for s in col.statuses]) / 1e9
    assert gaps.max() <= 1.1
    last = col.statuses[-1]
    assert last["counters"]["received"] == summary["counters"]["received"]
    assert {"p50", "p99"} <= set(col.statuses[-2]["latency_ms"]["total"])


def test_backend_errors_cost_one_frame_each(tiny_model, endpoint):
    pipe = _pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=50&width=64&height=64&frames=20",
                     inject={"error_every": 4})
    summary = pipe.run()
    c = summary["counters"]
    assert c["received"] == 20
    assert c["dropped"].get("backend_error", 0) >= 3
    assert c["processed"] + c["dropped_total"] == 20 and summary["accounting_ok"]


def test_frame_that_cannot_fit_the_model_is_invalid_not_fatal(tiny_model, endpoint):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    pipe = _pipeline(tiny_model, endpoint, f"zmq+tcp://127.0.0.1:{port}", roi=[0, 0, 100, 100])
    t, result = _run_in_thread(pipe, max_frames=2)
    pub.send_multipart(encode_frame(Frame(seq=0, t_capture_ns=now_ns(), image=np.zeros((64, 64), np.uint8))))
    time.sleep(0.1)
    pub.send_multipart(encode_frame(Frame(seq=1, t_capture_ns=now_ns(), image=np.zeros((200, 200), np.uint8))))
    t.join(10)
    pub.close()
    c = result["counters"]
    assert c["dropped"] == {"invalid": 1} and c["invalid_by_reason"] == {"contract_mismatch": 1}
    assert c["processed"] == 1
