"""``igtl://HOST:PORT``: predictions to 3D Slicer (or any OpenIGTLink client) over OpenIGTLink.

The sink is an OpenIGTLink *server*: Slicer's OpenIGTLinkIF connects to it as a client, as it connects to
PLUS (docs/IGTLINK.md has the connector settings). Per overlay, every message stamped with the frame's
capture time (the IMAGE timestamp PLUS sent, to the nanosecond):

* an IMAGE, device ``device=`` (default ``Prediction``): the label map (uint8 class ids, 0 background) at the
  source frame's size, the mask scaled into ``mask_roi`` the way ``medstream view`` draws it (nearest
  neighbour), zero outside; spacing and IJK-to-RAS copied from the input image (``overlay.geometry``), so
  it lies exactly on the live image in Slicer;
* a STRING, device ``info_device=`` (default ``PredictionInfo``): the overlay as JSON (schema
  ``medstream.igtl.overlay/1``: seq, capture time, classes with names and colours, areas in pixels and, where
  the spacing is known, in mm^2, stage times, and any ``label``, ``labels``, ``boxes``, ``confidence`` the
  overlay carries);
* a POINT, device ``points_device=`` (default ``PredictionPoints``), when the overlay carries points
  (``(name, x, y)`` in frame pixels, sent in RAS through the same matrix).

Nothing here waits for a client: messages are packed once (only while a client is connected) and offered
to each client's one-slot queue (:class:`~medstream.runtime.igtl.server.IgtlServer`); a slow or absent Slicer
loses old overlays, counted per client (``failed``, ``describe()``). Status messages are not sent over
OpenIGTLink. Other parameters: ``max_clients=N`` (8), ``send_timeout=S`` (5: a client that accepts nothing
for that long is disconnected).

Cost on the worker thread, measured on the 2-core development VM (``benchmarks/igtl_glass.py --codec``):
label map + IMAGE pack (with CRC) + STRING pack about 0.5 ms at 256x256 and 3.5 ms at 1024x768.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from medstream.runtime.errors import ConfigError
from medstream.runtime.frame import ImageGeometry, Overlay
from medstream.runtime.igtl import messages as igtl
from medstream.runtime.igtl.server import IgtlServer, split_host_port
from medstream.runtime.sinks.base import OverlaySink

log = logging.getLogger("medstream.publisher.igtl")

OVERLAY_JSON_SCHEMA = "medstream.igtl.overlay/1"
#: Overlay attributes copied into the STRING's JSON when an overlay carries them (detection, classification).
OPTIONAL_KEYS = ("label", "labels", "boxes", "confidence")


def label_map(overlay: Overlay) -> np.ndarray:
    """The class map at the source frame's size (``frame_size``): the mask scaled into ``mask_roi``, 0 outside.

    Scaling is nearest-neighbour with OpenCV, the rule :func:`medstream.runtime.render.draw_overlay` uses.
    """
    import cv2

    fh, fw = overlay.frame_size
    x, y, w, h = overlay.mask_roi if overlay.mask_roi is not None else (0, 0, fw, fh)
    mask = overlay.mask if overlay.mask.dtype == np.uint8 else overlay.mask.astype(np.uint8)
    scaled = mask if mask.shape[:2] == (h, w) else cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    if (x, y, w, h) == (0, 0, fw, fh):
        return np.ascontiguousarray(scaled)
    out = np.zeros((fh, fw), np.uint8)
    out[y:y + h, x:x + w] = scaled
    return out


def pixel_area_mm2(geometry: ImageGeometry) -> float:
    """Area of one source pixel in mm^2: the parallelogram of the matrix's i and j columns."""
    m = np.asarray(geometry.ijk_to_ras, np.float64)
    return float(np.linalg.norm(np.cross(m[:3, 0], m[:3, 1])))


def overlay_json(overlay: Overlay, devices: dict[str, str]) -> dict[str, Any]:
    """The STRING message's content (schema ``medstream.igtl.overlay/1``)."""
    fh, fw = overlay.frame_size
    x, y, w, h = overlay.mask_roi if overlay.mask_roi is not None else (0, 0, fw, fh)
    doc: dict[str, Any] = {
        "schema": OVERLAY_JSON_SCHEMA, "seq": overlay.seq, "t_capture_ns": overlay.t_capture_ns,
        "t_publish_ns": overlay.t_publish_ns, "source_id": overlay.source_id, "model_id": overlay.model_id,
        "frame_size": [fh, fw], "mask_roi": list(overlay.mask_roi) if overlay.mask_roi is not None else None,
        "devices": devices,
        "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in
                    enumerate(zip(overlay.class_names, overlay.class_colors, strict=False))],
        "areas_px": {k: int(v) for k, v in overlay.areas_px.items()},
        "stages_ms": {k: round(float(v), 3) for k, v in overlay.stages_ms.items()},
    }
    if overlay.geometry is not None:
        mh, mw = overlay.mask.shape[:2]
        per_mask_pixel = pixel_area_mm2(overlay.geometry) * (w * h) / float(mw * mh)
        doc["spacing_mm"] = [round(float(s), 6) for s in overlay.geometry.spacing]
        doc["areas_mm2"] = {k: round(int(v) * per_mask_pixel, 4) for k, v in overlay.areas_px.items()}
    for key in OPTIONAL_KEYS:
        value = getattr(overlay, key, None)
        if value is not None:
            doc[key] = value
    return doc


