"""What one browser view is on the wire: a frame as JPEG/PNG and its overlay as JSON with a PNG mask.

One binary websocket message per view, so a frame and its overlay can never arrive apart::

    [uint32 little-endian N][N bytes UTF-8 JSON header][image bytes][mask PNG bytes]

The header says how many bytes each part has (``frame.bytes``, ``overlay.mask.bytes``); either part
may be absent (``null``): overlay-only views when no ``--frames-from`` is given, frame-only views while
the overlay is stale (the page then shows the live image with no overlay at all, never an old one).

Times travel as milliseconds since the UNIX epoch (a JavaScript number holds 2^53, not an epoch in
nanoseconds) and ``t_capture_ns`` as text, for exact identity checks.

Measured on the 2-core development machine (256x256 ultrasound phantom, 100 encodes, busy machine):
JPEG quality 80 is 17 kB and 0.15 ms to encode; PNG is 40 kB and 1.4 ms (lossless, for tests and for
who needs exact pixels: ``--web-image png``); the class mask as PNG is 0.8 kB and 0.4 ms.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import cv2
import numpy as np

from medstream.runtime.frame import Frame, Overlay

#: Optional overlay header keys passed through to the page as they are (later tasks: detection,
#: classification, confidence gating). The page draws the shapes docs/WEB.md lists and ignores others.
OPTIONAL_OVERLAY_KEYS = ("task", "label", "probabilities", "top_k", "boxes", "points", "confidence", "low_confidence")
#: Largest JSON size of one optional key passed through; larger ones are left out and counted.
MAX_OPTIONAL_BYTES = 64 * 1024

IMAGE_FORMATS = {"jpeg": (".jpg", "image/jpeg"), "png": (".png", "image/png")}


def display_image(frame: Frame) -> np.ndarray:
    """The frame as 8-bit grey or BGR for an image encoder.

    16-bit frames are scaled by their own maximum (an automatic window): their raw range (10, 12 or
    16 bits) is not in the wire header, and a fixed ``>> 8`` would show a 12-bit image almost black.
    """
    image = frame.image
    if image.dtype != np.uint8:
        peak = int(image.max()) or 1
        image = (image.astype(np.float32) * (255.0 / peak)).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    order = frame.color_order
    if order == "rgb":
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if order == "rgba":
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    if order == "bgra" or image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def encode_image(frame: Frame, fmt: str = "jpeg", jpeg_quality: int = 80) -> tuple[bytes, str]:
    """``(bytes, mime type)`` of the frame as JPEG or PNG."""
    ext, mime = IMAGE_FORMATS[fmt]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(display_image(frame)), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {frame.image.shape} frame as {fmt}")
    return buf.tobytes(), mime


def encode_mask(mask: np.ndarray) -> bytes:
    """The class map as an 8-bit greyscale PNG (lossless; the page reads class ids back exactly)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {mask.shape} mask as PNG")
    return buf.tobytes()


def optional_fields(raw_header: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The optional keys present in an overlay's raw header, and the names of those left out (too big)."""
    out: dict[str, Any] = {}
    skipped: list[str] = []
    for key in OPTIONAL_OVERLAY_KEYS:
        if not raw_header or key not in raw_header:
            continue
        value = raw_header[key]
        if len(json.dumps(value, separators=(",", ":"))) > MAX_OPTIONAL_BYTES:
            skipped.append(key)
            continue
        out[key] = value
    return out, skipped


def overlay_json(overlay: Overlay, mask_bytes: int, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The overlay as the page reads it (mask pixels travel separately, as PNG)."""
    contours = [[c.class_id, c.points.reshape(-1).astype(int).tolist()] for c in overlay.contours]
    body: dict[str, Any] = {
        "seq": overlay.seq,
        "t_capture_ns": str(overlay.t_capture_ns),
        "t_capture_ms": overlay.t_capture_ns / 1e6,
        "t_publish_ms": overlay.t_publish_ns / 1e6,
        "source_id": overlay.source_id,
        "model_id": overlay.model_id,
        "classes": [{"name": n, "color": list(c)[:3]} for n, c in zip(overlay.class_names, overlay.class_colors, strict=True)],
        "frame_size": list(overlay.frame_size),
        "mask": {"h": int(overlay.mask.shape[0]), "w": int(overlay.mask.shape[1]), "bytes": mask_bytes},
        "contours": contours,
        "areas_px": overlay.areas_px,
        "stages_ms": overlay.stages_ms,
    }
    if extras:
        body.update(extras)
    return body


def pack_view(*, seq: int, t_capture_ns: int, image: bytes | None, mime: str | None,
              frame_size: tuple[int, int] | None, overlay: dict[str, Any] | None, mask_png: bytes | None,
              t_sent_ms: float | None = None) -> bytes:
    """One binary websocket message (layout in the module docstring)."""
    header = {
        "type": "view",
        "seq": seq,
        "t_capture_ns": str(t_capture_ns),
        "t_capture_ms": t_capture_ns / 1e6,
        "frame": None if image is None else {"mime": mime, "bytes": len(image),
                                              "h": frame_size[0] if frame_size else None,
                                              "w": frame_size[1] if frame_size else None},
        "overlay": overlay,
        "t_view_ms": t_sent_ms,
    }
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join((struct.pack("<I", len(head)), head, image or b"", mask_png or b""))


def unpack_view(message: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """``(header, image bytes, mask PNG bytes)``: the inverse of :func:`pack_view` (tests, tools)."""
    (n,) = struct.unpack_from("<I", message, 0)
    header = json.loads(message[4:4 + n].decode("utf-8"))
    start = 4 + n
    n_image = header["frame"]["bytes"] if header.get("frame") else 0
    n_mask = header["overlay"]["mask"]["bytes"] if header.get("overlay") else 0
    image = message[start:start + n_image]
    mask = message[start + n_image:start + n_image + n_mask]
    if len(image) != n_image or len(mask) != n_mask or start + n_image + n_mask != len(message):
        raise ValueError("view message sizes do not add up")
    return header, image, mask
