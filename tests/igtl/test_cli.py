"""``medstream simulate --publish igtl://`` as a PLUS server, ``medstream view --connect igtl://``, the bench scenario."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pyigtl")

from medstream.runtime.frame import Overlay  # noqa: E402
from medstream.runtime.frame_publisher import phantom_geometry  # noqa: E402
from medstream.runtime.sinks import open_sink  # noqa: E402
from medstream.runtime.sources import open_source  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.igtl._helpers import wait_until  # noqa: E402

MEDSTREAM = [sys.executable, "-m", "medstream.cli.main"]


def test_simulate_plays_a_plus_server_with_spacing_and_matrix():
    port = free_port()
    sim = subprocess.Popen([*MEDSTREAM, "simulate", "--publish", f"igtl://127.0.0.1:{port}", "--frames", "10",
                            "--rate", "30", "--width", "160", "--height", "120", "--spacing", "0.25",
                            "--wait-subscribers", "1", "--wait-timeout", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    src = open_source(f"igtl://127.0.0.1:{port}?device=Image_Reference")
    frames = []
    try:
        assert wait_until(lambda: _try_open(src), 15), "simulate never listened"
        deadline = time.monotonic() + 15
        while len(frames) < 10 and time.monotonic() < deadline:
            try:
                f = src.read(0.1)
            except Exception:
                break  # simulate finished and closed the connection
            if f is not None:
                frames.append(f)
        out, _ = sim.communicate(timeout=15)
    finally:
        src.close()
        if sim.poll() is None:
            sim.kill()
    assert sim.returncode == 0, out
    assert len(frames) == 10 and "sent 10 frames" in out
    expected = phantom_geometry(160, 120, 0.25)
    for f in frames:
        assert f.image.shape == (120, 160) and f.image.dtype == np.uint8
        np.testing.assert_allclose(np.asarray(f.geometry.ijk_to_ras), np.asarray(expected.ijk_to_ras), atol=1e-4)
    assert [f.seq for f in frames] == list(range(10))
    assert all(b.t_capture_ns > a.t_capture_ns for a, b in zip(frames, frames[1:], strict=False))


def _try_open(src) -> bool:
    try:
        src.open()
        return True
    except Exception:
        return False


def test_simulate_refuses_a_non_loopback_igtl_address():
    r = subprocess.run([*MEDSTREAM, "simulate", "--publish", "igtl://0.0.0.0:18944", "--frames", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no authentication or encryption" in r.stderr + r.stdout


def test_view_reads_label_maps_from_the_igtl_sink(tmp_path):
    sink = open_sink(f"igtl://127.0.0.1:{free_port()}")
    geo = phantom_geometry(96, 64)
    stop = threading.Event()

    def feed():
        seq = 0
        while not stop.is_set():
            if sink.server.client_count:
                mask = np.zeros((64, 96), np.uint8)
                mask[10:30, 20:50] = 1 + seq % 2
                sink.send_overlay(Overlay(seq=seq, t_capture_ns=time.time_ns(), source_id="t", model_id="m",
                                          class_names=("bg", "a", "b"), class_colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)),
                                          mask=mask, frame_size=(64, 96), geometry=geo))
                seq += 1
            time.sleep(0.03)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        r = subprocess.run([*MEDSTREAM, "view", "--connect", f"igtl://127.0.0.1:{sink.server.port}", "--save",
                            f"{tmp_path}/", "--count", "3", "--timeout", "10"], capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        t.join(2)
        sink.close()
    assert r.returncode == 0, r.stderr
    assert "received 3 label maps" in r.stdout
    import cv2

    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 3
    img = cv2.imread(str(pngs[0]))
    assert img.shape[:2] == (64, 96)
    assert img[20, 35].any() and not img[50, 5].any()  # the class region is coloured, the background black


def test_bench_registers_the_igtl_scenario_and_its_codec_runs():
    from medstream.benchmarks.igtl_glass import codec_ms
    from medstream.benchmarks.scenarios import DEFAULT_SCENARIOS, RUNNERS, SCENARIOS

    assert "igtl" in SCENARIOS and "igtl" in RUNNERS and "igtl" not in DEFAULT_SCENARIOS
    out = codec_ms(sizes=((32, 48),), reps=2)
    assert set(out["48x32"]) >= {"sender_pack", "source_crc_decode", "sink_label_map_pack", "receiver_crc_decode"}
