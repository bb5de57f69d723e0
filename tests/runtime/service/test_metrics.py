"""The Prometheus endpoint over real HTTP: counters equal the run's summary exactly, histograms in
millisecond-scale buckets, a private registry per pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from medstream.runtime.config import load_config
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.service.metrics import LATENCY_BUCKETS_MS, MetricsObserver
from medstream.runtime.stream import build_stream
from medstream.runtime.wire import encode_frame
from tests.conftest import free_port


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from one HTTP scrape."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_final_scrape_equals_summary_exactly(tiny_model, endpoint):
    # A ZeroMQ source fed by this test: good frames, malformed ones (rejected by the receiver thread,
    # never seen by on_frame), injected backend errors and bursts that supersede frames.
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    metrics = MetricsObserver(0)
    cfg = load_config(None, {"source": f"zmq+tcp://127.0.0.1:{port}", "model": str(tiny_model), "publish": endpoint,
                             "backend": "onnxruntime", "threads": 1, "inject": {"error_every": 5, "delay_ms": {"infer": 5}}})
    pipe = build_stream(cfg, observers=[metrics])
    pipe.prepare()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(pipe.run()), daemon=True)
    t.start()
    try:
        while not pipe.source.is_open:
            time.sleep(0.02)
        time.sleep(0.3)  # subscription handshake
        sent = 0
        for i in range(60):
            img = np.full((64, 64), (i * 37) % 256, np.uint8)
            pub.send_multipart(encode_frame(Frame(seq=i, t_capture_ns=now_ns(), image=img)))
            sent += 1
            if i % 7 == 3:
                pub.send_multipart([b"frame", b"{not json", b""])
                sent += 1
            if i % 4:  # every fourth frame: a burst, so the next one supersedes it
                time.sleep(0.012)
        deadline = time.monotonic() + 10
        while pipe.accounting.received < sent and time.monotonic() < deadline:
            time.sleep(0.02)
        pipe.stop()
        t.join(10)
        final = scrape(metrics.url)  # after run() returned; the server stays up until close()
    finally:
        pipe.publisher.close()
        pub.close()
        metrics.close()
    c = result["counters"]
    assert c["received"] == sent
    assert c["dropped"].get("invalid") and c["dropped"].get("backend_error") and c["processed"]
    assert final[("medstream_frames_received_total", ())] == c["received"]
    assert final[("medstream_frames_processed_total", ())] == c["processed"]
    assert final[("medstream_frames_published_total", ())] == c["published"]
    dropped = {dict(k[1])["reason"]: v for k, v in final.items() if k[0] == "medstream_frames_dropped_total"}
    assert dropped == c["dropped"]
    assert final[("medstream_frames_in_flight", ())] == 0
    # One histogram sample per processed frame, per stage and end to end.
    assert final[("medstream_end_to_end_latency_seconds_count", ())] == c["processed"]
    for stage in ("queue", "preprocess", "infer", "postprocess"):
        assert final[("medstream_stage_latency_seconds_count", (("stage", stage),))] == c["processed"]
    # Buckets in seconds, chosen for milliseconds: the 5 ms injected delay lands in the 5-7.5 ms buckets.
    les = sorted(float(dict(k[1])["le"]) for k in final if k[0] == "medstream_stage_latency_seconds_bucket"
                 and dict(k[1])["stage"] == "infer")
    assert les[:-1] == pytest.approx([ms / 1000 for ms in LATENCY_BUCKETS_MS])
    infer_le = {float(dict(k[1])["le"]): v for k, v in final.items()
                if k[0] == "medstream_stage_latency_seconds_bucket" and dict(k[1])["stage"] == "infer"}
    assert infer_le[0.003] == 0 and infer_le[1.0] == c["processed"]
    assert final[("medstream_ready", ())] == 0  # after stop
    assert final[("medstream_source_state", (("medstream_source_state", "stopped"),))] == 1
    info = {dict(k[1]).get("model_id") for k in final if k[0] == "medstream_model_info"}
    assert info == {"tiny-intensity"}


def test_private_registries_let_two_pipelines_coexist():
    a, b = MetricsObserver(0), MetricsObserver(0)
    try:
        a.on_status({"counters": {"received": 5, "processed": 4, "dropped": {"stale": 1}}})
        assert scrape(a.url)[("medstream_frames_received_total", ())] == 5
        assert scrape(b.url)[("medstream_frames_received_total", ())] == 0
    finally:
        a.close()
        b.close()


def test_busy_port_is_a_clear_config_error():
    from medstream.runtime.errors import ConfigError

    a = MetricsObserver(0)
    try:
        with pytest.raises(ConfigError, match="metrics_port"):
            MetricsObserver(a.port)
    finally:
        a.close()


@pytest.mark.slow
def test_scrape_during_a_real_run_then_summary(tiny_model, tmp_path):
    port = free_port()
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "medstream.cli.main", "run", "--source", "synthetic://ultrasound?fps=30&width=128&height=128",
         "--model", str(tiny_model), "--backend", "onnxruntime", "--threads", "1", "--publish", f"tcp://127.0.0.1:{free_port()}",
         "--metrics-port", str(port), "--duration", "5", "--summary", str(summary_path)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    scrapes = []
    try:
        deadline = time.monotonic() + 40
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                s = scrape(url)
                if s.get(("medstream_ready", ())) == 1:
                    scrapes.append(s)
            except OSError:
                pass  # not up yet, or already gone
            time.sleep(0.7)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(summary_path.read_text())
    assert len(scrapes) >= 3
    received = [s[("medstream_frames_received_total", ())] for s in scrapes]
    assert received == sorted(received) and received[-1] > received[0]  # counts while it runs
    assert received[-1] <= summary["counters"]["received"]
    last = scrapes[-1]
    assert 0 <= last[("medstream_frames_in_flight", ())] <= 2
    assert any(s[("medstream_source_state", (("medstream_source_state", "live"),))] == 1 for s in scrapes)
    assert last[("medstream_end_to_end_latency_seconds_count", ())] <= summary["counters"]["processed"]
    assert last[("medstream_memory_total_bytes", ())] > 0  # device telemetry (psutil here)
