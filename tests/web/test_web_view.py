"""The web view in a real browser: simulate -> run -> view --web -> Debian's headless Chromium (Selenium).

Three medstream processes on loopback ports and the bundled ultrasound model. The test subscribes to
the overlay topic itself and reads each overlay's mask with its own few lines (not runtime.wire), then
compares the page's mask canvas (getImageData) with the mask of the very seq the page says it drew.

Needs ``apt-get install chromium chromium-driver`` (scripts/test.sh does it when run as root) and the
dev extra (selenium, starlette, uvicorn, websockets). The screenshot goes to the test's tmp folder, and
to docs/images/web_view_segmentation.png when MEDSTREAM_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

from medstream.benchmarks.web_latency import browser_missing, headless_chromium, pipeline, wait_js

REPO = Path(__file__).resolve().parents[2]
STALE_MS = 1500.0  # generous: the 2 cores are shared with other test runs
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_why = browser_missing()
if _why:  # loud: the reason shows in the summary line of every run (-ra)
    pytest.skip(f"BROWSER TEST NOT RUN: {_why} (scripts/test.sh installs it when run as root)",
                allow_module_level=True)
pytest.importorskip("starlette", reason="the [web] extra is not installed: pip install -e '.[dev]'")


class OverlayTap(threading.Thread):
    """Every overlay's seq, capture time, class colours and mask, read independently of runtime.wire."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"overlay")
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.by_seq: dict[int, dict] = {}
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                parts = self.sock.recv_multipart()
                head = json.loads(parts[1])
                h, w = head["mask"]["shape"]
                mask = np.frombuffer(parts[2], np.uint8).reshape(h, w)
                self.by_seq[head["seq"]] = {"t": head["t_capture_ns"], "mask": mask,
                                            "colors": [c["color"] for c in head["classes"]]}

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        self.sock.close()


def canvas_classes(snap: dict, colors: list[list[int]]) -> np.ndarray:
    """Class ids from the page's mask canvas pixels: transparent = background (or a hidden class)."""
    rgba = np.frombuffer(base64.b64decode(snap["rgba_b64"]), np.uint8).reshape(snap["h"], snap["w"], 4)
    ids = np.full(rgba.shape[:2], -1, np.int32)
    ids[rgba[:, :, 3] == 0] = 0
    for i, color in enumerate(colors[1:], start=1):
        ids[(rgba[:, :, 3] == 255) & np.all(rgba[:, :, :3] == color[:3], axis=2)] = i
    return ids


