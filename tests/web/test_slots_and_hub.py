"""Latest-only delivery per page (ClientSlot) and overlay-to-frame pairing (ViewHub), without a network."""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest

from medstream.runtime.frame import Contour, Frame, Overlay
from medstream.runtime.web.hub import ViewHub
from medstream.runtime.web.slots import ClientSlot


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _accounting_holds(slot: ClientSlot) -> bool:
    c = slot.counters()
    return c["offered"] == c["sent"] + c["dropped_total"] + c["waiting"]


def test_a_slow_client_gets_the_newest_and_every_skipped_view_is_counted():
    slot: ClientSlot[int] = ClientSlot(window=1)
    for i in range(10):
        slot.put(i)
        assert _accounting_holds(slot)
    assert slot.take() == 9  # only the newest survives
    c = slot.counters()
    assert c["dropped"]["superseded"] == 9 and c["sent"] == 1 and c["waiting"] == 0
    # window full: nothing more is sent until the page acknowledges, newer views replace each other
    for i in range(10, 15):
        slot.put(i)
        assert slot.take() is None
    assert slot.counters()["dropped"]["superseded"] == 13
    slot.ack()
    assert slot.take() == 14
    assert _accounting_holds(slot)
    assert slot.counters() | {} == {**slot.counters(), "offered": 15, "sent": 2, "acked": 1, "in_flight": 1}


def test_a_fast_client_loses_nothing():
    slot: ClientSlot[int] = ClientSlot(window=1)
    got = []
    for i in range(50):
        slot.put(i)
        got.append(slot.take())
        slot.ack()
    assert got == list(range(50))
    assert slot.counters()["dropped_total"] == 0


def test_window_two_keeps_two_in_flight():
    slot: ClientSlot[int] = ClientSlot(window=2)
    slot.put(1)
    assert slot.take() == 1
    slot.put(2)
    assert slot.take() == 2
    slot.put(3)
    assert slot.take() is None and slot.in_flight == 2 and slot.waiting == 1


def test_a_page_that_never_acknowledges_is_written_off_after_the_timeout():
    clock = FakeClock()
    slot: ClientSlot[int] = ClientSlot(window=1, ack_timeout_s=2.0, clock=clock)
    slot.put(1)
    assert slot.take() == 1
    slot.put(2)
    clock.t += 1.9
    assert slot.take() is None
    clock.t += 0.2
    assert slot.take() == 2
    assert slot.counters()["ack_timeouts"] == 1


def test_closing_counts_the_waiting_view_and_notify_is_called_per_put():
    calls = []
    slot: ClientSlot[int] = ClientSlot(notify=lambda: calls.append(1))
    slot.put(1)
    slot.put(2)
    slot.close()
    c = slot.counters()
    assert len(calls) == 2
    assert c["dropped"] == {"superseded": 1, "disconnected": 1} and _accounting_holds(slot)


def test_slot_rejects_a_zero_window():
    with pytest.raises(ValueError):
        ClientSlot(window=0)


# ------------------------------------------------------------------------------------------- hub
def _frame(seq: int, t: int, value: int = 0) -> Frame:
    image = np.full((32, 48), value, np.uint8)
    image[seq % 32, :] = 255  # a frame-specific row, to recognise it after encoding
    return Frame(seq=seq, t_capture_ns=t, image=image, source_id="s")


def _overlay(seq: int, t: int) -> Overlay:
    mask = np.zeros((16, 24), np.uint8)
    mask[: seq % 16 + 1, :5] = 1
    return Overlay(seq=seq, t_capture_ns=t, source_id="s", model_id="m", class_names=("bg", "a"),
                   class_colors=((0, 0, 0), (255, 0, 0)), mask=mask, frame_size=(32, 48),
                   contours=[Contour(class_id=1, points=np.array([[0, 0], [4, 0], [4, 4]], np.int32))],
                   areas_px={"a": int(mask.sum())}, t_publish_ns=t + 5_000_000)


def _unpack(message: bytes):
    """Independent reading of the view layout (docs/WEB.md), not runtime.web.encode.unpack_view."""
    (n,) = struct.unpack("<I", message[:4])
    head = json.loads(message[4:4 + n])
    rest = message[4 + n:]
    ni = head["frame"]["bytes"] if head["frame"] else 0
    image = cv2.imdecode(np.frombuffer(rest[:ni], np.uint8), cv2.IMREAD_UNCHANGED) if ni else None
    mask = cv2.imdecode(np.frombuffer(rest[ni:], np.uint8), cv2.IMREAD_UNCHANGED) if head["overlay"] else None
    return head, image, mask


class Page:
    """A page that takes every view the moment it is offered (so none is superseded)."""

    def __init__(self) -> None:
        self.slot: ClientSlot[bytes] = ClientSlot(window=1_000_000, notify=self._take)
        self.got: list[bytes] = []

    def _take(self) -> None:
        self.got.append(self.slot.take())


