"""`medstream status` against a real `medstream run` process: 0 while live, non-zero within 3 s of
the pipeline stopping (SIGTERM: its final status says so) or dying (SIGKILL: silence)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from medstream.runtime.config import load_config
from medstream.runtime.stream import build_stream
from tests.conftest import free_port

MEDSTREAM = [sys.executable, "-m", "medstream.cli.main"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _status(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDSTREAM, "status", *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def _start_pipeline(tiny_model, endpoint: str) -> subprocess.Popen:
    proc = subprocess.Popen([*MEDSTREAM, "run", "--source", "synthetic://ultrasound?fps=20&width=128&height=128",
                             "--model", str(tiny_model), "--backend", "onnxruntime", "--threads", "1",
                             "--publish", endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:  # until it reports live (start-up takes a few seconds)
        r = _status("--connect", endpoint, "--once", "--timeout", "2")
        if r.returncode == 0:
            return proc
        assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.kill()
    raise AssertionError("the pipeline never became live")


@pytest.mark.slow
@pytest.mark.parametrize("sig, expected", [(signal.SIGTERM, 4), (signal.SIGKILL, 2)])
def test_live_then_nonzero_within_3_s_of_stopping(tiny_model, sig, expected):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    run = _start_pipeline(tiny_model, endpoint)
    monitor = None
    try:
        once = _status("--connect", endpoint, "--once", "--json")
        assert once.returncode == 0, once.stdout + once.stderr
        st = json.loads(once.stdout.strip().splitlines()[-1])
        assert st["health"]["code"] == 0 and st["source_state"] == "live" and st["fps_in"] > 0
        assert st["device_telemetry"]["memory"]["total_bytes"] > 0  # telemetry rides on the status topic

        monitor = subprocess.Popen([*MEDSTREAM, "status", "--connect", endpoint],  # default --timeout 2.5
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        first = monitor.stdout.readline()  # the live summary has started
        assert "[OK]" in first, first + monitor.stderr.read()
        time.sleep(0.5)
        run.send_signal(sig)
        t_stop = time.monotonic()
        rc = monitor.wait(timeout=10)
        elapsed = time.monotonic() - t_stop
        assert rc == expected, monitor.stdout.read()
        assert elapsed <= 3.0, f"took {elapsed:.2f} s to notice"  # the bound: within 3 s of the stop
    finally:
        for p in (run, monitor):
            if p is not None and p.poll() is None:
                p.kill()
        run.communicate(timeout=10)
    # Nobody there any more: a health check says so, exit 2, after its timeout.
    t0 = time.monotonic()
    gone = _status("--connect", endpoint, "--once", "--timeout", "1")
    assert gone.returncode == 2 and "no fresh status" in gone.stdout
    assert time.monotonic() - t0 < 8  # 1 s timeout + interpreter start


def test_stalled_source_is_exit_code_3(tiny_model, endpoint):
    # A ZeroMQ source that nobody feeds: the pipeline runs but its source is stalled.
    cfg = load_config(None, {"source": f"zmq+tcp://127.0.0.1:{free_port()}", "model": str(tiny_model),
                             "publish": endpoint, "backend": "onnxruntime", "threads": 1})
    pipe = build_stream(cfg)
    pipe.prepare()
    t = threading.Thread(target=pipe.run, daemon=True)
    t.start()
    try:
        time.sleep(1.5)  # past stall_timeout_s (1 s)
        r = _status("--connect", endpoint, "--once")
        assert r.returncode == 3, r.stdout + r.stderr
        assert "SOURCE NOT LIVE" in r.stdout and "stalled" in r.stdout
    finally:
        pipe.stop()
        t.join(10)
        pipe.publisher.close()


def test_bad_endpoint_is_refused():
    r = _status("--connect", "127.0.0.1:5556", "--once")
    assert r.returncode != 0 and "not a ZeroMQ endpoint" in r.stderr
