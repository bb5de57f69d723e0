from __future__ import annotations

import threading

from medstream.runtime.accounting import FrameAccounting
from medstream.runtime.mailbox import LatestMailbox


def test_mailbox_keeps_only_the_newest_and_reports_what_it_replaces():
    superseded = []
    box = LatestMailbox(superseded.append)
    for i in range(5):
        box.put(i)
    assert box.take(0.01) == 4 and superseded == [0, 1, 2, 3]
    assert box.take(0.01) is None


def test_mailbox_take_wakes_on_put():
    box = LatestMailbox(lambda _: None)
    threading.Timer(0.05, box.put, args=("x",)).start()
    assert box.take(2.0) == "x"


def test_accounting_invariant_and_latency_percentiles():
    a = FrameAccounting()
    for _ in range(10):
        a.on_received()
    for _ in range(6):
        a.on_processed()
    a.on_dropped("superseded", n=3)
    c = a.counters()
    assert c["in_flight"] == 1 and c["dropped_total"] == 3
    for ms in range(1, 101):
        a.record_latency("total", float(ms))
    s = a.latency_summary()["total"]
    assert abs(s["p50"] - 50) < 0.5 and abs(s["p99"] - 99) < 0.5 and s["max"] >= 99.9


def test_gaps_in_the_source_sequence_are_counted_as_lost_upstream():
    a = FrameAccounting()
    for seq in (0, 1, 2, 5, 6, 10, 0, 1):  # 3+4 missing, then the sender restarts at 0
        a.on_sequence("s", seq)
    a.on_sequence("other", 100)
    assert a.counters()["lost_upstream"] == 5


def test_preloaded_synthetic_source_cycles_rendered_frames_with_fresh_seq():
    from medstream.runtime.sources import open_source

    src = open_source("synthetic://ultrasound?fps=0&preload=3&frames=7&width=64&height=64")
    src.open()
    frames = [src.read(1.0) for _ in range(7)]
    assert [f.seq for f in frames] == list(range(7))
    assert frames[0].image is frames[3].image and frames[1].image is not frames[0].image
    assert all(b.t_capture_ns >= a.t_capture_ns for a, b in zip(frames, frames[1:], strict=False))


def test_atomic_json_writes_are_readable_by_others(tmp_path):
    import json
    import os
    import stat

    from medstream.runtime.files import DEFAULT_MODE, write_json_atomic

    path = write_json_atomic(tmp_path / "sub" / "summary.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat.S_IMODE(os.stat(path).st_mode) == DEFAULT_MODE
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary file left behind
