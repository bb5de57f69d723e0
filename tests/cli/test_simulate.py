"""``medstream simulate``: a real process publishing on loopback, read back through the ZeroMQ source.

The frames received are compared with the phantom's own rendering (the reference), truth included.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np

from medstream.runtime.frame_publisher import FramePublisher, publish_source
from medstream.runtime.phantom import UltrasoundPhantom
from medstream.runtime.sources import open_source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_simulate_publishes_the_phantom_with_truth():
    port = _free_port()
    sim = subprocess.Popen([sys.executable, "-m", "medstream.cli.main", "simulate", "--publish",
                            f"tcp://127.0.0.1:{port}", "--frames", "6", "--rate", "50", "--truth", "--seed", "3",
                            "--width", "40", "--height", "32", "--wait-subscribers", "1", "--wait-timeout", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        frames = []
        with open_source(f"zmq+tcp://127.0.0.1:{port}?hwm=100") as src:
            while len(frames) < 6:
                frame = src.read(20.0)
                assert frame is not None, "no frame from medstream simulate"
                frames.append(frame)
        out, err = sim.communicate(timeout=20)
    finally:
        sim.kill()
    assert sim.returncode == 0, err
    assert "sent 6 frames" in out
    phantom = UltrasoundPhantom(height=32, width=40, seed=3)
    for i, frame in enumerate(frames):
        image, mask = phantom.render(i)
        assert frame.seq == i and frame.source_id == "sim-ultrasound"
        np.testing.assert_array_equal(frame.image, image)
        np.testing.assert_array_equal(frame.truth, mask)


def test_frame_publisher_sends_a_source_to_a_subscriber():
    with FramePublisher("tcp://127.0.0.1:*") as pub, open_source(f"zmq+{pub.endpoint}?hwm=100") as sub:
        pub.wait_for_subscribers(1, 10)
        sent = publish_source(open_source("synthetic://fluoroscopy?fps=100&motion_fps=15&frames=4&width=32&height=32"), pub)
        got = [sub.read(5.0) for _ in range(4)]
    assert sent == 4 and pub.sent == 4
    assert [f.seq for f in got] == [0, 1, 2, 3] and all(f.truth is not None for f in got)