def _hub_with_client(**kw) -> tuple[ViewHub, Page]:
    hub = ViewHub(image_format="png", **kw)
    page = Page()
    hub.add_client(page.slot)
    return hub, page


def _drain(page: Page) -> list:
    out = [_unpack(m) for m in page.got]
    page.got.clear()
    return out


def test_overlays_are_paired_with_their_own_frame_by_seq_and_capture_time():
    hub, slot = _hub_with_client(with_frames=True)
    for seq in range(5):
        hub.on_frame(_frame(seq, 1000 + seq))
    # the runtime skipped 0, 1 and 3 (superseded); an overlay for seq 2 with another capture time
    # (a restarted sender) must not be paired with frame 2
    hub.on_overlay(_overlay(2, 999_999))
    hub.on_overlay(_overlay(2, 1002))
    hub.on_overlay(_overlay(4, 1004))
    views = [v for v in _drain(slot) if v[0]["overlay"]]
    assert [v[0]["seq"] for v in views] == [2, 4]
    for head, image, mask in views:
        seq = head["seq"]
        np.testing.assert_array_equal(image, _frame(seq, 1000 + seq).image)  # PNG: exact
        np.testing.assert_array_equal(mask, _overlay(seq, 1000 + seq).mask)
        assert head["overlay"]["t_capture_ns"] == str(1000 + seq)
    assert hub.counters["views_paired"] == 2


def test_an_overlay_that_comes_before_its_frame_waits_for_it_and_one_without_a_frame_is_never_shown():
    hub, slot = _hub_with_client(with_frames=True, pending=2)
    hub.on_frame(_frame(0, 1000))
    _drain(slot)  # the first frame goes out bare (no overlay yet)
    hub.on_overlay(_overlay(1, 1001))
    assert _drain(slot) == []
    hub.on_frame(_frame(1, 1001))
    (head, image, mask), = _drain(slot)
    assert head["seq"] == 1 and head["overlay"]["seq"] == 1
    np.testing.assert_array_equal(image, _frame(1, 1001).image)
    for seq in (7, 8, 9):  # frames that never come
        hub.on_overlay(_overlay(seq, 2000 + seq))
    assert hub.counters["overlay_without_frame"] == 1  # one evicted from the two-slot pending list
    assert _drain(slot) == []


def test_frames_go_out_bare_only_while_the_overlay_is_stale():
    clock = FakeClock()
    hub, slot = _hub_with_client(with_frames=True, stale_s=1.0, clock=clock)
    hub.on_frame(_frame(0, 1000))
    hub.on_overlay(_overlay(0, 1000))
    hub.on_frame(_frame(1, 1001))  # fresh overlay: frame 1 waits for its own overlay, nothing sent bare
    views = _drain(slot)
    assert [(h["seq"], h["overlay"] is not None) for h, _, _ in views] == [(0, False), (0, True)]
    clock.t += 1.5
    hub.on_frame(_frame(2, 1002))
    (head, image, mask), = _drain(slot)
    assert head["seq"] == 2 and head["overlay"] is None and mask is None
    assert hub.counters["views_frame_only"] == 2


def test_without_frames_overlays_go_out_alone_and_older_ones_are_not_sent_after_newer():
    hub, slot = _hub_with_client(with_frames=False)
    hub.on_overlay(_overlay(5, 1005))
    hub.on_overlay(_overlay(4, 1004))
    views = _drain(slot)
    assert [h["seq"] for h, _, _ in views] == [5]
    assert views[0][0]["frame"] is None and views[0][0]["overlay"]["frame_size"] == [32, 48]
    assert hub.counters["overlay_out_of_order"] == 1


def test_optional_overlay_keys_pass_through_and_oversized_ones_are_counted():
    hub, slot = _hub_with_client(with_frames=False)
    raw = {"label": "needle", "confidence": 0.93, "low_confidence": False,
           "boxes": [{"xyxy": [1, 2, 10, 20], "class_id": 1, "score": 0.9}], "unknown": 1}
    hub.on_overlay(_overlay(1, 1001), raw)
    hub.on_overlay(_overlay(2, 1002), {"boxes": [[0, 0, 1, 1]] * 20000})
    (h1, _, _), (h2, _, _) = _drain(slot)
    assert {k: h1["overlay"][k] for k in ("label", "confidence", "low_confidence", "boxes")} == {
        k: raw[k] for k in ("label", "confidence", "low_confidence", "boxes")}
    assert "unknown" not in h1["overlay"] and "boxes" not in h2["overlay"]
    assert hub.counters["optional_too_large"] == 1


def test_no_encoding_without_a_page():
    hub = ViewHub(with_frames=True)
    hub.encode_view = None  # would raise if called
    hub.on_frame(_frame(0, 1000))
    hub.on_overlay(_overlay(0, 1000))
    assert hub.counters["views_paired"] == 1 and hub.counters["encode_failed"] == 0
