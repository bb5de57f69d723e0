"""Fault matrix, consumer side: a slow, absent or vanishing subscriber never slows the pipeline.

ZeroMQ PUB drops silently per subscriber at its high-water mark: the sender is not told, so
``publish_failed`` counts only what the socket refused (EAGAIN/errors). A subscriber measures its own
loss from the status messages: ``counters.published`` minus overlays received (docs/FAULTS.md explains
why medstream does not use XPUB_NODROP).
"""

from __future__ import annotations

import socket
import threading
import time

import zmq

from tests.reliability._helpers import Collector, Outcomes, assert_accounting, make_pipeline

SOURCE = "synthetic://ultrasound?fps=100&width=64&height=64"



def test_a_stalled_subscriber_does_not_slow_the_pipeline_and_its_loss_is_measurable(tiny_model, endpoint):
    pipe = make_pipeline(tiny_model, endpoint, SOURCE, send_hwm=2, render_rgba=True, status_interval_s=0.2)
    stalled = zmq.Context.instance().socket(zmq.SUB)  # subscribes, then never reads
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.linger = 0
    stalled.connect(endpoint)
    live = Collector(endpoint)
    time.sleep(0.3)
    summary = pipe.run(duration_s=2.0)
    pipe.publisher.close()
    time.sleep(0.2)
    live.close()
    received_by_stalled = 0
    while stalled.poll(0):
        stalled.recv_multipart()
        received_by_stalled += 1
    stalled.close(0)
    c = summary["counters"]
    assert c["processed"] > 100, "about 100 fps for 2 s: the pipeline kept its pace"
    assert summary["latency_ms"]["total"]["p99"] < 100, "publishing never blocked the worker"
    last = live.statuses[-1][1]["counters"]
    assert len(live.overlays) >= last["published"] - 2, "the reading subscriber got (nearly) everything"
    # The stalled subscriber's loss is what it can compute: published - what it got.
    assert last["published"] - received_by_stalled > 100
    assert_accounting(summary)


def test_no_subscriber_at_all(tiny_model, endpoint):
    pipe = make_pipeline(tiny_model, endpoint, SOURCE)
    summary = pipe.run(duration_s=1.0)
    pipe.publisher.close()
    assert summary["counters"]["processed"] > 30 and summary["counters"]["publish_failed"] == 0
    assert_accounting(summary)


def test_subscribers_that_vanish_mid_stream_or_mid_handshake(tiny_model, endpoint):
    """Churn: SUBs connect and close every few ms, raw TCP peers send half a ZMTP greeting and hang up."""
    obs = Outcomes()
    pipe = make_pipeline(tiny_model, endpoint, SOURCE, observers=[obs], render_rgba=True)
    port = int(endpoint.rsplit(":", 1)[1])
    stop = threading.Event()

    def churn():
        ctx = zmq.Context.instance()
        while not stop.is_set():
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.linger = 0
            s.connect(endpoint)
            time.sleep(0.01)
            s.close(0)  # mid multipart message, most likely: overlays are 4-5 parts

    def half_greetings():
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                raw.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")  # ZMTP signature, then gone
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not ZeroMQ at all
            time.sleep(0.005)

    threads = [threading.Thread(target=f, daemon=True) for f in (churn, churn, half_greetings)]
    for th in threads:
        th.start()
    summary = pipe.run(duration_s=2.0)
    stop.set()
    for th in threads:
        th.join(2)
    pipe.publisher.close()
    gaps = [b - a for a, b in zip(obs.progress, obs.progress[1:], strict=False)]
    assert max(gaps) < 0.25, "the worker never blocked"
    assert summary["counters"]["processed"] > 100
    assert_accounting(summary)
