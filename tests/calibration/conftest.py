"""Fixtures of the calibration tests: hand-set mini U-Nets and deterministic frame folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.calibration.models import save, unet_like, write_eval_folder, write_frame_folder


@pytest.fixture(scope="session")
def cal_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calibration")


@pytest.fixture(scope="session")
def unet_model(cal_dir) -> Path:
    """64x64 grey NCHW mini U-Net with a contract; int8 loses nothing on blocky frames."""
    return save(unet_like(), cal_dir / "models" / "unet.onnx")


@pytest.fixture(scope="session")
def saturating_model(cal_dir) -> Path:
    """The same network with a head whose output range (~1000) drowns the logit differences in int8."""
    return save(unet_like(saturating_head=True, model_id="tiny-unet-saturating"), cal_dir / "models" / "saturating.onnx")


@pytest.fixture(scope="session")
def calib_folder(cal_dir) -> Path:
    """24 blocky grey .npy frames (calibration data, read through file://)."""
    return write_frame_folder(cal_dir / "calib", n=24)


@pytest.fixture(scope="session")
def eval_folder(cal_dir) -> Path:
    """24 held-out blocky frames with exact truth masks (.npz image + mask)."""
    return write_eval_folder(cal_dir / "eval", n=24)


def request_for(model: Path, out: Path, calib: Path, evald: Path, **kw):
    """A fast CalibrateRequest: 16 calibration frames, 24 held-out frames, no latency runs, no progress bar."""
    from medstream.calibration.pipeline import CalibrateRequest

    opts = {"frames": 16, "eval_frames": 24, "latency_runs": 0, "progress": False, "cache_dir": out.parent / "cache"}
    opts.update(kw)
    return CalibrateRequest(model=model, data=[str(calib)], out=out, eval_data=f"file://{evald}", **opts)


@pytest.fixture(scope="session")
def calibrated(cal_dir, unet_model, calib_folder, eval_folder):
    """One calibration of the mini U-Net with every output written: ``(result, fp32 model path)``."""
    from medstream.calibration.pipeline import calibrate

    out = cal_dir / "out" / "unet.int8.onnx"
    result = calibrate(request_for(unet_model, out, calib_folder, eval_folder, latency_runs=3))
    assert result.passed, result.to_dict()
    return result, unet_model


@pytest.fixture(autouse=True)
def _restore_medstream_log_handlers():
    """``medstream.cli.main.main`` points the medstream logger at the (captured) stderr of the test that
    called it; put the handlers back so later tests do not log into a closed capture stream."""
    import logging

    logger = logging.getLogger("medstream")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
