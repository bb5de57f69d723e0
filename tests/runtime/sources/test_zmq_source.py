"""ZmqSource against real PUB sockets on 127.0.0.1 (OS-picked ports) and ipc; every read has a timeout."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from medstream.runtime.errors import ConfigError, SourceError
from medstream.runtime.frame import Frame
from medstream.runtime.security import apply_curve_client
from medstream.runtime.sources import open_source
from medstream.runtime.wire import FRAME_SCHEMA, WireError, WireLimits, encode_frame


def make_frame(seq: int, h: int = 48, w: int = 64, truth: bool = False) -> Frame:
    image = ((np.arange(h * w, dtype=np.uint32) + seq) % 251).astype(np.uint8).reshape(h, w)
    mask = (image > 128).astype(np.uint8) if truth else None
    return Frame(seq=seq, t_capture_ns=1_700_000_000_000_000_000 + seq, image=image, source_id="probe-1",
                 truth=mask, color_order="gray")


def good_header(seq: int = 1, **overrides) -> bytes:
    header = {"schema": FRAME_SCHEMA, "source_id": "probe-1", "seq": seq, "t_capture_ns": 5,
              "dtype": "|u1", "shape": [4, 4], "color_order": "gray", **overrides}
    return json.dumps(header).encode()


def pump_until_connected(pub: zmq.Socket, src, deadline_s: float = 5.0, seq: int = 0) -> Frame:
    """Publish until the subscription has propagated (ZeroMQ's slow joiner), then drain the queue."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pub.send_multipart(encode_frame(make_frame(seq)))
        frame = src.read(0.02)
        if frame is not None:
            while src.read(0.05) is not None:
                pass
            return frame
    raise AssertionError("no frame arrived within the deadline")


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def pub_src(ctx):
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    src = open_source(f"zmq+tcp://127.0.0.1:{port}?id=us-1")
    src.open()
    pump_until_connected(pub, src)
    yield pub, src, port
    src.close()


def test_frames_arrive_with_seq_pixels_and_truth(pub_src):
    pub, src, _ = pub_src
    for seq in range(100, 105):
        sent = make_frame(seq, truth=seq % 2 == 0)
        pub.send_multipart(encode_frame(sent))
        got = src.read(2.0)
        assert got is not None
        assert got.seq == seq
        assert got.t_capture_ns == sent.t_capture_ns
        assert got.source_id == "probe-1"
        np.testing.assert_array_equal(got.image, sent.image)
        if sent.truth is None:
            assert got.truth is None
        else:
            np.testing.assert_array_equal(got.truth, sent.truth)
        assert got.t_receive_ns > 0
    info = src.describe()
    assert info["source_id"] == "us-1"
    assert info["connected"] is True
    assert info["last_message_age_s"] < 1.0
    assert info["mode"] == "connect"


@pytest.mark.parametrize(("parts", "reason"), [
    ([b"frame"], "bad_parts"),
    ([b"frame", b"{not json", b"\0" * 16], "bad_header"),
    ([b"frame", good_header(), b"\0" * 15], "size_mismatch"),
    ([b"frame", good_header(dtype="<f8"), b"\0" * 128], "bad_dtype"),
    ([b"frame", good_header(shape=[4]), b"\0" * 4], "bad_shape"),
    ([b"frame", good_header(seq=-1), b"\0" * 16], "bad_field"),
    ([b"frame", good_header(), b"\0" * 16, b"\0" * 16, b"\0"], "bad_parts"),
    ([b"framez", good_header(), b"\0" * 16], "bad_topic"),  # passes the prefix subscription
])
def test_malformed_message_raises_wire_error_then_stream_continues(pub_src, parts, reason):
    pub, src, _ = pub_src
    pub.send_multipart(parts)
    with pytest.raises(WireError) as info:
        src.read(2.0)
    assert info.value.reason == reason
    assert src.invalid_messages == 1
    pub.send_multipart(encode_frame(make_frame(7)))
    got = src.read(2.0)
    assert got is not None and got.seq == 7


def test_other_topics_are_filtered_out(pub_src):
    pub, src, _ = pub_src
    pub.send_multipart([b"overlay", b"{}", b""])
    pub.send_multipart([b"status", b"{}"])
    pub.send_multipart(encode_frame(make_frame(9)))
    got = src.read(2.0)
    assert got is not None and got.seq == 9
    assert src.invalid_messages == 0


def test_stopped_sender_read_returns_none_within_timeout(pub_src):
    pub, src, _ = pub_src
    pub.close(linger=0)
    for timeout in (0.0, 0.05, 0.2):
        t0 = time.perf_counter()
        assert src.read(timeout) is None
        assert time.perf_counter() - t0 < timeout + 0.15
    time.sleep(0.05)
    assert src.last_message_age_s is not None and src.last_message_age_s >= 0.25
    assert src.connected is False


def test_sender_restart_on_same_port_resumes_without_reopening(ctx, pub_src):
    pub, src, port = pub_src
    socket_before = src._socket
    pub.close(linger=0)
    assert src.read(0.2) is None
    pub2 = ctx.socket(zmq.PUB)
    pub2.linger = 0
    end = time.monotonic() + 3.0
    while True:
        try:
            pub2.bind(f"tcp://127.0.0.1:{port}")
            break
        except zmq.ZMQError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
    frame = pump_until_connected(pub2, src, seq=1000)
    assert frame.seq == 1000
    assert src._socket is socket_before and src.is_open
    assert src.disconnects >= 1
    assert src.connected is True


def test_bind_mode_for_a_sender_that_connects(ctx):
    src = open_source("zmq+tcp://127.0.0.1:*?bind=1")
    with src:
        endpoint = src.endpoint
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith("*")
        pub = ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.connect(endpoint)
        assert pump_until_connected(pub, src).seq == 0
        assert src.describe()["mode"] == "bind"


def test_ipc_transport(ctx, tmp_path):
    path = tmp_path / "frames.sock"
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(f"ipc://{path}")
    with open_source(f"zmq+ipc://{path}") as src:
        pump_until_connected(pub, src)
        pub.send_multipart(encode_frame(make_frame(3)))
        got = src.read(2.0)
        assert got is not None and got.seq == 3


def test_curve_encrypted_stream_needs_the_keys(ctx):
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.curve_server = True
    pub.curve_secretkey = server_secret
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    uri = f"zmq+tcp://127.0.0.1:{port}"
    curve = {"server_public_key": server_public, "public_key": client_public, "secret_key": client_secret}
    with open_source(uri, curve=curve) as src:
        assert pump_until_connected(pub, src).seq == 0
        assert src.describe()["curve"] is True
    with open_source(uri) as plain:  # no keys: the handshake fails and nothing is ever delivered
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pub.send_multipart(encode_frame(make_frame(1)))
            assert plain.read(0.02) is None
        assert plain.connected is False
        # libzmq reports this as a mechanism mismatch (then gives up: SourceError on a later read) or
        # as a failed handshake it keeps retrying, depending on which side closes first.
        assert plain.last_handshake_error is not None
        assert plain.describe()["last_handshake_error"] == plain.last_handshake_error


def test_curve_settings_are_checked(ctx):
    sock = ctx.socket(zmq.SUB)
    try:
        assert apply_curve_client(sock, None) is False
        with pytest.raises(ConfigError, match="secret_key"):
            apply_curve_client(sock, {"server_public_key": "x" * 40, "public_key": "y" * 40})
        public, secret = zmq.curve_keypair()
        with pytest.raises(ConfigError, match="12 characters"):
            apply_curve_client(sock, {"server_public_key": "tooshort1234", "public_key": public, "secret_key": secret})
    finally:
        sock.close(linger=0)


def read_until_source_error(src, deadline_s: float = 3.0) -> SourceError:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            assert src.read(0.05) is None
        except SourceError as exc:
            return exc
    raise AssertionError("no SourceError within the deadline")


def test_oversized_message_is_refused_before_allocation_then_reopen_recovers(ctx):
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    limits = WireLimits(max_payload_bytes=4096, max_header_bytes=4096)
    src = open_source(f"zmq+tcp://127.0.0.1:{port}", limits=limits)
    with src:
        pump_until_connected(pub, src)
        pub.send_multipart(encode_frame(make_frame(1, h=128, w=128)))  # 16 KiB > MAXMSGSIZE
        # libzmq drops a peer that breaks MAXMSGSIZE and never reconnects it: reported, not silent.
        error = read_until_source_error(src)
        assert f"127.0.0.1:{port}" in str(error) and "will not retry" in str(error)
    with src:  # what the pipeline does on SourceError
        assert pump_until_connected(pub, src, seq=2).seq == 2


def test_uri_and_socket_errors():
    with pytest.raises(ConfigError, match="HOST:PORT"):
        open_source("zmq+tcp://localhost")
    with pytest.raises(ConfigError, match="hwm"):
        open_source("zmq+tcp://127.0.0.1:5555?hwm=0")
    with pytest.raises(ConfigError, match="heartbeat"):
        open_source("zmq+tcp://127.0.0.1:5555?heartbeat=abc")
    src = open_source("zmq+tcp://127.0.0.1:5555")
    with pytest.raises(SourceError, match="not open"):
        src.read(0.01)


def test_bind_conflict_names_the_endpoint():
    with open_source("zmq+tcp://127.0.0.1:*?bind=1") as first:
        endpoint = first.endpoint
        port = endpoint.rsplit(":", 1)[1]
        second = open_source(f"zmq+tcp://127.0.0.1:{port}?bind=1")
        with pytest.raises(SourceError, match=f"127.0.0.1:{port}"):
            second.open()
        assert second.is_open is False
