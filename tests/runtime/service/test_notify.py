"""sd_notify against a real AF_UNIX datagram socket (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from medstream.runtime.service import notify
from medstream.runtime.service.notify import NotifyObserver, SdNotifier, status_line


@pytest.fixture
def dgram(tmp_path):
    """A bound datagram socket standing in for systemd's notify socket; yields (NOTIFY_SOCKET, recv)."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)

    def recv() -> str:
        return sock.recv(4096).decode()

    def pending() -> list[str]:
        out = []
        sock.setblocking(False)
        try:
            while True:
                out.append(sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            sock.settimeout(2)
        return out

    recv.pending = pending
    yield str(path), recv
    sock.close()


def test_no_notify_socket_is_a_silent_no_op():
    n = SdNotifier({})
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False
    obs = NotifyObserver(n)  # the whole observer works without systemd
    obs.on_ready({})
    obs.on_progress()
    obs.on_stop({})


def test_ready_status_stopping_reach_the_socket(dgram):
    path, recv = dgram
    n = SdNotifier({"NOTIFY_SOCKET": path})
    assert n.ready("ready: model m")
    assert recv() == "READY=1\nSTATUS=ready: model m"
    assert n.status("line one\nline two")  # a newline would start a new KEY=value assignment
    assert recv() == "STATUS=line one line two"
    assert n.stopping()
    assert recv() == "STOPPING=1"


def test_abstract_namespace_socket():
    name = f"medstream-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert SdNotifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_is_rate_limited_to_half_of_watchdog_usec(dgram):
    path, recv = dgram
    n = SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval_s == 1.0
    sent = [n.watchdog(now=t) for t in (100.0, 100.3, 100.99, 101.0, 101.5, 102.2)]
    assert sent == [True, False, False, True, False, True]
    assert recv.pending() == ["WATCHDOG=1"] * 3


@pytest.mark.parametrize("env, interval", [
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),          # meant for another process
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({}, None),
])
def test_watchdog_honours_watchdog_pid_and_usec(dgram, env, interval):
    path, _ = dgram
    n = SdNotifier({"NOTIFY_SOCKET": path, **env})
    assert n.watchdog_interval_s == interval
    assert n.watchdog(now=0.0) is (interval is not None)


def test_unreachable_socket_never_raises(tmp_path):
    n = SdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled and n.ready() is False and n.ready() is False


def test_observer_maps_hooks_to_messages(dgram):
    path, recv = dgram
    obs = NotifyObserver(SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}))
    assert recv() == "STATUS=loading model and warming up"
    obs.on_ready({"model_id": "m1", "backend": "onnxruntime", "device": "cpu", "publish": "tcp://127.0.0.1:1"})
    assert recv().startswith("READY=1\nSTATUS=ready: model m1 on onnxruntime/cpu")
    obs.on_progress()
    obs.on_progress()  # within 5 s of the first: not sent
    status = {"source_state": "live", "fps_in": 30.0, "fps_out": 29.5,
              "latency_ms": {"total": {"p50": 4.25, "p99": 9.5}},
              "counters": {"processed": 100, "dropped": {"superseded": 3}}}
    obs.on_status(status)
    obs.on_stop({"counters": {"processed": 100, "received": 103}})
    assert recv.pending() == [
        "WATCHDOG=1",
        "STATUS=live: 30.0 fps in, 29.5 fps out, latency p50 4.2 ms p99 9.5 ms, processed 100, drops: superseded 3",
        "STOPPING=1\nSTATUS=stopped: processed 100 of 103 frames",
    ]


def test_status_line_before_any_latency():
    assert "latency n/a" in status_line({"source_state": "starting", "counters": {}})


def test_notify_stopping_for_signal_handlers(dgram, monkeypatch):
    path, recv = dgram
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setattr(notify, "_default", None)
    assert notify.notify_stopping("SIGTERM")
    assert recv() == "STOPPING=1\nSTATUS=SIGTERM"
