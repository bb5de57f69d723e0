"""The igtl:// source on real loopback sockets: PLUS-like servers (pyigtl's and a raw one sending hand-built bytes)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

pyigtl = pytest.importorskip("pyigtl")

from medstream.runtime.errors import ConfigError, SourceError  # noqa: E402
from medstream.runtime.sources import open_source  # noqa: E402
from medstream.runtime.wire import WireError  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.igtl._helpers import RawPlus, build_message, image_body, tilted_geometry  # noqa: E402


def _read(src, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = src.read(0.05)
        if f is not None:
            return f
    return None


def _good(seq_value: int, t_ns: int | None = None) -> bytes:
    px = np.full((8, 10), seq_value, np.uint8)
    return build_message(b"IMAGE", b"Image_Reference", image_body(px, 3, cols=np.diag([0.5, 0.25, 1.0])), t_ns=t_ns)


@pytest.fixture
def pyigtl_server():
    """pyigtl's own OpenIGTLinkServer playing PLUS (it replaces SIGINT/SIGTERM handlers: restored after)."""
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


def test_pyigtl_server_images_arrive_with_geometry_and_timestamp(pyigtl_server):
    port = free_port()
    server = pyigtl_server(port)
    src = open_source(f"igtl://127.0.0.1:{port}?device=Image_Reference")
    with src:
        assert src.connected
        pixels = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
        t_sent = 1_712_000_000.25
        m = tilted_geometry()
        server.send_message(pyigtl.TransformMessage(np.eye(4), device_name="ProbeToTracker"), wait=False)
        server.send_message(pyigtl.ImageMessage(pixels[np.newaxis], ijk_to_world_matrix=m, timestamp=t_sent,
                                                device_name="Image_Reference"), wait=False)
        frame = _read(src)
    assert frame is not None
    np.testing.assert_array_equal(frame.image, pixels)
    assert abs(frame.t_capture_ns - int(t_sent * 1e9)) < 1000  # pyigtl stamps a float of seconds
    np.testing.assert_allclose(np.asarray(frame.geometry.ijk_to_ras), m, atol=1e-5)
    np.testing.assert_allclose(frame.geometry.spacing, (0.23, 0.31, 1.0), rtol=1e-6)
    assert src.other_messages == 1  # the TRANSFORM was skipped, not counted as a frame


@pytest.mark.parametrize("bad,reason", [
    (build_message(b"IMAGE", b"Image_Reference", image_body(np.zeros((8, 10), np.uint8), 3), crc=1), "bad_crc"),
    (build_message(b"IMAGE", b"Image_Reference", image_body(np.zeros((8, 10), np.uint8), 3)[:-3]), "body_size_mismatch"),
    (build_message(b"IMAGE", b"Image_Reference", image_body(np.zeros((8, 10), np.float32), 11)), "unsupported_scalar_type"),
    (build_message(b"NOTATYPE", b"Image_Reference", b"\x00" * 16), "unknown_message_type"),
])
def test_malformed_messages_are_rejected_and_the_stream_goes_on(bad, reason):
    plus = RawPlus()
    src = open_source(f"igtl://127.0.0.1:{plus.port}?device=Image_Reference")
    try:
        src.open()
        plus.accept()
        plus.send(_good(1) + bad + _good(2))
        assert _read(src).image[0, 0] == 1
        with pytest.raises(WireError) as e:
            _read(src)
        assert e.value.reason == reason
        assert _read(src).image[0, 0] == 2  # the stream stayed in step
        assert src.invalid_messages == 1 and src.resets == 0
    finally:
        src.close()
        plus.close()


def test_a_header_that_lies_resets_the_connection_and_reconnects():
    plus = RawPlus()
    src = open_source(f"igtl://127.0.0.1:{plus.port}?device=Image_Reference&max_bytes=100000")
    try:
        src.open()
        plus.accept()
        liar = build_message(b"IMAGE", b"Image_Reference", b"", body_size=10**9)  # announces 1 GB, sends nothing
        plus.send(_good(1) + liar + _good(9))
        assert _read(src).image[0, 0] == 1
        with pytest.raises(WireError) as e:
            _read(src)
        assert e.value.reason == "too_large" and src.resets == 1
        # the next read reconnects by itself; the bytes after the lie were never trusted
        assert src.read(0.05) is None and src.connected
        plus.conn.close()
        plus.accept()
        plus.send(_good(3))
        assert _read(src).image[0, 0] == 3
        assert src.connections == 2
    finally:
        src.close()
        plus.close()


def test_server_restart_raises_source_error_then_reconnects():
    plus = RawPlus()
    port = plus.port
    src = open_source(f"igtl://127.0.0.1:{port}")
    try:
        src.open()
        plus.accept()
        plus.send(_good(1))
        assert _read(src) is not None
        plus.close()  # PLUS stops
        with pytest.raises(SourceError):
            _read(src)
        src.close()
        with pytest.raises(SourceError):  # nobody listens: the receiver would back off and retry
            src.open()
        plus = RawPlus(port)  # PLUS is back
        src.open()
        plus.accept()
        plus.send(_good(5))
        assert _read(src).image[0, 0] == 5
    finally:
        src.close()
        plus.close()


def test_bind_mode_listens_and_takes_the_newest_sender():
    port = free_port()
    src = open_source(f"igtl://127.0.0.1:{port}?bind=1")
    assert src.listen_endpoint() == f"tcp://127.0.0.1:{port}"
    import socket

    with src:
        a = socket.create_connection(("127.0.0.1", port))
        a.sendall(_good(1))
        assert _read(src).image[0, 0] == 1
        b = socket.create_connection(("127.0.0.1", port))
        b.sendall(_good(2))
        assert _read(src).image[0, 0] == 2
        a.close()
        b.close()
        assert src.read(0.1) is None  # a lost sender is not an error in bind mode: the stall shows it


def test_message_timestamp_is_the_capture_time_to_the_nanosecond():
    plus = RawPlus()
    src = open_source(f"igtl://127.0.0.1:{plus.port}")
    t = 1_712_345_678_987_654_321
    try:
        src.open()
        plus.accept()
        plus.send(_good(1, t_ns=t))
        assert _read(src).t_capture_ns == t
    finally:
        src.close()
        plus.close()


@pytest.mark.parametrize("uri", ["igtl://:18944", "igtl://127.0.0.1:18944?window=5,1",
                                 "igtl://127.0.0.1:18944?timestamp=later", "igtl://127.0.0.1:18944?max_bytes=0",
                                 "igtl://127.0.0.1:notaport"])
def test_bad_uris_are_refused_before_the_stream(uri):
    with pytest.raises(ConfigError):
        open_source(uri)