def _ras(geometry: ImageGeometry | None, x: float, y: float) -> tuple[float, float, float]:
    m = igtl.geometry_matrix(geometry)
    p = m @ np.array([x, y, 0.0, 1.0])
    return float(p[0]), float(p[1]), float(p[2])


class IgtlSink(OverlaySink):
    """An OpenIGTLink server sending label maps, overlay JSON and points (module docstring).

    Parameters
    ----------
    endpoint
        ``igtl://HOST:PORT`` with optional ``device=``, ``info_device=``, ``points_device=``, ``max_clients=``,
        ``send_timeout=``.
    allow_insecure_remote
        Allow listening on a non-loopback address (OpenIGTLink has no authentication or encryption).
    """

    def __init__(self, endpoint: str, allow_insecure_remote: bool = False, **_ignored: Any) -> None:
        igtl.pyigtl()  # a clear MissingDependencyError before anything is bound
        self.endpoint = endpoint
        params = dict(parse_qsl(urlsplit(endpoint).query, keep_blank_values=True))
        unknown = set(params) - {"device", "info_device", "points_device", "max_clients", "send_timeout"}
        if unknown:
            raise ConfigError(f"publish endpoint {endpoint!r}: unknown parameter(s) {sorted(unknown)}",
                              "use device=, info_device=, points_device=, max_clients=, send_timeout=")
        device = params.get("device", "Prediction")
        try:
            self.devices = {
                "label_map": igtl.check_device_name(device, "device"),
                "info": igtl.check_device_name(params.get("info_device", device + "Info"), "info_device"),
                "points": igtl.check_device_name(params.get("points_device", device + "Points"), "points_device"),
            }
            max_clients = int(params.get("max_clients", 8))
            send_timeout = float(params.get("send_timeout", 5.0))
        except ValueError as exc:
            raise ConfigError(f"publish endpoint {endpoint!r}: {exc}",
                              "device names are 1-20 printable ASCII characters (a long device= needs an explicit "
                              "info_device= and points_device=); max_clients and send_timeout are numbers") from None
        if max_clients < 1 or send_timeout <= 0:
            raise ConfigError(f"publish endpoint {endpoint!r}: max_clients must be >= 1 and send_timeout > 0",
                              "e.g. max_clients=8&send_timeout=5")
        host, port = split_host_port(endpoint, default_port=18945)
        self.server = IgtlServer(host, port, what="the OpenIGTLink overlay sink", max_clients=max_clients,
                                 send_timeout_s=send_timeout, allow_insecure_remote=allow_insecure_remote)
        self.bound_endpoint = self.server.endpoint
        self.sent = 0
        self.pack_ms_last = 0.0
        self._pack_ms_total = 0.0
        self._packed = 0

    @property
    def failed(self) -> int:  # type: ignore[override]
        """Overlays lost by some client (replaced before it took them, or pending when it left)."""
        return self.server.dropped

    @failed.setter
    def failed(self, value: int) -> None:  # the fan-out adds a failure when a sink raises
        self.server.dropped_disconnected += value - self.server.dropped

    def messages(self, overlay: Overlay) -> list[bytes]:
        """The messages of one overlay, packed (IMAGE, STRING, then POINT when there are points)."""
        t = overlay.t_capture_ns
        out = [igtl.image_message(label_map(overlay), overlay.geometry, self.devices["label_map"], t),
               igtl.string_message(igtl.dumps(overlay_json(overlay, self.devices)), self.devices["info"], t)]
        points = getattr(overlay, "points", None)
        if points:
            out.append(igtl.point_message([_ras(overlay.geometry, float(px), float(py)) for _, px, py in points],
                                          [str(name) for name, _, _ in points], self.devices["points"], t))
        return out

    def send_overlay(self, overlay: Overlay) -> bool:
        self.sent += 1
        if self.server.client_count == 0:  # nobody listens: nothing to pack
            self.server.publish([])
            return True
        t0 = time.perf_counter()
        msgs = self.messages(overlay)
        self.pack_ms_last = (time.perf_counter() - t0) * 1e3
        self._pack_ms_total += self.pack_ms_last
        self._packed += 1
        self.server.publish(msgs)
        return True

    def send_status(self, status: dict[str, Any]) -> bool:
        return True  # OpenIGTLink receivers get overlays only; the ZeroMQ status topic carries the run's state

    def close(self) -> None:
        self.server.flush(timeout=0.5)  # the last overlay of a finished stream should still reach Slicer
        self.server.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.server.describe(), "devices": self.devices,
                "pack_ms_mean": round(self._pack_ms_total / self._packed, 3) if self._packed else None}


__all__ = ["IgtlSink", "label_map", "overlay_json", "pixel_area_mm2"]
