"""Record a live stream, then calibrate from the recorded folder (real ZeroMQ on 127.0.0.1)."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from medstream.calibration.data import CalibrationData
from medstream.calibration.pipeline import calibrate
from medstream.calibration.validator import validate_model
from medstream.runtime.contract import read_contract
from medstream.runtime.frame import Frame
from medstream.runtime.recording import record
from medstream.runtime.wire import encode_frame
from tests.calibration.conftest import request_for
from tests.calibration.models import blocky_frames, truth_of


def _publish(sock, stop: threading.Event) -> None:
    frames = blocky_frames(50, seed=7)
    seq = 0
    while not stop.is_set():
        image = frames[seq % len(frames)]
        sock.send_multipart(encode_frame(Frame(seq=seq, t_capture_ns=time.time_ns(), image=image,
                                               source_id="scanner", truth=truth_of(image))))
        seq += 1
        time.sleep(0.002)


def test_record_then_calibrate_from_the_recording(tmp_path, unet_model, eval_folder):
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
    stop = threading.Event()
    thread = threading.Thread(target=_publish, args=(sock, stop), daemon=True)
    thread.start()
    try:
        summary = record(endpoint, 20, tmp_path / "rec", timeout_s=10)
    finally:
        stop.set()
        thread.join(5)
        sock.close(0)
    assert summary.frames == 20 and summary.with_truth == 20

    data = CalibrationData([str(tmp_path / "rec")], 20, read_contract(str(unet_model)))
    result = calibrate(request_for(unet_model, tmp_path / "out" / "unet.int8.onnx", tmp_path / "rec", eval_folder,
                                   frames=20), data=data)
    assert data.reads == 20  # the 20 frames, not the 20 truth masks beside them
    assert result.passed and result.frames_used == 20
    assert validate_model(result.outputs["int8"]) == []
    # the recorded frames are the blocky ones: the input range is exactly what they hold
    assert np.isclose(max(abs(v) for v in result.chosen.ranges["input"]), 250 / 255, atol=0.01)
