"""``--backend triton`` against a real Triton server on loopback: same masks as local, exact accounting, outages,
the age limit, the contract from the repository."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from medstream.benchmarks.triton_server import LocalTriton
from medstream.runtime.backends import load_backend
from medstream.runtime.backends.triton_backend import TritonTarget
from medstream.runtime.config import load_config
from medstream.runtime.errors import ContractError
from medstream.runtime.models.loader import load_model
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.stream import build_stream

from .conftest import SLOW_MS


class Recorder(PipelineObserver):
    """What the worker tells its observers: masks by seq, every outcome and status, with times."""

    def __init__(self) -> None:
        self.masks: dict[int, np.ndarray] = {}
        self.outcomes: list[tuple[float, str]] = []
        self.statuses: list[dict] = []
        self.stages: list[dict[str, float]] = []

    def on_frame(self, outcome, overlay, stages_ms):
        self.outcomes.append((time.monotonic(), outcome))
        if overlay is not None:
            self.masks[overlay.seq] = np.array(overlay.mask, copy=True)
            self.stages.append(dict(stages_ms))

    def on_status(self, status):
        self.statuses.append(dict(status))


def run_stream(overrides: dict, duration_s: float, during=None) -> tuple[dict, Recorder]:
    rec = Recorder()
    cfg = load_config(None, {"publish": "inproc://triton-test", **overrides})
    with build_stream(cfg, observers=[rec]) as pipeline:
        pipeline.prepare()
        if during is not None:
            threading.Thread(target=during, daemon=True).start()
        summary = pipeline.run(duration_s=duration_s)
    return summary, rec


def _exact(summary: dict) -> None:
    c = summary["counters"]
    assert summary["accounting_ok"] and c["in_flight"] == 0
    assert c["received"] == c["processed"] + c["dropped_total"]


def test_masks_are_identical_to_the_local_onnxruntime_backend(triton):
    source = "synthetic://ultrasound?fps=8&frames=16&truth=0"
    local, local_rec = run_stream({"source": source, "backend": "onnxruntime"}, 10)
    for url, shm in ((triton.grpc_url, "auto"), (triton.http_url, "off")):
        summary, rec = run_stream({"source": source, "backend": "triton", "triton_url": url,
                                   "triton_shared_memory": shm}, 10)
        _exact(summary)
        common = sorted(set(rec.masks) & set(local_rec.masks))
        assert len(common) >= 8, (url, summary["counters"])
        for seq in common:
            np.testing.assert_array_equal(rec.masks[seq], local_rec.masks[seq], err_msg=f"{url} seq {seq}")
        assert rec.masks[common[0]].any()  # a mask with something in it, not two empty answers
        assert summary["backend"]["backend"] == "triton"
        assert summary["backend"]["shared_memory"] is (shm == "auto")


def test_medstream_run_backend_triton_accounts_for_every_frame(triton, tmp_path):
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "medstream.cli.main", "run", "--source", "synthetic://ultrasound?fps=20&frames=40",
         "--backend", "triton", "--triton-url", triton.grpc_url, "--publish", "inproc://cli", "--summary", str(out)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())
    _exact(summary)
    c = summary["counters"]
    assert c["received"] == 40 and c["processed"] > 0
    assert "backend_error" not in c["dropped"]
    assert summary["backend"]["backend"] == "triton" and summary["backend"]["requests"] >= c["processed"]
    for stage in ("network", "server_queue", "server_compute"):  # the server's statistics, polled once a second
        assert stage in summary["latency_ms"], summary["latency_ms"].keys()


def test_the_contract_comes_from_the_repository_and_a_wrong_local_file_is_refused(triton):
    target = TritonTarget(url=triton.grpc_url, model="ultrasound_unet")
    remote = load_model("triton", backend="triton", triton=target)
    assert remote.contract == load_model("ultrasound", backend="onnxruntime").contract
    assert remote.sha256() == load_model("ultrasound", backend="onnxruntime").sha256()
    wrong = load_backend(load_model("fluoroscopy", backend="triton", triton=target))
    with pytest.raises(ContractError):  # the server serves another model than --model names
        wrong.activate()


def test_server_killed_mid_stream_counts_backend_error_and_the_stream_resumes(repository, tmp_path):
    server = LocalTriton(repository, log_path=tmp_path / "killed.log").start()
    marks: dict[str, float] = {}

    def outage() -> None:
        time.sleep(2.0)
        marks["killed"] = time.monotonic()
        server.kill()
        time.sleep(2.0)
        server.start()
        marks["back"] = time.monotonic()

    try:
        summary, rec = run_stream({"source": "synthetic://ultrasound?fps=10&truth=0", "backend": "triton",
                                   "triton_url": server.grpc_url, "max_age_ms": 1000}, 10, during=outage)
    finally:
        server.stop()
    _exact(summary)
    c = summary["counters"]
    assert c["dropped"].get("backend_error", 0) >= 5
    down = [s for s in rec.statuses if s["backend_state"] == "unreachable"]
    assert down and server.grpc_url in down[0]["backend_error"] and "unreachable" in down[0]["backend_error"]
    before = [t for t, o in rec.outcomes if o == "processed" and t < marks["killed"]]
    after = [t for t, o in rec.outcomes if o == "processed" and t > marks["back"]]
    assert before and len(after) >= 5, (len(before), len(after), c)
    assert rec.statuses[-1]["backend_state"] == "ready"


def test_a_request_slower_than_max_age_is_dropped_as_stale(triton):
    summary, rec = run_stream({"source": "synthetic://ultrasound?fps=5&truth=0", "backend": "triton",
                               "triton_url": triton.grpc_url, "triton_model": "slow_unet", "max_age_ms": SLOW_MS - 50,
                               "triton_timeout_ms": 5000, "warmup_runs": 0}, 3)
    _exact(summary)
    c = summary["counters"]
    assert c["processed"] == 0 and c["stale_at_publish"] >= 2, c
    assert "backend_error" not in c["dropped"]


def test_a_request_past_its_deadline_is_a_backend_error_named_as_such(triton):
    # deadline 2 x max_age_ms = 200 ms < the server's 300 ms
    summary, rec = run_stream({"source": "synthetic://ultrasound?fps=5&truth=0", "backend": "triton",
                               "triton_url": triton.grpc_url, "triton_model": "slow_unet", "max_age_ms": 100,
                               "warmup_runs": 0}, 3)
    _exact(summary)
    c = summary["counters"]
    assert c["processed"] == 0 and c["dropped"].get("backend_error", 0) >= 2, c
    failing = [s for s in rec.statuses if s["backend_state"] == "failing"]
    assert failing and "no answer within 200 ms" in failing[-1]["backend_error"]
