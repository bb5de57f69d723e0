"""Fault matrix, source side: sender gone, file ended, capture silent, device missing (docs/FAULTS.md)."""

from __future__ import annotations

import time

import numpy as np
import zmq

from medstream.runtime.errors import SourceError
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.sources.base import Source, parse_uri
from medstream.runtime.stream.pipeline import Pipeline, StreamOptions
from tests.reliability._helpers import (
    Collector,
    Outcomes,
    assert_accounting,
    frame_msg,
    make_pipeline,
    run_in_thread,
)


def test_sender_gone_is_reported_within_a_second_and_the_stream_resumes_without_restart(tiny_model, endpoint):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    pipe = make_pipeline(tiny_model, endpoint, f"zmq+tcp://127.0.0.1:{port}", stall_timeout_s=0.5,
                         status_interval_s=0.1)
    col = Collector(endpoint)
    t, result = run_in_thread(pipe, max_frames=20)
    for i in range(10):
        pub.send_multipart(frame_msg(i))
        time.sleep(0.03)
    time.sleep(0.1)
    pub.close(0)  # the sender process is gone: its socket and port with it
    t_gone = time.monotonic()
    time.sleep(1.5)
    stalled_at = next((ts for ts, s in col.states_since(t_gone) if s == "stalled"), None)
    n_during_gap = len([1 for ts, _ in col.overlays if ts > t_gone + 0.1])
    pub = ctx.socket(zmq.PUB)  # a new sender on the same address
    pub.linger = 0
    pub.bind(f"tcp://127.0.0.1:{port}")
    # ZeroMQ reconnects by itself (100 ms .. 2 s backoff): wait for the handshake, then for the subscription.
    deadline = time.monotonic() + 10
    while pipe.source.peer_count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    for i in range(10, 20):
        pub.send_multipart(frame_msg(i))
        time.sleep(0.05)
    t.join(10)
    pub.close(0)
    time.sleep(0.1)
    col.close()
    assert stalled_at is not None and stalled_at - t_gone < 1.0, "status must say 'stalled' within a second"
    assert n_during_gap == 0, "no overlay may be published (or repeated) while no frame arrives"
    assert [s for _, s in col.states_since(stalled_at)].count("live") >= 1, "the stream resumed without a restart"
    seqs = [o.seq for _, o in col.overlays]
    assert len(seqs) == len(set(seqs)) and seqs[-1] == 19
    assert result["counters"]["received"] == 20
    assert_accounting(result)


def test_file_source_end_is_reported_and_the_run_finishes(tiny_model, endpoint, tmp_path):
    for i in range(6):
        np.save(tmp_path / f"{i:08d}.npy", np.full((64, 64), 40 * i, np.uint8))
    obs = Outcomes()
    pipe = make_pipeline(tiny_model, endpoint, f"file://{tmp_path}?fps=50", observers=[obs], status_interval_s=0.1)
    col = Collector(endpoint)
    time.sleep(0.3)
    summary = pipe.run()
    pipe.publisher.close()
    time.sleep(0.2)
    col.close()
    assert summary["source_state"] == "ended"
    assert col.statuses[-1][1]["source_state"] == "ended" and col.statuses[-1][1]["state"] == "stopped"
    assert summary["counters"]["received"] == 6
    assert_accounting(summary)


class SilentCapture(Source):
    """Stands in for a capture card that is open but delivers nothing for a while (no such card here)."""

    def __init__(self, silent_after: int, silent_s: float) -> None:
        super().__init__(parse_uri("synthetic://ultrasound"), "capture-0")
        self.silent_after, self.silent_s, self.i, self.silent_until = silent_after, silent_s, 0, None

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def read(self, timeout: float):
        if self.i == self.silent_after and self.silent_until is None:
            self.silent_until = time.monotonic() + self.silent_s
        if self.silent_until is not None and time.monotonic() < self.silent_until:
            time.sleep(timeout)
            return None
        time.sleep(0.02)
        self.i += 1
        return Frame(seq=self.i, t_capture_ns=now_ns(), image=np.full((64, 64), 90, np.uint8), source_id="capture-0")


def test_capture_returning_nothing_is_stalled_then_live(tiny_model, endpoint):
    base = make_pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=1", status_interval_s=0.1)
    src = SilentCapture(silent_after=10, silent_s=1.5)
    pipe = Pipeline(src, base.backend, base.publisher,
                    options=StreamOptions(stall_timeout_s=0.5, status_interval_s=0.1, warmup_runs=0))
    col = Collector(endpoint)
    t, result = run_in_thread(pipe, max_frames=30)
    t.join(15)
    time.sleep(0.1)
    col.close()
    states = [s for _, s in col.statuses]
    i_stalled = next(i for i, s in enumerate(states) if s["source_state"] == "stalled")
    assert any(s["source_state"] == "live" for s in states[i_stalled:]), "must come back without a restart"
    # While stalled, processed does not move: no overlay is invented for the silent period.
    stalled = [s["counters"]["processed"] for s in states if s["source_state"] == "stalled"]
    assert len(set(stalled)) == 1
    assert_accounting(result)


class FlakySource(Source):
    """Fails to open ``failures`` times (a device that is not there yet), then delivers ``frames`` frames."""

    def __init__(self, failures: int, frames: int) -> None:
        super().__init__(parse_uri("synthetic://ultrasound"), "flaky")
        self.failures, self.frames, self.attempts, self.i = failures, frames, [], 0

    def _open(self) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise SourceError("video device /dev/video99 does not exist", "plug it in")

    def _close(self) -> None:
        pass

    def read(self, timeout: float):
        if self.i >= self.frames:
            from medstream.runtime.errors import SourceEnded

            raise SourceEnded
        time.sleep(0.01)
        self.i += 1
        return Frame(seq=self.i, t_capture_ns=now_ns(), image=np.full((64, 64), 90, np.uint8), source_id="flaky")


def test_failing_source_reconnects_with_growing_backoff_and_resumes(tiny_model, endpoint):
    base = make_pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=1", status_interval_s=0.1)
    src = FlakySource(failures=4, frames=5)
    pipe = Pipeline(src, base.backend, base.publisher, options=StreamOptions(status_interval_s=0.1, warmup_runs=0))
    col = Collector(endpoint)
    t, result = run_in_thread(pipe)
    t.join(15)
    time.sleep(0.1)
    col.close()
    gaps = np.diff(src.attempts)
    assert len(src.attempts) == 5 and all(b > a * 1.3 for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    reconnecting = [s for _, s in col.statuses if s["source_state"] == "reconnecting"]
    assert reconnecting and "/dev/video99" in reconnecting[0]["source_error"]
    assert result["counters"]["processed"] == 5
    assert_accounting(result)


def test_missing_capture_device_keeps_the_service_up_and_says_why(tiny_model, endpoint):
    """v4l2:///dev/video99 with nothing plugged in: status 'reconnecting' naming the device, no crash, no overlay."""
    pipe = make_pipeline(tiny_model, endpoint, "v4l2:///dev/video99", status_interval_s=0.1)
    col = Collector(endpoint)
    t, result = run_in_thread(pipe, duration_s=1.5)
    t.join(10)
    time.sleep(0.1)
    col.close()
    states = [s for _, s in col.statuses if s["state"] == "running"]
    assert states and all(s["source_state"] == "reconnecting" for s in states[1:])
    assert "/dev/video99" in states[-1]["source_error"]
    assert not col.overlays and result["counters"]["received"] == 0
    assert_accounting(result)
