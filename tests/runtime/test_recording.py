"""``medstream record``: real ZeroMQ on 127.0.0.1, real files; malformed frames counted, full disk handled."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from medstream.cli.main import main as cli_main
from medstream.runtime.errors import ConfigError, SourceError
from medstream.runtime.frame import Frame
from medstream.runtime.recording import FrameWriter, RecordingError, record
from medstream.runtime.wire import encode_frame


def make_frame(seq: int, truth: bool = True, color: str = "gray") -> Frame:
    """Frame ``seq``: deterministic pixels, a 3-class truth mask when asked."""
    rng = np.random.default_rng(seq)
    image = rng.integers(0, 256, (48, 64) if color == "gray" else (48, 64, 3), dtype=np.uint8)
    mask = ((image[..., 0] if image.ndim == 3 else image) // 100).astype(np.uint8) if truth else None
    return Frame(seq=seq, t_capture_ns=1_700_000_000_000_000_000 + seq, image=image, source_id="probe-1",
                 truth=mask, color_order=color)


class Publisher:
    """A PUB socket on an OS-picked port, sending frames (with truth) in a thread until stopped.

    Every ``bad_every``-th message is malformed (a header that is not JSON). Frames keep coming
    until the test stops it, so a subscriber that joins late still gets what it asked for.
    """

    def __init__(self, bad_every: int = 0, truth: bool = True, color: str = "gray") -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.bad_every, self.truth, self.color = bad_every, truth, color
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def frame(self, seq: int) -> Frame:
        return make_frame(seq, self.truth, self.color)

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            self.sent += 1
            if self.bad_every and self.sent % self.bad_every == 0:
                self.sock.send_multipart([b"frame", b"{not json", b"\x00" * 16])
            else:
                self.sock.send_multipart(encode_frame(self.frame(seq)))
                seq += 1
            time.sleep(0.002)

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close(0)


def test_record_writes_frames_headers_and_truth_and_counts_malformed(tmp_path):
    out = tmp_path / "rec"
    with Publisher(bad_every=4) as pub:
        summary = record(pub.endpoint, 12, out, timeout_s=10)
    assert summary.frames == 12 and summary.with_truth == 12
    assert summary.malformed.get("bad_header", 0) >= 2  # one in four messages was broken
    images = sorted(p.name for p in out.glob("*.npy") if not p.name.endswith(".truth.npy"))
    assert images == [f"{i:08d}.npy" for i in range(12)]
    for i in range(12):
        header = json.loads((out / f"{i:08d}.json").read_text())
        image = np.load(out / f"{i:08d}.npy")
        truth = np.load(out / f"{i:08d}.truth.npy")
        expected = pub.frame(header["seq"])
        np.testing.assert_array_equal(image, expected.image)
        np.testing.assert_array_equal(truth, expected.truth)
        assert header["source_id"] == "probe-1" and header["color_order"] == "gray"
        assert header["shape"] == [48, 64] and header["dtype"] == "|u1"
        assert header["t_capture_ns"] == 1_700_000_000_000_000_000 + header["seq"]
    seqs = [json.loads((out / f"{i:08d}.json").read_text())["seq"] for i in range(12)]
    assert seqs == sorted(seqs) and summary.first_seq == seqs[0] and summary.last_seq == seqs[-1]
    assert not list(out.glob(".*"))  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}  # not mkstemp's 0600


def test_recorded_folder_replays_through_file_source(tmp_path):
    from medstream.runtime.errors import SourceEnded
    from medstream.runtime.sources import open_source

    out = tmp_path / "rec"
    with Publisher(truth=False, color="rgb") as pub:
        record(pub.endpoint, 5, out, timeout_s=10)
    frames = []
    with open_source(f"file://{out}?fps=0") as src:
        while True:
            try:
                frame = src.read(1.0)
            except SourceEnded:
                break
            frames.append(frame)
    assert len(frames) == 5
    assert all(f.color_order == "rgb" and f.source_id == "probe-1" and f.image.shape == (48, 64, 3) for f in frames)
    np.testing.assert_array_equal(frames[0].image, np.load(out / "00000000.npy"))


def test_disk_full_removes_the_incomplete_frame_and_says_what_to_do(tmp_path, monkeypatch):
    """ENOSPC is simulated (this machine's disk cannot be filled safely): the image write of frame 2 fails
    after its truth and header were written; both are removed, frames 0-1 stay complete."""
    writer = FrameWriter(tmp_path)
    writer.write(make_frame(0))
    writer.write(make_frame(1))
    real_save = np.save
    calls = {"n": 0}

    def full_disk(f, arr, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # frame 2: the truth goes through, the image hits a full disk half-way
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(f, arr, *a, **kw)

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(RecordingError) as info:
        writer.write(make_frame(2))
    assert "disk full" in str(info.value) and "2 complete frames" in str(info.value)
    assert info.value.fix and "free space" in info.value.fix
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00000000.json", "00000000.npy", "00000000.truth.npy",
                     "00000001.json", "00000001.npy", "00000001.truth.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "00000001.npy"), make_frame(1).image)


def test_no_publisher_times_out_with_a_clear_error(tmp_path):
    with zmq.Context.instance().socket(zmq.PUB) as sock:  # bound but silent
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="no frame from tcp://127.0.0.1"):
            record(f"tcp://127.0.0.1:{port}", 3, tmp_path / "rec", timeout_s=0.5)
        assert time.monotonic() - t0 < 5


def test_refuses_a_folder_that_already_holds_a_recording(tmp_path):
    (tmp_path / "00000000.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds recorded frames"):
        record("tcp://127.0.0.1:1", 1, tmp_path)
    with pytest.raises(ConfigError, match="not a ZeroMQ endpoint"):
        record("http://x", 1, tmp_path / "new")


def test_record_command(tmp_path, capsys):
    import logging

    saved = list(logging.getLogger("medstream").handlers)
    out = tmp_path / "rec"
    try:
        with Publisher(bad_every=5) as pub:
            code = cli_main(["record", "--connect", "zmq+" + pub.endpoint, "--frames", "6", "--out", str(out),
                             "--no-progress"])
    finally:
        logging.getLogger("medstream").handlers[:] = saved
    assert code == 0
    text = capsys.readouterr().out
    assert "recorded 6 frames (6 with ground truth)" in text and "bad_header=" in text
    assert len([p for p in Path(out).glob("*.json")]) == 6
