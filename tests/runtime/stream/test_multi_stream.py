"""Several streams, one model, one worker: each stream its own slot, accounting, status and topic; frames of
several streams batched into one inference when the model's batch axis is dynamic. Real sockets, real ORT."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

from medstream.runtime.config import load_config
from medstream.runtime.errors import ConfigError
from medstream.runtime.mailbox import LatestSlots
from medstream.runtime.stream import build_stream
from tests.fixtures.models import intensity_classifier, save, tiny_contract
from tests.runtime.stream._subscriber import Subscriber


@pytest.fixture(scope="module")
def dynamic_batch_model(tmp_path_factory):
    """The tiny intensity model with a symbolic batch axis (a 1x1 conv runs any batch)."""
    model = intensity_classifier(with_contract=False)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(model)
    return save(model, tmp_path_factory.mktemp("m") / "tiny_dyn.onnx")


def _streams_cfg(model, endpoint, uris, dynamic: bool, **extra):
    contract = tiny_contract().model_dump()
    contract["input"]["dynamic_batch"] = dynamic
    return load_config(None, {"model": str(model), "backend": "onnxruntime", "threads": 1, "warmup_runs": 0,
                              "publish": endpoint, "contract": contract,
                              "streams": [{"uri": u, "id": f"probe-{i}"} for i, u in enumerate(uris)], **extra})


def _run(pipe, subs):
    pipe.prepare()
    deadline = time.monotonic() + 5
    while not all(s.statuses for s in subs) and time.monotonic() < deadline:
        for lane in pipe.lanes:
            pipe._publish_status(lane)
        time.sleep(0.05)
    return pipe.run()


@pytest.mark.parametrize("dynamic", [True, False], ids=["batched", "one-by-one"])
def test_each_stream_gets_its_own_overlays_accounting_status_and_topic(dynamic_batch_model, endpoint, dynamic):
    uris = [f"synthetic://ultrasound?fps=40&width=64&height=64&frames=20&seed={i}" for i in range(3)]
    cfg = _streams_cfg(dynamic_batch_model, endpoint, uris, dynamic, batch_wait_ms=5)
    every, one = Subscriber(endpoint, b"overlay"), Subscriber(endpoint, b"overlay/probe-1")
    status_sub = Subscriber(endpoint, b"status")
    try:
        with build_stream(cfg) as pipe:
            assert pipe.max_batch == (3 if dynamic else 1)
            summary = _run(pipe, [status_sub])
        time.sleep(0.3)
    finally:
        for s in (every, one, status_sub):
            s.close()
    assert summary["accounting_ok"] and len(summary["streams"]) == 3
    for i, lane in enumerate(summary["streams"]):
        c = lane["counters"]
        assert c["received"] == 20 and c["received"] == c["processed"] + c["dropped_total"], (i, c)
        assert c["processed"] > 0, f"stream {i} was starved"
    assert summary["counters"]["received"] == 60
    # the per-stream topic carries only that stream, in order, each overlay exactly once
    assert one.overlays and {o.source_id for o in one.overlays} == {"probe-1"}
    seqs = [o.seq for o in one.overlays]
    assert seqs == sorted(set(seqs))
    assert {t for t in one.topics} == {b"overlay/probe-1"}
    assert {o.source_id for o in every.overlays} == {"probe-0", "probe-1", "probe-2"}
    finals = {s["source_id"]: s for s in status_sub.statuses if s["state"] == "stopped"}
    assert set(finals) == {"probe-0", "probe-1", "probe-2"}
    assert all(f["end_of_stream"] for f in finals.values())
    for s in summary["streams"]:  # the status of each stream carries its own counters
        assert finals[s["source"]["source_id"]]["counters"]["received"] == s["counters"]["received"]
    if dynamic:
        batches = [o.stages_ms.get("batch", 1) for o in every.overlays]
        assert max(batches) >= 2, "frames of several streams never shared an inference"


def test_a_batched_mask_equals_the_mask_of_the_same_frame_alone(dynamic_batch_model, endpoint):
    """Batching must not change a single pixel: the batched overlays equal a reference decode of each frame."""
    uris = [f"synthetic://ultrasound?fps=30&width=64&height=64&frames=10&seed={i}" for i in range(2)]
    cfg = _streams_cfg(dynamic_batch_model, endpoint, uris, True, batch_wait_ms=20)
    sub = Subscriber(endpoint, b"overlay")
    status_sub = Subscriber(endpoint, b"status")
    try:
        with build_stream(cfg) as pipe:
            _run(pipe, [status_sub])
        time.sleep(0.3)
    finally:
        sub.close()
        status_sub.close()
    from medstream.runtime.sources import read_frames

    frames = {(f"probe-{i}", f.seq): f.image for i, u in enumerate(uris) for f in read_frames(u, 10)}
    checked = 0
    for ov in sub.overlays:
        if ov.stages_ms.get("batch", 1) < 2:
            continue
        image = frames[(ov.source_id, ov.seq)].astype(np.float32) / 255.0  # contract: scale to 0..1
        logits = np.stack([0 * image, 3 * image - 1, 6 * image - 3])  # the model: w=(0,3,6), b=(0,-1,-3)
        expected = logits.argmax(axis=0).astype(np.uint8)
        assert np.array_equal(ov.mask, expected), (ov.source_id, ov.seq)
        checked += 1
    assert checked >= 4


def test_a_stopped_stream_never_blocks_the_others(tiny_model, endpoint):
    uris = ["synthetic://ultrasound?fps=30&width=64&height=64&frames=3",
            "synthetic://ultrasound?fps=30&width=64&height=64&frames=45"]
    cfg = load_config(None, {"model": str(tiny_model), "backend": "onnxruntime", "threads": 1, "warmup_runs": 0,
                             "publish": endpoint, "streams": [{"uri": u, "id": f"s{i}"} for i, u in enumerate(uris)]})
    with build_stream(cfg) as pipe:
        summary = pipe.run()
    short, long = summary["streams"]
    assert short["source_state"] == "ended" and short["counters"]["received"] == 3
    assert long["counters"]["received"] == 45 and long["counters"]["processed"] >= 40
    assert summary["accounting_ok"]


def test_streams_need_distinct_ids(tiny_model):
    with pytest.raises(ConfigError, match="every stream needs its own id"):
        load_config(None, {"model": str(tiny_model), "streams": [{"uri": "synthetic://ultrasound"},
                                                                  {"uri": "synthetic://fluoroscopy"}]})


def test_slots_rotate_so_no_stream_starves():
    dropped = []
    slots: LatestSlots[int] = LatestSlots(3, lambda i, item: dropped.append((i, item)))
    served = []
    for round_ in range(6):
        for i in range(3):
            slots.put(i, round_ * 10 + i)
        served.append([i for i, _ in slots.take_ready(0.0, limit=1)])
    assert served == [[0], [1], [2], [0], [1], [2]]
    assert all(i in (0, 1, 2) for i, _ in dropped)  # the rest were superseded, each counted once
