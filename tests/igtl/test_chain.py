"""The whole chain on loopback: a PLUS-like OpenIGTLink server -> medstream (bundled ultrasound model, ONNX Runtime)
-> a ZeroMQ subscriber and Slicer-like OpenIGTLink clients, with the label maps checked against the ZeroMQ masks.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest
import zmq

pyigtl = pytest.importorskip("pyigtl")

from medstream.runtime.config import load_config  # noqa: E402
from medstream.runtime.phantom import make_phantom  # noqa: E402
from medstream.runtime.stream import build_stream  # noqa: E402
from medstream.runtime.wire import decode_overlay  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.igtl._helpers import RawPlus, RawSlicer, build_message, image_body, tilted_geometry, wait_until  # noqa: E402

SIZE = 256  # the bundled model's input: the label map and the ZeroMQ mask then have the same pixels


class ZmqCollector:
    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"overlay")
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.overlays = []  # (arrival ns, overlay)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                self.overlays.append((time.time_ns(), decode_overlay(self.sock.recv_multipart())))

    def by_seq(self):
        return {o.seq: o for _, o in self.overlays}

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def plus_server():
    """pyigtl's OpenIGTLinkServer as PLUS (it takes over SIGINT/SIGTERM: restored afterwards)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    servers = []

    def make(port):
        srv = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()
    for s, h in saved.items():
        signal.signal(s, h)


class Chain:
    """medstream between a frame server on ``plus_port`` and its two outputs."""

    def __init__(self, source: str, *, igtl_params: str = "", **extra) -> None:
        self.zmq_ep = f"tcp://127.0.0.1:{free_port()}"
        self.igtl_port = free_port()
        cfg = load_config(None, {"source": source, "model": "ultrasound", "backend": "onnxruntime", "threads": 1,
                                 "publish": [self.zmq_ep, f"igtl://127.0.0.1:{self.igtl_port}{igtl_params}"], **extra})
        self.pipe = build_stream(cfg)
        self.pipe.prepare()
        self.sink = self.pipe.publisher.sinks[1]
        self.zmq = ZmqCollector(self.zmq_ep)
        self.result: dict = {}
        self.thread = None

    def start(self, **run_kw) -> None:
        self.thread = threading.Thread(target=lambda: self.result.update(self.pipe.run(**run_kw)), daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.pipe.source.is_open and getattr(self.pipe.source, "connected", True), 10)
        time.sleep(0.3)  # ZeroMQ's subscription handshake

    def finish(self, timeout: float = 20.0) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipeline did not stop"
        time.sleep(0.2)
        self.sink_described = self.sink.describe()  # before close: the clients are still connected
        self.zmq.close()
        self.pipe.close()
        return self.result


def _frames(n: int):
    ph = make_phantom("ultrasound", fps=30, height=SIZE, width=SIZE, seed=1)
    return [ph.render(i)[0] for i in range(n)]


def _check_label_maps_match_zmq(slicer: RawSlicer, zmq_by_seq: dict, geometry: np.ndarray, sent_t: dict) -> int:
    """Every label map: same pixels as the ZeroMQ mask of its frame, the input's geometry, the frame's timestamp."""
    infos = {m.t_ns: m for m in slicer.of_type("STRING")}
    checked = foreground = 0
    for lm in slicer.of_type("IMAGE"):
        assert lm.crc_ok and lm.device == "Prediction" and lm.coord == 1
        info = json.loads(infos[lm.t_ns].text)
        ov = zmq_by_seq[info["seq"]]
        assert lm.t_ns == ov.t_capture_ns == info["t_capture_ns"]  # to the nanosecond
        assert abs(lm.t_ns - sent_t[ov.t_capture_ns]) < 1000  # and within 1 us of the float PLUS sent
        np.testing.assert_array_equal(lm.image, ov.mask)
        np.testing.assert_allclose(lm.ijk_to_ras, geometry, atol=1e-4)
        assert info["areas_mm2"]["vessel"] == pytest.approx(info["areas_px"]["vessel"] * 0.23 * 0.31, rel=1e-4)
        foreground += int(lm.image.any())
        checked += 1
    assert foreground > 0, "the model found nothing: the pixel comparison would prove little"
    return checked


def test_plus_to_medstream_to_slicer_label_maps_equal_the_zmq_masks(plus_server):
    plus_port = free_port()
    plus = plus_server(plus_port)
    chain = Chain(f"igtl://127.0.0.1:{plus_port}?device=Image_Reference")
    slicer = RawSlicer(chain.igtl_port)
    try:
        assert wait_until(lambda: chain.sink.server.client_count == 1, 5)
        n = 24
        chain.start(max_frames=n)
        assert wait_until(plus.is_connected, 5)
        m = tilted_geometry()
        sent_t = {}
        for img in _frames(n):
            t = time.time()
            msg = pyigtl.ImageMessage(img[np.newaxis], ijk_to_world_matrix=m, timestamp=t, device_name="Image_Reference")
            plus.send_message(msg, wait=True)
            sent_t[msg.timestamp] = None
            time.sleep(1 / 12)
        res = chain.finish()
        c = res["counters"]
        assert c["received"] == n == c["processed"] + c["dropped_total"] and res["accounting_ok"]
        assert c["processed"] >= n // 2
        slicer.wait_for("IMAGE", c["processed"], 5)
        zmq_by_seq = chain.zmq.by_seq()
        assert len(zmq_by_seq) == c["processed"]
        sent_ns = {ov.t_capture_ns: int(round(next(t for t in sent_t if abs(t * 1e9 - ov.t_capture_ns) < 2000) * 1e9))
                   for ov in zmq_by_seq.values()}
        checked = _check_label_maps_match_zmq(slicer, zmq_by_seq, m, sent_ns)
        assert checked == c["processed"], "Slicer kept up at 12 fps: every overlay should have arrived"
        assert chain.sink.failed == 0
    finally:
        slicer.close()


