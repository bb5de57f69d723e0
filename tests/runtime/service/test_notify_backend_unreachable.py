"""Issue 17: the watchdog is not fed while no overlay can be made (remote backend unreachable, frames arriving).

A real AF_UNIX datagram socket stands in for systemd's notify socket; the observer gets the same hooks, in the
same order, as the pipeline's worker gives them.
"""

from __future__ import annotations

import socket
import time

import pytest

from medstream.runtime.service.notify import NotifyObserver, SdNotifier, status_line


@pytest.fixture
def systemd(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))

    def pings() -> int:
        n = 0
        sock.setblocking(False)
        try:
            while True:
                n += sock.recv(4096).decode().count("WATCHDOG=1")
        except BlockingIOError:
            return n

    # WATCHDOG_USEC 20 ms: pings at most every 10 ms, and the "recent frame" window is 10 ms
    notifier = SdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000"})
    yield NotifyObserver(notifier), pings
    notifier.close()
    sock.close()


def _status(backend_state: str, source_state: str = "live") -> dict:
    return {"source_id": "us", "source_state": source_state, "backend_state": backend_state,
            "backend_error": "Triton server grpc://127.0.0.1:8001 is unreachable (connection refused)" if
            backend_state != "ready" else None, "counters": {}, "latency_ms": {}}


def _loop(obs: NotifyObserver, pings, outcome: str | None, seconds: float = 0.08) -> int:
    """The worker: a frame (or an idle wait) then on_progress, for ``seconds``; the WATCHDOG=1 pings systemd got.

    The socket is read as the loop goes: a datagram socket's queue is short (10 by default) and a full one would
    block the sender, as a systemd that stopped reading would.
    """
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        if outcome:
            obs.on_frame(outcome, None, {})
        obs.on_progress()
        n += pings()
        time.sleep(0.003)
    return n + pings()


def test_no_watchdog_while_the_backend_is_unreachable_and_frames_arrive(systemd):
    obs, pings = systemd
    assert _loop(obs, pings, "processed") >= 3  # healthy: fed

    obs.on_status(_status("unreachable"))
    _loop(obs, pings, "backend_error", 0.03)  # at most the one ping still inside the last frame's window
    assert _loop(obs, pings, "backend_error") == 0  # the worker loops, but no overlay can be made

    obs.on_frame("processed", None, {})  # the server is back: the first overlay feeds it again
    assert _loop(obs, pings, "processed") >= 3


def test_an_idle_source_still_feeds_the_watchdog_while_the_backend_is_down(systemd):
    obs, pings = systemd
    obs.on_status(_status("unreachable", source_state="stalled"))
    assert _loop(obs, pings, None, 0.2) >= 3  # nothing to make an overlay of: not a reason to restart


def test_a_failing_but_reachable_backend_is_not_an_outage(systemd):
    obs, pings = systemd
    obs.on_status(_status("failing"))
    assert _loop(obs, pings, "backend_error", 0.2) >= 3  # one bad request at a time is counted per frame; the service is not restarted for it


def test_the_status_line_says_the_backend_is_unreachable():
    line = status_line(_status("unreachable"))
    assert "backend unreachable: Triton server grpc://127.0.0.1:8001 is unreachable" in line
    assert "backend" not in status_line(_status("ready"))