def snapshot_with_reference(driver, tap: OverlayTap, timeout: float = 5.0):
    """The page's mask canvas and the independently read overlay of the same seq."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = driver.execute_script("return window.medstreamView.snapshotMask();")
        ref = tap.by_seq.get(snap["seq"]) if snap else None
        if ref is not None:
            assert snap["t_capture_ns"] == str(ref["t"]), "the page drew an overlay with another capture time"
            return snap, ref
        time.sleep(0.1)
    raise AssertionError("the page's overlay seq never showed up on the overlay topic")


def diagnose(driver, pipe) -> str:
    """What the page and the three processes said, for a failure message."""
    try:
        reasons = driver.execute_script("return window.medstreamView && window.medstreamView.staleReasons")
    except Exception as exc:  # the page itself may be gone
        reasons = f"(page unreadable: {exc})"
    logs = "\n".join(f"--- {name}.log (exit {p.poll()}):\n" + (pipe["workdir"] / f"{name}.log").read_text()[-1500:]
                     for name, p in pipe["procs"].items())
    return f"page stale reasons: {reasons}\n{logs}"


def test_live_page_draws_the_right_mask_shows_age_and_goes_stale(tmp_path):
    t_start = time.monotonic()
    with pipeline(tmp_path, stale_ms=STALE_MS, threads=1) as pipe, headless_chromium() as driver:
        tap = OverlayTap(f"tcp://127.0.0.1:{pipe['ports']['overlays']}")
        try:
            url, port = pipe["url"], pipe["ports"]["web"]
            token = url.split("token=", 1)[1]

            # a wrong token gets nothing: not the page, not a script, not a socket
            driver.get(f"http://127.0.0.1:{port}/?token=wrong-{token[:4]}")
            assert "valid access token is needed" in driver.find_element("tag name", "body").text
            assert driver.execute_script("return typeof window.medstreamView") == "undefined"
            for path in ("/?token=wrong", "/app.js", "/app.js?token=wrong"):
                with pytest.raises(urllib.error.HTTPError) as err:
                    NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=5)
                assert err.value.code == 401
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            with pytest.raises(InvalidStatus) as ws_err:
                connect(f"ws://127.0.0.1:{port}/ws?token=wrong", proxy=None, open_timeout=5)
            assert ws_err.value.response.status_code == 403

            # the real page: overlays arrive, seq and age move
            driver.get(url)
            try:
                wait_js(driver, "window.medstreamView && window.medstreamView.seq !== null && !window.medstreamView.stale", 45)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{diagnose(driver, pipe)}") from None
            seq1 = driver.execute_script("return window.medstreamView.seq")
            age1 = driver.find_element("id", "age").text
            time.sleep(1.0)
            seq2 = driver.execute_script("return window.medstreamView.seq")
            age2 = driver.find_element("id", "age").text
            assert seq2 > seq1, "the frame seq did not advance"
            assert age1.endswith(" ms") and age2.endswith(" ms") and float(age2.split()[0]) < STALE_MS
            # the seq shown is the frame drawn: read both in one script (the page moves on between two calls)
            shown, drawn = driver.execute_script(
                "return [document.getElementById('seq').textContent, String(window.medstreamView.frameSeq)]")
            assert shown.startswith(drawn), (shown, drawn)
            fps = driver.find_element("id", "fps").text
            assert "/" in fps and float(fps.split("/")[0]) > 5, fps
            assert driver.find_element("id", "source-state").text == "source live"

            # the mask pixels on the canvas are the overlay's own, for the seq the page drew
            snap, ref = snapshot_with_reference(driver, tap)
            got = canvas_classes(snap, ref["colors"])
            assert (got >= 0).all(), "canvas pixels in a colour no class has"
            assert (ref["mask"] > 0).sum() > 50, "the model found nothing: the comparison would prove little"
            np.testing.assert_array_equal(got, ref["mask"])

            # per-class toggle: class 1 off leaves its pixels transparent, the other class drawn
            driver.find_element("id", "class-1").click()
            snap, ref = snapshot_with_reference(driver, tap)
            got = canvas_classes(snap, ref["colors"])
            expected = np.where(ref["mask"] == 1, 0, ref["mask"])
            np.testing.assert_array_equal(got, expected)
            driver.find_element("id", "class-1").click()

            time.sleep(0.5)
            shot = tmp_path / "web_view_segmentation.png"
            driver.save_screenshot(str(shot))
            if os.environ.get("MEDSTREAM_UPDATE_SCREENSHOTS") == "1":
                shutil.copyfile(shot, REPO / "docs" / "images" / "web_view_segmentation.png")

            # stop the source: the banner must come within the threshold (plus one 100 ms check and a
            # last overlay still in flight)
            assert not driver.execute_script("return window.medstreamView.stale")
            t_stop = time.monotonic()
            pipe["procs"]["simulate"].send_signal(signal.SIGINT)
            wait_js(driver, "window.medstreamView.stale", STALE_MS / 1e3 + 3, interval=0.05)
            elapsed_ms = (time.monotonic() - t_stop) * 1e3
            assert elapsed_ms <= STALE_MS + 500, f"stale banner after {elapsed_ms:.0f} ms"
            banner = driver.find_element("id", "stale")
            assert banner.is_displayed() and banner.text.startswith("STALE")
            assert "stale" in driver.find_element("id", "stage").get_attribute("class").split()
            stats = driver.execute_script("return window.medstreamView.stats()")
            assert stats["decode_errors"] == 0 and stats["views"] > 10
        finally:
            tap.close()
    print(f"browser test took {time.monotonic() - t_start:.1f} s")


class TaskTap(threading.Thread):
    """The classifier's label or the detector's boxes per seq, read from the overlay header (not runtime.wire)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"overlay")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.by_seq: dict[int, dict] = {}
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                head = json.loads(self.sock.recv_multipart()[1])
                self.by_seq[head["seq"]] = head

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        self.sock.close()


@pytest.mark.parametrize("model, task", [("needle-classifier", "classification"),
                                         ("ultrasound-detector", "detection")])
def test_the_page_shows_each_tasks_answer(tmp_path, model, task):
    """One screenshot per task type (docs/images/web_view_<task>.png with MEDSTREAM_UPDATE_SCREENSHOTS=1)."""
    with pipeline(tmp_path, stale_ms=STALE_MS, threads=1, model=model) as pipe, headless_chromium() as driver:
        tap = TaskTap(f"tcp://127.0.0.1:{pipe['ports']['overlays']}")
        try:
            driver.get(pipe["url"])
            try:
                wait_js(driver, "window.medstreamView && window.medstreamView.seq !== null && "
                                "!window.medstreamView.stale", 45)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{diagnose(driver, pipe)}") from None
            time.sleep(1.0)
            seq = driver.execute_script("return window.medstreamView.seq")
            deadline = time.monotonic() + 5
            while seq not in tap.by_seq and time.monotonic() < deadline:
                time.sleep(0.1)
            head = tap.by_seq[seq]
            names = [c["name"] for c in head["classes"]]
            if task == "classification":
                shown = driver.find_element("id", "label").text
                # the page names the class the overlay's label (a class id) points at
                assert head.get("label") is not None and shown.startswith(names[head["label"]]), (shown, head)
            else:
                assert "boxes" in head  # the detector's overlay carries boxes (possibly none on a frame)
                # every class is listed for toggling: a detector's class 0 is a real class, not background
                listed = driver.execute_script(
                    "return Array.from(document.querySelectorAll('#classes [id^=class-name-]')).map(e => e.textContent)")
                assert listed == names, (listed, names)
            shot = tmp_path / f"web_view_{task}.png"
            driver.save_screenshot(str(shot))
            if os.environ.get("MEDSTREAM_UPDATE_SCREENSHOTS") == "1":
                shutil.copyfile(shot, REPO / "docs" / "images" / f"web_view_{task}.png")
        finally:
            tap.close()
