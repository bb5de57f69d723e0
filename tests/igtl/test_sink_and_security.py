"""The igtl:// sink with pyigtl's own client (as Slicer would connect), points, and the loopback-only rule."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pyigtl = pytest.importorskip("pyigtl")

from medstream.runtime.config import load_config  # noqa: E402
from medstream.runtime.errors import ConfigError  # noqa: E402
from medstream.runtime.frame import ImageGeometry, Overlay  # noqa: E402
from medstream.runtime.sinks import open_sink  # noqa: E402
from medstream.runtime.stream import build_stream  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.igtl._helpers import RawSlicer, tilted_geometry, wait_until  # noqa: E402


def _overlay(seq: int, geometry=None, t_ns: int | None = None):
    mask = np.zeros((32, 48), np.uint8)
    mask[5:10, 7:20] = 1
    mask[20:25, 30:40] = 2
    return Overlay(seq=seq, t_capture_ns=t_ns or time.time_ns(), source_id="igtl", model_id="unet",
                   class_names=("background", "vessel", "needle"), class_colors=((0, 0, 0), (220, 40, 40), (40, 220, 40)),
                   mask=mask, frame_size=(32, 48), areas_px={"vessel": 65, "needle": 50}, geometry=geometry)


class _PointOverlay(Overlay):  # an overlay type that carries points (a needle tip detector would)
    pass


def test_pyigtl_client_receives_the_label_map_with_its_geometry():
    m = tilted_geometry()
    geo = ImageGeometry(spacing=(0.23, 0.31, 1.0), ijk_to_ras=tuple(tuple(r) for r in m))
    sink = open_sink(f"igtl://127.0.0.1:{free_port()}?device=Seg")
    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=sink.server.port)
    try:
        assert wait_until(lambda: sink.server.client_count == 1, 5)
        ov = _overlay(3, geo)
        sink.send_overlay(ov)
        img = client.wait_for_message("Seg", timeout=5)
        info = client.wait_for_message("SegInfo", timeout=5)
        assert img is not None and info is not None
        np.testing.assert_array_equal(img.image[0], ov.mask)
        np.testing.assert_allclose(img.ijk_to_world_matrix, m, atol=1e-4)
        assert abs(img.timestamp * 1e9 - ov.t_capture_ns) < 1000
        doc = json.loads(info.string)
        assert doc["seq"] == 3 and doc["areas_mm2"]["needle"] == pytest.approx(50 * 0.23 * 0.31, rel=1e-5)
        assert sink.sent == 1 and sink.failed == 0
    finally:
        client.stop()
        sink.close()


def test_points_go_out_as_point_messages_in_ras():
    m = tilted_geometry()
    geo = ImageGeometry(spacing=(0.23, 0.31, 1.0), ijk_to_ras=tuple(tuple(r) for r in m))
    sink = open_sink(f"igtl://127.0.0.1:{free_port()}")
    slicer = RawSlicer(sink.server.port)
    try:
        assert wait_until(lambda: sink.server.client_count == 1, 5)
        ov = _PointOverlay(**{f: getattr(_overlay(1, geo), f) for f in Overlay.__slots__})
        ov.points = [("needle_tip", 10.0, 20.0)]
        ov.confidence = 0.87
        sink.send_overlay(ov)
        pts = slicer.wait_for("POINT", 1, 5)
        assert pts and pts[0].device == "PredictionPoints" and pts[0].t_ns == ov.t_capture_ns
        name, x, y, z = pts[0].points[0]
        assert name == "needle_tip"
        np.testing.assert_allclose((x, y, z), (m @ [10.0, 20.0, 0.0, 1.0])[:3], atol=1e-4)
        info = json.loads(slicer.wait_for("STRING", 1, 5)[0].text)
        assert info["confidence"] == 0.87
    finally:
        slicer.close()
        sink.close()


def test_no_client_means_nothing_is_packed_and_nothing_fails():
    sink = open_sink(f"igtl://127.0.0.1:{free_port()}")
    try:
        for i in range(5):
            assert sink.send_overlay(_overlay(i))
        d = sink.describe()
        assert d["without_client"] == 5 and d["pack_ms_mean"] is None and sink.failed == 0
    finally:
        sink.close()


def test_a_non_loopback_sink_is_refused_without_the_explicit_flag():
    with pytest.raises(ConfigError) as e:
        open_sink("igtl://0.0.0.0:18945")
    assert "no authentication or encryption" in e.value.what and "allow-insecure-remote" in e.value.fix


def test_a_non_loopback_listening_source_is_refused_without_the_flag():
    cfg = load_config(None, {"source": "igtl://0.0.0.0:18944?bind=1", "model": "ultrasound", "backend": "onnxruntime",
                             "threads": 1, "publish": f"tcp://127.0.0.1:{free_port()}"})
    with pytest.raises(ConfigError) as e:
        build_stream(cfg)
    assert "0.0.0.0" in e.value.what


@pytest.mark.parametrize("endpoint", ["igtl://127.0.0.1:0?device=ThisNameIsMuchTooLongForIGTL",
                                      "igtl://127.0.0.1:0?colour=red", "igtl://127.0.0.1:0?max_clients=0"])
def test_bad_sink_parameters_are_refused(endpoint):
    with pytest.raises(ConfigError):
        open_sink(endpoint)


def test_the_stream_refuses_an_igtl_sink_port_in_use():
    port = free_port()
    first = open_sink(f"igtl://127.0.0.1:{port}")
    try:
        with pytest.raises(ConfigError):
            open_sink(f"igtl://127.0.0.1:{port}")
    finally:
        first.close()
