"""Calibration frames: every kind of source through open_source and the runtime's Preprocessor."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from medstream.calibration.data import CalibrationData, default_eval_uri, normalize_uri
from medstream.runtime.contract import read_contract
from medstream.runtime.errors import ConfigError
from medstream.runtime.preprocess import Preprocessor
from tests.calibration.models import unet_like


@pytest.fixture(scope="module")
def contract():
    return read_contract(unet_like())


def test_uris_are_read_unpaced(tmp_path):
    assert normalize_uri("synthetic://ultrasound?seed=3") == "synthetic://ultrasound?seed=3&fps=0"
    assert normalize_uri("synthetic://fluoroscopy") == "synthetic://fluoroscopy?fps=0"
    assert normalize_uri("synthetic://ultrasound?fps=5") == "synthetic://ultrasound?fps=5"
    assert normalize_uri(str(tmp_path)) == f"file://{tmp_path}?fps=0"


def test_synthetic_frames_are_preprocessed_by_the_runtime(contract):
    data = CalibrationData(["synthetic://ultrasound?seed=4&width=64&height=64"], 5, contract)
    inputs = list(data.inputs())
    assert len(inputs) == 5 and data.reads == 5 and inputs[0].shape == (1, 1, 64, 64)
    from medstream.runtime.phantom import make_phantom

    image, _ = make_phantom("ultrasound", seed=4, height=64, width=64, fps=30).render(0)
    np.testing.assert_array_equal(inputs[0], Preprocessor(contract)(image, "gray"))


def test_recorded_folder_truth_masks_are_not_frames(tmp_path, contract):
    for i in range(3):
        np.save(tmp_path / f"{i:08d}.npy", np.full((64, 64), 100 + i, np.uint8))
        np.save(tmp_path / f"{i:08d}.truth.npy", np.ones((64, 64), np.uint8))
        (tmp_path / f"{i:08d}.json").write_text(json.dumps({"seq": i, "color_order": "gray", "source_id": "s"}))
    data = CalibrationData([str(tmp_path)], 10, contract)
    inputs = list(data.inputs())
    assert data.reads == 3
    assert [round(float(x.mean()) * 255) for x in inputs] == [100, 101, 102]


def test_video_file_and_image_folder(tmp_path, contract):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (80, 64))
    for i in range(6):
        writer.write(np.full((64, 80, 3), 30 * i, np.uint8))
    writer.release()
    assert len(list(CalibrationData([str(video)], 4, contract).inputs())) == 4
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((32, 32, 3), 50 * i, np.uint8))
    got = list(CalibrationData([f"file://{folder}"], 10, contract).inputs())
    assert len(got) == 3 and got[2].shape == (1, 1, 64, 64)


def test_frames_are_split_over_several_sources(contract):
    data = CalibrationData(["synthetic://ultrasound?seed=1&width=64&height=64",
                            "synthetic://ultrasound?seed=2&width=64&height=64"], 5, contract)
    assert len(list(data.inputs())) == 5
    scenes = CalibrationData(["synthetic://ultrasound?seed=7&scenes=3&width=64&height=64"], 6, contract)
    assert scenes.opened == [f"synthetic://ultrasound?seed={s}&width=64&height=64&fps=0" for s in (7, 8, 9)]
    assert len(list(scenes.inputs())) == 6


def test_description_reads_nothing_and_follows_the_folder(tmp_path, contract):
    np.save(tmp_path / "00000000.npy", np.zeros((8, 8), np.uint8))
    data = CalibrationData([str(tmp_path)], 4, contract)
    before = data.description
    assert data.reads == 0 and data.cacheable
    np.save(tmp_path / "00000001.npy", np.zeros((8, 8), np.uint8))
    assert CalibrationData([str(tmp_path)], 4, contract).description != before
    assert not CalibrationData(["zmq+tcp://127.0.0.1:5555"], 4, contract).cacheable


def test_default_eval_data_is_held_out():
    assert default_eval_uri(["synthetic://fluoroscopy?seed=2&width=128&height=128"], 300) == \
        "synthetic://fluoroscopy?seed=10000&scenes=10&width=128&height=128"
    assert default_eval_uri(["/data/recording"], 300) is None


def test_bad_requests_are_refused(contract):
    with pytest.raises(ConfigError):
        CalibrationData(["synthetic://ultrasound"], 0, contract)
    with pytest.raises(ConfigError):
        CalibrationData([], 10, contract)