def test_a_stalled_slicer_does_not_slow_zmq_or_the_other_client():
    plus = RawPlus()
    chain = Chain(f"igtl://127.0.0.1:{plus.port}", igtl_params="?send_timeout=60")
    stalled = RawSlicer(chain.igtl_port, stall=True)
    healthy = RawSlicer(chain.igtl_port)
    try:
        assert wait_until(lambda: chain.sink.server.client_count == 2, 5)
        n = 20
        chain.start(max_frames=n)
        plus.accept()
        big = np.zeros((768, 1024), np.uint8)  # 786 KB label maps: a few fill the stalled client's buffers
        big[300:400, 400:600] = 200
        for _ in range(n):
            plus.send(build_message(b"IMAGE", b"Image_Reference", image_body(big, 3, cols=np.diag([0.1, 0.1, 1.0]))))
            time.sleep(1 / 15)
        res = chain.finish()
        c = res["counters"]
        assert c["received"] == n == c["processed"] + c["dropped_total"]
        ages_ms = [(arr - o.t_capture_ns) / 1e6 for arr, o in chain.zmq.overlays]
        assert len(ages_ms) == c["processed"] >= n // 2
        assert max(ages_ms) < 1000, f"a blocked send would show as seconds of age: {max(ages_ms):.0f} ms"
        clients = {cl["peer"]: cl for cl in chain.sink_described["clients"]}
        host, port = stalled.sock.getsockname()[:2]
        stalled_name = f"{host}:{port}"
        assert clients[stalled_name]["dropped"] > 0 and chain.sink.failed >= clients[stalled_name]["dropped"]
        assert len(healthy.wait_for("IMAGE", c["processed"] - 1, 5)) >= c["processed"] - 1
    finally:
        stalled.close()
        healthy.close()
        plus.close()


def test_malformed_messages_are_counted_by_reason_and_frames_go_on():
    plus = RawPlus()
    chain = Chain(f"igtl://127.0.0.1:{plus.port}")
    try:
        chain.start(max_frames=8)
        plus.accept()
        px = np.full((64, 64), 80, np.uint8)
        good = build_message(b"IMAGE", b"Image_Reference", image_body(px, 3))
        bad = [build_message(b"IMAGE", b"Image_Reference", image_body(px, 3), crc=7),
               build_message(b"IMAGE", b"Image_Reference", image_body(px, 3)[:-10]),
               build_message(b"IMAGE", b"Image_Reference", image_body(px, 7)),
               build_message(b"NOSUCHTYPE", b"Image_Reference", b"1234")]
        for msg in bad:
            plus.send(msg)
            time.sleep(0.05)
            plus.send(good)
            time.sleep(0.15)
        res = chain.finish()
        c = res["counters"]
        assert c["received"] == 8 == c["processed"] + c["dropped_total"]
        assert c["invalid_by_reason"] == {"bad_crc": 1, "body_size_mismatch": 1, "unsupported_scalar_type": 1,
                                          "unknown_message_type": 1}
        assert c["dropped"]["invalid"] == 4
    finally:
        plus.close()


def test_plus_restart_and_slicer_reconnect_mid_stream(plus_server):
    plus_port = free_port()
    plus = plus_server(plus_port)
    chain = Chain(f"igtl://127.0.0.1:{plus_port}")
    first = RawSlicer(chain.igtl_port)
    second = None
    try:
        assert wait_until(lambda: chain.sink.server.client_count == 1, 5)
        chain.start(duration_s=6.0)
        assert wait_until(plus.is_connected, 5)
        frames = _frames(8)

        def send(server, k):
            for img in frames[:k]:
                server.send_message(pyigtl.ImageMessage(img[np.newaxis], device_name="Image_Reference"), wait=True)
                time.sleep(0.1)

        send(plus, 4)
        assert len(first.wait_for("IMAGE", 1, 3)) >= 1
        first.close()  # Slicer disconnects ...
        plus.stop()  # ... and PLUS restarts
        time.sleep(0.5)
        assert wait_until(lambda: chain.pipe.receiver.state in ("reconnecting", "stalled"), 3)
        second = RawSlicer(chain.igtl_port)  # Slicer connects again
        plus = plus_server(plus_port)
        assert wait_until(plus.is_connected, 8), "medstream did not reconnect to the restarted PLUS"
        assert wait_until(lambda: chain.sink.server.client_count == 1, 3)
        send(plus, 6)
        assert len(second.wait_for("IMAGE", 1, 3)) >= 1
        res = chain.finish()
        c = res["counters"]
        assert c["received"] == 10 == c["processed"] + c["dropped_total"] and res["accounting_ok"]
        assert chain.pipe.source.connections >= 2
    finally:
        first.close()
        if second is not None:
            second.close()
