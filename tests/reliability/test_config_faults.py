"""Fault matrix, set-up: config errors, port in use, disk full while recording. Clear error, no partial state."""

from __future__ import annotations

import contextlib
import errno
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from medstream.runtime.errors import ConfigError
from tests.conftest import free_port
from tests.reliability._helpers import make_pipeline, medstream

SOURCE = "synthetic://ultrasound?fps=30&width=64&height=64"


def test_config_typo_is_refused_naming_the_key_and_nothing_starts(tmp_path, tiny_model, endpoint):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model}\npublish: {endpoint}\nsoruce: synthetic://ultrasound\n")
    proc = medstream("run", "--config", str(cfg))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "unknown key 'soruce'" in err and str(cfg) in err and "nothing was started" in err
    s = zmq.Context.instance().socket(zmq.PUB)
    s.bind(endpoint)  # the port was never taken
    s.close(0)


def test_port_in_use_is_a_clear_error(tiny_model, endpoint):
    s = zmq.Context.instance().socket(zmq.PUB)
    s.bind(endpoint)
    try:
        with pytest.raises(ConfigError) as exc:
            make_pipeline(tiny_model, endpoint, SOURCE)
        assert endpoint in exc.value.what and "already uses it" in exc.value.fix
    finally:
        s.close(0)


@contextlib.contextmanager
def tiny_disk(path: Path):
    """A 64 KiB tmpfs (needs root and mount permission); skips otherwise."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); test_disk_full_monkeypatched covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _sender(port: int) -> subprocess.Popen:
    return medstream("simulate", "--publish", f"tcp://127.0.0.1:{port}", "--rate", "60", "--width", "64",
                     "--height", "64", "--truth")


def _check_no_partial_frame(out: Path) -> int:
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], f"temporary files left behind: {names}"
    stems = {n.split(".")[0] for n in names}
    for stem in stems:  # every frame on disk is complete: image, header and truth
        assert {f"{stem}.npy", f"{stem}.json", f"{stem}.truth.npy"} <= set(names), (stem, names)
    return len(stems)


@pytest.fixture(scope="module")
def full_disk_recording(tmp_path_factory):
    """``medstream record`` into a 64 KiB tmpfs until the disk is full: (exit code, stderr, folder)."""
    port = free_port()
    sim = _sender(port)
    try:
        with tiny_disk(tmp_path_factory.mktemp("full") / "disk") as disk:
            time.sleep(1.0)
            proc = medstream("record", "--connect", f"tcp://127.0.0.1:{port}", "--frames", "500", "--out",
                             str(disk / "rec"), "--no-progress", "--timeout", "20")
            _, err = proc.communicate(timeout=60)
            yield proc.returncode, err, _check_no_partial_frame(disk / "rec")
    finally:
        sim.terminate()
        sim.wait(10)


def test_disk_full_while_recording_real_tmpfs_stops_cleanly(full_disk_recording):
    rc, err, complete_frames = full_disk_recording
    assert rc == 2 and "->" in err, err[-2000:]
    assert 0 < complete_frames < 500  # and no half-written frame or temporary file (checked in the fixture)


def test_disk_full_message_names_the_cause(full_disk_recording):
    _, err, _ = full_disk_recording
    assert "disk full" in err


def test_disk_full_monkeypatched(tmp_path, monkeypatch):
    """Where mounting is not allowed: the write raises ENOSPC on the 4th frame (simulated, said so here)."""
    import numpy as np

    from medstream.runtime import recording

    calls = {"n": 0}
    real_save = np.save

    def full_disk_save(f, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] > 7:  # frames 1-3 (image + truth each) fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(f, arr, *a, **k)

    monkeypatch.setattr(recording.np, "save", full_disk_save)
    port = free_port()
    sim = _sender(port)
    try:
        time.sleep(1.0)
        with pytest.raises(recording.RecordingError, match="disk full"):
            recording.record(f"tcp://127.0.0.1:{port}", 50, tmp_path / "rec", timeout_s=20)
    finally:
        sim.terminate()
        sim.wait(10)
    assert _check_no_partial_frame(tmp_path / "rec") == 3
