"""Read medstream's own OpenIGTLink output back as overlays (``medstream view --connect igtl://...``, benchmarks).

Connects to an ``igtl://`` sink as 3D Slicer would and pairs each label-map IMAGE with the STRING that
follows it (same timestamp: the overlay JSON with seq, classes and colours) into an
:class:`~medstream.runtime.frame.Overlay` at frame size (``mask`` is the label map, ``geometry`` its
placement). A label map whose STRING does not come is still returned, with ``seq`` -1 and the classes
unnamed. Every message's CRC is checked; malformed ones are counted in ``invalid`` and skipped.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from typing import Any

from medstream.runtime.errors import SourceError
from medstream.runtime.frame import Overlay
from medstream.runtime.igtl import messages as igtl
from medstream.runtime.igtl.stream import MessageReader, PeerClosed
from medstream.runtime.wire import WireError

#: Colours for class ids when no overlay JSON named them (class 0 is background).
_PALETTE = ((0, 0, 0), (220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40), (220, 40, 220), (40, 220, 220))


class OverlayReceiver:
    """A client of an OpenIGTLink overlay sink; :meth:`read` returns the next overlay or ``None``."""

    def __init__(self, host: str, port: int, *, device: str = "Prediction", info_device: str | None = None,
                 connect_timeout_s: float = 2.0) -> None:
        igtl.pyigtl()
        self.host, self.port = host, port
        self.device = device
        self.info_device = info_device or device + "Info"
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as exc:
            raise SourceError(f"cannot connect to the OpenIGTLink overlay sink {host}:{port}: {exc.strerror or exc}",
                              "start medstream run with --publish igtl://HOST:PORT first") from None
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = MessageReader()
        self._pending: tuple[Overlay, int] | None = None  # a label map waiting for its STRING (and when it came)
        self.invalid = 0
        self.last_arrival_ns = 0

    def read(self, timeout: float) -> Overlay | None:
        """The next overlay within ``timeout`` seconds; :class:`SourceError` when the sink closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.reader.poll(self.sock)
            except PeerClosed:
                raise SourceError(f"the overlay sink {self.host}:{self.port} closed the connection",
                                  "is medstream run still running?") from None
            except WireError as exc:
                raise SourceError(f"the overlay sink sent a bad header: {exc}", "reconnect") from None
            if got is not None:
                done = self._handle(*got)
                if done is not None:
                    return done
                continue
            if self._pending is not None and time.monotonic() - self._pending[1] / 1e9 > 0.2:
                overlay, self._pending = self._pending[0], None  # its STRING did not follow: show it unnamed
                return overlay
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.sock], [], [], min(left, 0.05))

    def _handle(self, header: igtl.Header, body: bytearray) -> Overlay | None:
        try:
            igtl.check_body(header, body)
            if header.type == "IMAGE" and header.device == self.device:
                self.last_arrival_ns = time.time_ns()
                image = igtl.decode_image(header, body)
                earlier, self._pending = self._pending, (self._overlay(header.t_ns, image), int(time.monotonic() * 1e9))
                return earlier[0] if earlier is not None else None
            if header.type == "STRING" and header.device == self.info_device and self._pending is not None:
                overlay = self._pending[0]
                if overlay.t_capture_ns == header.t_ns:
                    self._pending = None
                    msg = igtl.pyigtl().StringMessage()
                    msg.unpack(header.fields(), bytes(body))
                    return self._with_info(overlay, json.loads(msg.string))
        except (WireError, ValueError, TypeError):
            self.invalid += 1
        return None

    @staticmethod
    def _overlay(t_ns: int, image: igtl.DecodedImage) -> Overlay:
        mask = image.pixels if image.pixels.ndim == 2 else image.pixels[:, :, 0]
        n = int(mask.max()) + 1 if mask.size else 1
        colors = tuple(_PALETTE[i % len(_PALETTE)] for i in range(max(n, 2)))
        return Overlay(seq=-1, t_capture_ns=t_ns, source_id="igtl", model_id="", class_names=tuple(
            f"class{i}" for i in range(len(colors))), class_colors=colors, mask=mask.astype("uint8", copy=False),
            frame_size=(int(mask.shape[0]), int(mask.shape[1])), geometry=image.geometry)

    @staticmethod
    def _with_info(overlay: Overlay, doc: dict[str, Any]) -> Overlay:
        overlay.seq = int(doc.get("seq", -1))
        overlay.source_id = str(doc.get("source_id", overlay.source_id))
        overlay.model_id = str(doc.get("model_id", ""))
        classes = doc.get("classes") or []
        if classes:
            overlay.class_names = tuple(str(c.get("name", "")) for c in classes)
            overlay.class_colors = tuple(tuple(int(v) for v in c.get("color", (0, 0, 0)))[:3] for c in classes)
        overlay.areas_px = {str(k): int(v) for k, v in (doc.get("areas_px") or {}).items()}
        overlay.stages_ms = {str(k): float(v) for k, v in (doc.get("stages_ms") or {}).items()}
        overlay.t_publish_ns = int(doc.get("t_publish_ns", 0) or 0)
        return overlay

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> OverlayReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["OverlayReceiver"]
