"""Pairs each overlay with the frame it was made from and hands the view to every browser.

An overlay names its frame by ``seq`` and ``t_capture_ns`` (docs/WIRE.md); the hub keys frames by
both, so a restarted sender whose ``seq`` starts again at 0 can never pair an overlay with a frame of
the previous run. Frames arrive first (straight from the sender), their overlays one inference later
(from ``medstream run``): the hub keeps the last ``ring`` frames (64: two seconds at 30 fps) and the
last few overlays whose frame has not arrived yet. An overlay whose frame never arrives is counted
(``overlay_without_frame``) and not shown: the page never draws an overlay on a frame it does not
belong to.

While no overlay has been paired for ``stale_s`` the hub sends the live frames bare (no overlay at
all), so the picture keeps moving and the page's stale banner says why there is nothing on it.

Views are encoded once (in the reader thread that completed them, and only when a page is connected)
and the same bytes are offered to every client's :class:`~medstream.runtime.web.slots.ClientSlot`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from medstream.runtime.frame import Frame, Overlay
from medstream.runtime.web.encode import encode_image, encode_mask, optional_fields, overlay_json, pack_view
from medstream.runtime.web.slots import ClientSlot

log = logging.getLogger("medstream.web")

FrameKey = tuple[int, int]  # (seq, t_capture_ns)


class ViewHub:
    """Thread-safe meeting point of the reader threads and the connected pages.

    Parameters
    ----------
    with_frames
        Whether a frame stream is read (``--frames-from``); without one, overlays are shown on black.
    stale_s
        Seconds without a paired overlay after which frames are sent bare.
    image_format, jpeg_quality
        How frames are encoded for the page (``jpeg`` or ``png``).
    ring, pending
        Frames, and overlays waiting for their frame, kept for pairing.
    clock
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, *, with_frames: bool, stale_s: float = 1.0, image_format: str = "jpeg",
                 jpeg_quality: int = 80, ring: int = 64, pending: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.with_frames = with_frames
        self.stale_s = stale_s
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self._ring_size = ring
        self._pending_size = pending
        self._clock = clock
        self._lock = threading.Lock()
        self._frames: OrderedDict[FrameKey, Frame] = OrderedDict()
        self._pending: OrderedDict[FrameKey, tuple[Overlay, dict[str, Any]]] = OrderedDict()
        self._clients: set[ClientSlot] = set()
        self._last_paired: float | None = None
        self._last_seq_sent: FrameKey | None = None
        self._status: dict[str, Any] | None = None
        self._status_rx: float | None = None
        self._last_frame_rx: float | None = None
        self._last_overlay_rx: float | None = None
        self.newest_overlay_capture_ns: int | None = None
        self.counters: dict[str, int] = {
            "frames_in": 0, "overlays_in": 0, "status_in": 0, "views_paired": 0, "views_overlay_only": 0,
            "views_frame_only": 0, "overlay_without_frame": 0, "overlay_out_of_order": 0, "optional_too_large": 0,
            "encode_failed": 0,
        }
        self.invalid_by_reason: dict[str, int] = {}

    # ------------------------------------------------------------------------------ clients
    def add_client(self, slot: ClientSlot) -> None:
        with self._lock:
            self._clients.add(slot)

    def remove_client(self, slot: ClientSlot) -> None:
        with self._lock:
            self._clients.discard(slot)
        slot.close()

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    # ------------------------------------------------------------------------------- inputs
    def on_invalid(self, reason: str) -> None:
        with self._lock:
            self.invalid_by_reason[reason] = self.invalid_by_reason.get(reason, 0) + 1

    def on_status(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._status = status
            self._status_rx = self._clock()
            self.counters["status_in"] += 1

    def on_frame(self, frame: Frame) -> None:
        """A frame from the sender: keep it for its overlay; pair it with one that came early."""
        key = (frame.seq, frame.t_capture_ns)
        now = self._clock()
        with self._lock:
            self.counters["frames_in"] += 1
            self._last_frame_rx = now
            early = self._pending.pop(key, None)
            if early is None:
                self._frames[key] = frame
                self._frames.move_to_end(key)
                while len(self._frames) > self._ring_size:
                    self._frames.popitem(last=False)
            bare = early is None and (self._last_paired is None or now - self._last_paired > self.stale_s)
            paired = early is not None and self._mark_paired_locked(key, now)
            has_clients = bool(self._clients)
            if bare and has_clients:
                self.counters["views_frame_only"] += 1
        if not has_clients:
            return
        if paired:
            self._publish(frame, *early)
        elif bare:
            self._publish(frame, None, None)

    def on_overlay(self, overlay: Overlay, raw_header: dict[str, Any] | None = None) -> None:
        """An overlay from the runtime: pair it with its own frame (or show it alone without frames)."""
        key = (overlay.seq, overlay.t_capture_ns)
        now = self._clock()
        extras, skipped = optional_fields(raw_header)
        with self._lock:
            self.counters["overlays_in"] += 1
            self.counters["optional_too_large"] += len(skipped)
            self._last_overlay_rx = now
            if self.newest_overlay_capture_ns is None or overlay.t_capture_ns > self.newest_overlay_capture_ns:
                self.newest_overlay_capture_ns = overlay.t_capture_ns
            frame = None
            if self.with_frames:
                frame = self._frames.pop(key, None)
                if frame is None:
                    self._pending[key] = (overlay, extras)
                    while len(self._pending) > self._pending_size:
                        self._pending.popitem(last=False)
                        self.counters["overlay_without_frame"] += 1
                    return
                # frames older than this one will get no overlay any more (the runtime dropped them)
                for old in [k for k in self._frames if k[1] < key[1]]:
                    del self._frames[old]
            publish = self._mark_paired_locked(key, now)
            has_clients = bool(self._clients)
        if publish and has_clients:
            self._publish(frame, overlay, extras)

    def _mark_paired_locked(self, key: FrameKey, now: float) -> bool:
        """Record a completed view; ``False`` when it is older than one already shown (not sent:
        the page's picture never goes back in time)."""
        if self._last_seq_sent is not None and key[1] < self._last_seq_sent[1]:
            self.counters["overlay_out_of_order"] += 1
            return False
        self._last_paired = now
        self._last_seq_sent = key
        self.counters["views_paired" if self.with_frames else "views_overlay_only"] += 1
        return True

    # ------------------------------------------------------------------------------ output
    def _publish(self, frame: Frame | None, overlay: Overlay | None, extras: dict[str, Any] | None) -> None:
        try:
            message = self.encode_view(frame, overlay, extras)
        except Exception:
            log.exception("encoding a view for the browser failed")
            with self._lock:
                self.counters["encode_failed"] += 1
            return
        with self._lock:
            clients = list(self._clients)
        for slot in clients:
            slot.put(message)

    def encode_view(self, frame: Frame | None, overlay: Overlay | None, extras: dict[str, Any] | None) -> bytes:
        image = mime = None
        frame_size = None
        if frame is not None:
            image, mime = encode_image(frame, self.image_format, self.jpeg_quality)
            frame_size = (int(frame.image.shape[0]), int(frame.image.shape[1]))
        body = mask_png = None
        if overlay is not None:
            mask_png = encode_mask(overlay.mask)
            body = overlay_json(overlay, len(mask_png), extras)
            frame_size = frame_size or tuple(overlay.frame_size)
        ref = overlay if overlay is not None else frame
        assert ref is not None
        return pack_view(seq=ref.seq, t_capture_ns=ref.t_capture_ns, image=image, mime=mime, frame_size=frame_size,
                         overlay=body, mask_png=mask_png, t_sent_ms=time.time() * 1e3)

    # ------------------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """What the page shows besides the picture: the runtime's status and the web path's counters."""
        now = self._clock()
        with self._lock:
            status = self._status
            return {
                "status": status,
                "status_rx_age_ms": None if self._status_rx is None else round((now - self._status_rx) * 1e3, 1),
                "frame_rx_age_ms": None if self._last_frame_rx is None else round((now - self._last_frame_rx) * 1e3, 1),
                "overlay_rx_age_ms": None if self._last_overlay_rx is None else round((now - self._last_overlay_rx) * 1e3, 1),
                "newest_overlay_capture_ms": None if self.newest_overlay_capture_ns is None
                else self.newest_overlay_capture_ns / 1e6,
                "web": {**self.counters, "invalid_by_reason": dict(self.invalid_by_reason), "clients": len(self._clients)},
                "with_frames": self.with_frames,
            }
