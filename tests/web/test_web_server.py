"""`medstream view --web` as a real process, fed by real ZeroMQ sockets, read by real HTTP/WebSocket clients.

The test plays the frame sender and `medstream run` (two PUB sockets with wire-format messages it
builds itself), so it knows exactly which frame and mask belong to each seq. No browser here (see
test_web_view.py): this checks the token gate, TLS, the bind rules, pairing over the whole path and
the per-page latest-only drop counting with a page that never acknowledges.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import zmq

from medstream.runtime.frame import Contour, Frame, Overlay
from medstream.runtime.wire import encode_frame, encode_overlay, encode_status
from tests.conftest import free_port

pytest.importorskip("starlette", reason="the [web] extra is not installed: pip install -e '.[dev]'")
pytest.importorskip("uvicorn", reason="the [web] extra is not installed: pip install -e '.[dev]'")
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

MEDSTREAM = [sys.executable, "-m", "medstream.cli.main"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def frame_for(seq: int, t: int) -> Frame:
    rng = np.random.default_rng(seq)
    return Frame(seq=seq, t_capture_ns=t, image=rng.integers(0, 256, (40, 64), dtype=np.uint8), source_id="t")


def mask_for(seq: int) -> np.ndarray:
    mask = np.zeros((20, 32), np.uint8)
    mask[2:2 + seq % 15, 3:9] = 1
    mask[10:12, 20:20 + seq % 10] = 2
    return mask


class FakeUpstream(threading.Thread):
    """Frames on one PUB, overlays (every other frame, one frame late) and status on another."""

    def __init__(self, frames_ep: str, overlays_ep: str) -> None:
        super().__init__(daemon=True)
        ctx = zmq.Context.instance()
        self.fpub, self.opub = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
        self.fpub.bind(frames_ep)
        self.opub.bind(overlays_ep)
        self.stop = threading.Event()
        self.sent: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self.start()

    def run(self) -> None:
        t0 = time.time_ns()
        seq = 0
        while not self.stop.is_set():
            t = t0 + seq * 20_000_000
            frame = frame_for(seq, t)
            self.fpub.send_multipart(encode_frame(frame))
            self.sent[seq] = (t, frame.image, mask_for(seq))
            if seq % 2 == 1:
                prev = seq - 1
                tp, _, mp = self.sent[prev]
                self.opub.send_multipart(encode_overlay(Overlay(
                    seq=prev, t_capture_ns=tp, source_id="t", model_id="fake", class_names=("bg", "a", "b"),
                    class_colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)), mask=mp, frame_size=(40, 64),
                    contours=[Contour(1, np.array([[3, 2], [9, 2], [9, 8]], np.int32))], areas_px={"a": 1},
                    t_publish_ns=time.time_ns())))
            if seq % 10 == 0:
                self.opub.send_multipart(encode_status({
                    "source_id": "t", "seq": seq, "t_capture_ns": time.time_ns(), "state": "running",
                    "source_state": "live", "fps_in": 50.0, "fps_out": 25.0,
                    "counters": {"received": seq, "processed": seq, "dropped": {}, "dropped_total": 0}}))
            seq += 1
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        self.fpub.close(0)
        self.opub.close(0)


def start_view(*extra: str, port: int, frames_ep: str, overlays_ep: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(MEDSTREAM + ["view", "--web", f"127.0.0.1:{port}", "--connect", overlays_ep,
                                         "--frames-from", frames_ep, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"open (https?://\S+)", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("the web view printed no URL:\n" + "".join(lines))


@pytest.fixture
def upstream():
    frames_ep, overlays_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    up = FakeUpstream(frames_ep, overlays_ep)
    yield up, frames_ep, overlays_ep
    up.close()


@pytest.fixture
def view(upstream):
    up, frames_ep, overlays_ep = upstream
    port = free_port()
    proc, url = start_view("--web-image", "png", port=port, frames_ep=frames_ep, overlays_ep=overlays_ep)
    token = url.split("token=", 1)[1]
    yield up, port, token
    proc.terminate()
    proc.wait(10)


def http_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    try:
        with NO_PROXY.open(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def unpack(message: bytes):
    (n,) = struct.unpack("<I", message[:4])
    head = json.loads(message[4:4 + n])
    rest = message[4 + n:]
    ni = head["frame"]["bytes"] if head["frame"] else 0
    image = cv2.imdecode(np.frombuffer(rest[:ni], np.uint8), cv2.IMREAD_UNCHANGED) if ni else None
    mask = cv2.imdecode(np.frombuffer(rest[ni:], np.uint8), cv2.IMREAD_UNCHANGED) if head["overlay"] else None
    return head, image, mask


def test_a_wrong_or_missing_token_gets_nothing(view):
    _, port, token = view
    base = f"http://127.0.0.1:{port}"
    for path in ("/", "/app.js", "/style.css"):
        assert http_status(f"{base}{path}")[0] == 401
        assert http_status(f"{base}{path}?token=wrong")[0] == 401
        assert http_status(f"{base}{path}", {"Cookie": f"medstream_web_{port}=wrong"})[0] == 401
    for url in (f"ws://127.0.0.1:{port}/ws", f"ws://127.0.0.1:{port}/ws?token=wrong"):
        with pytest.raises(InvalidStatus) as err:
            connect(url, proxy=None, open_timeout=5)
        assert err.value.response.status_code == 403
    with pytest.raises(InvalidStatus):  # right token, page from another site: cross-site websocket hijacking
        connect(f"ws://127.0.0.1:{port}/ws?token={token}", proxy=None, origin="http://evil.example", open_timeout=5)
    # and the right token does get in, with the page's safety headers and a cookie for the page's own requests
    status, headers = http_status(f"{base}/?token={token}")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"] and headers["referrer-policy"] == "no-referrer"
    assert f"medstream_web_{port}={token}" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
    assert http_status(f"{base}/app.js", {"Cookie": f"medstream_web_{port}={token}"})[0] == 200
    assert http_status(f"{base}/style.css", {"Authorization": f"Bearer {token}"})[0] == 200


def test_views_carry_each_overlay_on_its_own_frame_and_a_slow_page_only_costs_itself(view):
    up, port, token = view
    url = f"ws://127.0.0.1:{port}/ws?token={token}"
    with connect(url, proxy=None, max_size=None) as fast, connect(url, proxy=None, max_size=None) as slow:
        checked, deadline = 0, time.monotonic() + 20
        while checked < 20 and time.monotonic() < deadline:
            msg = fast.recv(timeout=5)
            if isinstance(msg, str):
                continue
            fast.send(json.dumps({"type": "ack"}))
            head, image, mask = unpack(msg)
            t, sent_image, sent_mask = up.sent[head["seq"]]
            np.testing.assert_array_equal(image, sent_image)  # PNG frames: the very frame of that seq
            if head["overlay"] is None:
                continue
            assert head["overlay"]["seq"] == head["seq"] and head["overlay"]["t_capture_ns"] == str(t)
            np.testing.assert_array_equal(mask, sent_mask)
            checked += 1
        assert checked == 20
        # the slow page never acknowledged: one view at a time went to it (a new one only when the previous
        # was written off after the 2 s ack timeout), the rest were dropped for it alone
        views, health = 0, None
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            try:
                msg = slow.recv(timeout=0.5)
            except TimeoutError:
                continue
            if isinstance(msg, bytes):
                views += 1
            elif json.loads(msg)["type"] == "health":
                health = json.loads(msg)
        c = health["client"]
        assert views == c["sent"] == 1 + c["ack_timeouts"] and c["in_flight"] == 1 and c["acked"] == 0
        assert c["ack_timeouts"] <= 2
        assert c["dropped"]["superseded"] >= 20
        assert c["offered"] == c["sent"] + c["dropped_total"] + c["waiting"]
        assert health["status"]["fps_in"] == 50.0 and health["web"]["overlays_in"] > 20


def test_a_non_loopback_bind_without_tls_is_refused_before_anything_binds():
    port = free_port()
    r = subprocess.run(MEDSTREAM + ["view", "--web", f"0.0.0.0:{port}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "refusing to serve the web view on 0.0.0.0" in r.stderr and "--web-cert" in r.stderr
    r = subprocess.run(MEDSTREAM + ["view", "--web", f"127.0.0.1:{port}", "--web-cert", "/nonexistent.pem",
                                    "--web-key", "/nonexistent.key"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_tls(upstream, tmp_path):
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    _, frames_ep, overlays_ep = upstream
    port = free_port()
    proc, url = start_view("--web-cert", str(cert), "--web-key", str(key), port=port, frames_ep=frames_ep,
                           overlays_ep=overlays_ep)
    try:
        assert url.startswith(f"https://127.0.0.1:{port}/?token=")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
        with opener.open(url, timeout=5) as r:
            assert r.status == 200 and "Secure" in r.headers["set-cookie"]
        with connect(url.replace("https://", "wss://").replace("/?", "/ws?"), ssl=ctx, proxy=None) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
    finally:
        proc.terminate()
        proc.wait(10)
