"""A run's lifetime: the pipeline owns and closes its resources, says when the stream ended, keeps overlays
in source-frame coordinates with a region of interest. Real sockets, real ONNX Runtime (tiny model)."""

from __future__ import annotations

import time

import numpy as np
import zmq

from medstream.runtime.backends.base import Backend
from medstream.runtime.config import load_config
from medstream.runtime.frame import Contour, Overlay
from medstream.runtime.render import draw_overlay
from medstream.runtime.stream import StreamStatus, build_stream
from medstream.runtime.stream.injection import InjectingBackend
from tests.runtime.stream._subscriber import Subscriber


def _cfg(tiny_model, endpoint, source, **extra):
    return load_config(None, {"source": source, "model": str(tiny_model), "publish": endpoint,
                              "backend": "onnxruntime", "threads": 1, "warmup_runs": 0, **extra})


def _run_until_source_ends(pipe, listener):
    pipe.prepare()
    deadline = time.monotonic() + 5
    while not listener.statuses and time.monotonic() < deadline:  # subscribed before frames flow
        pipe._publish_status()
        time.sleep(0.05)
    return pipe.run()


def test_the_pipeline_closes_everything_it_owns_in_order(tiny_model, endpoint):
    pipe = build_stream(_cfg(tiny_model, endpoint, "synthetic://ultrasound?fps=0&width=64&height=64&frames=3"))
    closed = []
    for name in ("source", "publisher"):
        obj = getattr(pipe, name)
        real = obj.close
        obj.close = lambda real=real, name=name: (closed.append(name), real())[1]
    real_deactivate = pipe.backend.deactivate
    pipe.backend.deactivate = lambda: (closed.append("backend"), real_deactivate())[1]
    with pipe:
        summary = pipe.run()
        assert pipe.backend.is_active
    assert summary["accounting_ok"] and summary["counters"]["received"] == 3
    assert not pipe.backend.is_active and not pipe.source.is_open
    # run() closes the source when it ends; close() then closes source (idempotent), backend, publisher
    assert closed[-3:] == ["source", "backend", "publisher"]
    sock = zmq.Context.instance().socket(zmq.PUB)  # the port is free again: the publisher really closed
    try:
        deadline = time.monotonic() + 3  # ZeroMQ unbinds on its I/O thread, shortly after close()
        while True:
            try:
                sock.bind(endpoint)
                break
            except zmq.ZMQError:
                assert time.monotonic() < deadline, "the publisher's port is still bound after close()"
                time.sleep(0.05)
    finally:
        sock.close(0)
    pipe.close()  # idempotent


def test_a_finished_source_ends_the_stream_with_a_final_status_that_says_so(tiny_model, endpoint):
    listener = Subscriber(endpoint)
    try:
        with build_stream(_cfg(tiny_model, endpoint, "synthetic://ultrasound?fps=60&width=64&height=64&frames=5")) as pipe:
            summary = _run_until_source_ends(pipe, listener)
        time.sleep(0.3)
    finally:
        listener.close()
    assert summary["source_state"] == "ended" and summary["counters"]["received"] == 5
    last = listener.statuses[-1]
    assert last["state"] == "stopped" and last["end_of_stream"] is True and last["source_state"] == "ended"
    assert all(not s["end_of_stream"] for s in listener.statuses[:-1])


def test_status_is_typed_and_the_wire_keeps_its_fields(tiny_model, endpoint):
    with build_stream(_cfg(tiny_model, endpoint, "synthetic://ultrasound?fps=30&width=64&height=64")) as pipe:
        typed = pipe.stream_status()
        wire = pipe.status()
    assert isinstance(typed, StreamStatus)
    assert {"source_id", "seq", "t_capture_ns", "state", "source_state", "source_error", "seconds_since_frame",
            "uptime_s", "counters", "fps_in", "fps_out", "latency_ms", "model_id", "backend", "device"} <= set(wire)
    assert wire["model_id"] == "tiny-intensity" and wire["backend"] == "onnxruntime"


def test_injection_wraps_the_backend_only_when_configured(tiny_model, endpoint):
    with build_stream(_cfg(tiny_model, endpoint, "synthetic://ultrasound")) as plain:
        assert not isinstance(plain.backend, InjectingBackend) and isinstance(plain.backend, Backend)
    from tests.conftest import free_port

    other = f"tcp://127.0.0.1:{free_port()}"  # the first publisher's port is released asynchronously
    with build_stream(_cfg(tiny_model, other, "synthetic://ultrasound", inject={"error_every": 2})) as injected:
        assert isinstance(injected.backend, InjectingBackend)
        assert injected.backend.describe()["inject"] == {"error_every": 2}


def test_with_a_roi_overlays_stay_in_source_frame_coordinates(tiny_model, endpoint):
    roi = (40, 24, 64, 64)  # a 64x64 window of a 160x120 frame: the model (64x64) sees only this
    listener = Subscriber(endpoint)
    try:
        cfg = _cfg(tiny_model, endpoint, "synthetic://ultrasound?fps=60&width=160&height=120&frames=6", roi=list(roi))
        with build_stream(cfg) as pipe:
            _run_until_source_ends(pipe, listener)
        time.sleep(0.3)
    finally:
        listener.close()
    assert listener.overlays
    for ov in listener.overlays:
        assert ov.frame_size == (120, 160) and ov.mask_roi == roi and ov.mask.shape == (64, 64)
        x, y, w, h = roi
        for c in ov.contours:
            px, py = c.points[:, 0], c.points[:, 1]
            assert px.min() >= x and px.max() < x + w and py.min() >= y and py.max() < y + h
    # an independent reference: a contour traced on the mask, shifted by the ROI corner (scale 1 here)
    import cv2

    ov = next(o for o in listener.overlays if o.contours)
    first = ov.contours[0]
    binary = (ov.mask == first.class_id).astype(np.uint8)
    found, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    shifted = [cv2.approxPolyDP(f, 1.0, True).reshape(-1, 2) + (roi[0], roi[1]) for f in found]
    assert any(s.shape == first.points.shape and (s == first.points).all() for s in shifted)


def test_drawing_a_roi_overlay_on_its_full_frame_colours_only_the_roi():
    mask = np.ones((32, 32), np.uint8)  # class 1 everywhere in the mask
    ov = Overlay(seq=1, t_capture_ns=0, source_id="s", model_id="m", class_names=("bg", "fg"),
                 class_colors=((0, 0, 0), (0, 255, 0)), mask=mask, frame_size=(100, 200),
                 contours=[Contour(class_id=1, points=np.array([[50, 20], [81, 20], [81, 51], [50, 51]], np.int32))],
                 mask_roi=(50, 20, 32, 32))
    frame = np.zeros((100, 200), np.uint8)
    image = draw_overlay(frame, ov, alpha=1.0)
    assert image.shape == (100, 200, 3)
    inside = image[22:50, 52:80]
    assert (inside[..., 1] == 255).all()
    # nothing outside the ROI and its outline (the seq label sits in the top-left corner, rows < 20)
    assert image[55:, :].max() == 0 and image[20:, :45].max() == 0 and image[20:, 90:].max() == 0
