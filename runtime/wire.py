"""The wire format: the only module that knows how frames, overlays and status travel over ZeroMQ.

Every message is a ZeroMQ multipart message ``[topic, header, payload...]``:

* ``topic``: ``b"frame"``, ``b"overlay"`` or ``b"status"`` (SUB sockets filter on it);
* ``header``: a UTF-8 JSON object with ``schema``, ``source_id``, ``seq``, ``t_capture_ns`` and the
  fields of its topic;
* payloads: raw little-endian array bytes described by the header (``dtype`` in numpy's ``.str``
  form, ``shape``), never pickled.

See ``docs/WIRE.md`` for the field tables, the limits and why the header is JSON.

Decoding is defensive: every header field is checked against :class:`WireLimits` *before* a
payload is touched, and every failure raises :class:`WireError` whose ``reason`` is a short stable
token the pipeline counts by (``dropped{invalid}`` broken down by reason).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from medstream.runtime.frame import Contour, Frame, Overlay

FRAME_TOPIC = b"frame"
OVERLAY_TOPIC = b"overlay"
STATUS_TOPIC = b"status"

FRAME_SCHEMA = "medstream.frame/1"
OVERLAY_SCHEMA = "medstream.overlay/1"
#: Overlay schema minor version: 1 adds ``task``, ``confidence``, ``entropy``, ``low_confidence``, ``label``,
#: ``probabilities``, ``top_k``, ``boxes``, ``points`` and ``heatmap`` to the header (issue 13). Additive: the
#: schema string and the parts stay as in 1.0, so a 1.0 consumer decodes a 1.1 overlay (and ignores the rest).
OVERLAY_SCHEMA_MINOR = 1
TASKS = ("segmentation", "classification", "detection", "keypoints")
MAX_BOXES = 1000
MAX_POINTS = 1000
MAX_HEATMAP_SIDE = 256
MAX_HEATMAP_PNG_BYTES = 256 * 1024
STATUS_SCHEMA = "medstream.status/1"

# Matched with fullmatch: ``$`` would also match before a final newline ("cam1\n" was accepted).
_SOURCE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
COLOR_ORDERS = ("gray", "bgr", "rgb", "bgra", "rgba")
_INT64_MAX = 2**63 - 1


#: The largest frame payload accepted by default, and the per-part ``MAXMSGSIZE`` of the frame socket.
#: Derived from what the worker can process inside the systemd watchdog budget (``WatchdogSec=10``,
#: pings at most every 5 s): on the 2-core development VM a frame costs about 4-5 ms per MiB the first
#: time its geometry is seen (preprocess with fresh buffers + receive + decode,
#: ``benchmarks/frame_size_cost.py``), so 64 MiB costs about 0.3 s, under 1/15 of the 5 s ping margin,
#: leaving room for a slower device. The old 512 MiB (8192x8192x4, 16-bit) took 2-5 s and stalled the
#: watchdog 5.5 s (issue 14). 64 MiB still admits 4K BGRA (32 MiB), 4096x4096 16-bit gray (32 MiB)
#: and 8192x8192 8-bit gray.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Explicit bounds applied before any allocation: a hostile sender cannot make us allocate more.

    The defaults admit any real scanner or capture card (sides up to 8192, 16-bit, 4 channels, at most
    :data:`DEFAULT_MAX_PAYLOAD_BYTES` of pixels per part) and nothing absurd. Lower them for a known
    device: config ``source.max_width`` / ``max_height`` / ``max_frame_bytes``, or the ``zmq+`` URI's
    ``max_width=``, ``max_height=``, ``max_bytes=`` (raising them above the defaults is refused).
    """

    max_header_bytes: int = 64 * 1024
    max_height: int = 8192
    max_width: int = 8192
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    allowed_dtypes: tuple[str, ...] = ("|u1", "<u2")
    allowed_channels: tuple[int, ...] = (1, 3, 4)
    max_parts: int = 4
    max_overlay_header_bytes: int = 1024 * 1024
    max_contour_points: int = 1_000_000

    @property
    def max_part_bytes(self) -> int:
        """The largest single part a frame message may have (the frame socket's ``MAXMSGSIZE``)."""
        return max(self.max_payload_bytes, self.max_header_bytes)

    @property
    def max_message_bytes(self) -> int:
        """The largest whole frame message: every part at its limit (the per-message memory bound)."""
        return self.max_parts * self.max_part_bytes


DEFAULT_LIMITS = WireLimits()


class WireError(ValueError):
    """A message that does not follow the wire format. ``reason`` is the counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------- helpers
def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _array_bytes(arr: np.ndarray) -> memoryview:
    """Contiguous bytes of ``arr`` without a copy when it already is contiguous (zero-copy send)."""
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _buf(part: Any, name: str) -> memoryview:
    """A message part as a byte view; anything that is not a buffer is a malformed message."""
    try:
        view = memoryview(part)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError):
        raise WireError("bad_parts", f"message part {name!r} is not a byte buffer ({type(part).__name__})") from None


def _reject_constant(name: str) -> Any:
    raise WireError("bad_number", f"header holds {name}, which is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):  # 1e999 parses to inf
        raise WireError("bad_number", f"header number {text[:40]} is not finite")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise WireError("duplicate_key", f"header repeats the key {dup!r:.40}: which value counts would be ambiguous")
    return obj


#: Deepest JSON nesting a header may have (the real headers nest 3 levels).
MAX_HEADER_DEPTH = 16


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _depth_ok(raw: bytes, limit: int = MAX_HEADER_DEPTH) -> bool:
    """Whether brackets nest at most ``limit`` deep outside strings: checked in C/numpy before the JSON
    parser recurses, so a hostile ``[[[[...`` costs microseconds and gets its own reason."""
    arr = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    step = ((arr == 0x5B) | (arr == 0x7B)).astype(np.int32) - ((arr == 0x5D) | (arr == 0x7D))
    return arr.size == 0 or int(np.cumsum(step).max()) <= limit


def _load_header(raw: Any, schema: str, limit: int) -> dict[str, Any]:
    buf = _buf(raw, "header")
    if buf.nbytes > limit:
        raise WireError("header_too_large", f"header is {buf.nbytes} bytes, the limit is {limit}")
    data = bytes(buf)
    if data.count(b"[") + data.count(b"{") > MAX_HEADER_DEPTH and not _depth_ok(data):
        raise WireError("bad_header", f"header nests deeper than {MAX_HEADER_DEPTH} levels")
    try:
        header = json.loads(data.decode("utf-8"), parse_constant=_reject_constant, parse_float=_parse_float,
                            object_pairs_hook=_unique_object)
    except WireError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # ValueError also covers integers longer than Python's int_max_str_digits (10**5000).
        raise WireError("bad_header", f"header is not valid UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise WireError("bad_header", f"header must be a JSON object, got {type(header).__name__}")
    got = header.get("schema")
    if got != schema:
        raise WireError("bad_schema", f"schema is {got!r:.60}, expected {schema!r}")
    return header


def _int_field(header: dict[str, Any], name: str, lo: int = 0, hi: int = _INT64_MAX) -> int:
    value = header.get(name)
    # bool is an int subclass in Python; a JSON true is not a sequence number.
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError("bad_field", f"field {name!r} must be an integer in [{lo}, {hi}], got {value!r:.80}")
    return value


def source_id_of(header: dict[str, Any]) -> str:
    value = header.get("source_id")
    if not isinstance(value, str) or not _SOURCE_ID.fullmatch(value):
        raise WireError("bad_field", f"field 'source_id' must match {_SOURCE_ID.pattern}, got {value!r:.80}")
    return value


def _array_spec(spec: Any, name: str, limits: WireLimits, *, image: bool) -> tuple[np.dtype, tuple[int, ...]]:
    """Validate a ``{"dtype", "shape"}`` description; return numpy dtype and shape."""
    if not isinstance(spec, dict):
        raise WireError("bad_field", f"{name} must be an object with 'dtype' and 'shape'")
    dtype = spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in limits.allowed_dtypes:
        raise WireError("bad_dtype", f"{name} dtype {dtype!r:.40} is not one of {limits.allowed_dtypes}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not 2 <= len(shape) <= 3:
        raise WireError("bad_shape", f"{name} shape must be [H, W] or [H, W, C], got {shape!r:.80}")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise WireError("bad_shape", f"{name} shape must hold integers, got {shape!r:.80}")
    h, w = shape[0], shape[1]
    if not (1 <= h <= limits.max_height and 1 <= w <= limits.max_width):
        raise WireError(
            "too_large" if h > 0 and w > 0 else "bad_shape",
            f"{name} size {h}x{w} is outside 1x1..{limits.max_height}x{limits.max_width}",
        )
    if len(shape) == 3:
        allowed = limits.allowed_channels if image else (1,)
        if shape[2] not in allowed:
            raise WireError("bad_shape", f"{name} has {shape[2]} channels, allowed: {allowed}")
    return np.dtype(dtype), tuple(shape)


def _array_from(part: Any, dtype: np.dtype, shape: tuple[int, ...], name: str, limits: WireLimits) -> np.ndarray:
    expected = int(np.prod(shape)) * dtype.itemsize
    if expected > limits.max_payload_bytes:
        raise WireError("too_large", f"{name} would be {expected} bytes, the limit is {limits.max_payload_bytes}")
    buf = _buf(part, name)
    if buf.nbytes != expected:
        raise WireError(
            "size_mismatch", f"{name} payload is {buf.nbytes} bytes but dtype {dtype.str} x shape {list(shape)} needs {expected}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


# ----------------------------------------------------------------------------------------- frames
def encode_frame(frame: Frame) -> list[Any]:
    """``[b"frame", header, pixels]`` plus ``truth`` as a fourth part when the frame carries one."""
    image = frame.image
    header: dict[str, Any] = {
        "schema": FRAME_SCHEMA,
        "source_id": frame.source_id,
        "seq": frame.seq,
        "t_capture_ns": frame.t_capture_ns,
        "dtype": image.dtype.str,
        "shape": list(image.shape),
        "color_order": frame.color_order,
    }
    parts: list[Any] = [FRAME_TOPIC, None, _array_bytes(image)]
    if frame.truth is not None:
        header["truth"] = {"dtype": frame.truth.dtype.str, "shape": list(frame.truth.shape)}
        parts.append(_array_bytes(frame.truth))
    parts[1] = _dumps(header)
    return parts


def decode_frame(parts: list[Any], limits: WireLimits = DEFAULT_LIMITS) -> Frame:
    """Parse and validate a frame message; raise :class:`WireError` naming the first problem.

    The returned image is a read-only view on the received buffer (no copy).
    """
    if not isinstance(parts, list | tuple) or not 3 <= len(parts) <= limits.max_parts:
        n = len(parts) if isinstance(parts, list | tuple) else "?"
        raise WireError("bad_parts", f"a frame message has 3 or 4 parts [topic, header, pixels, truth?], got {n}")
    if bytes(_buf(parts[0], "topic")) != FRAME_TOPIC:
        raise WireError("bad_topic", f"expected topic {FRAME_TOPIC!r}, got {bytes(_buf(parts[0], 'topic'))[:32]!r}")
    header = _load_header(parts[1], FRAME_SCHEMA, limits.max_header_bytes)
    seq = _int_field(header, "seq")
    t_capture_ns = _int_field(header, "t_capture_ns")
    source_id = source_id_of(header)
    color_order = header.get("color_order", "gray")
    if color_order not in COLOR_ORDERS:
        raise WireError("bad_field", f"color_order {color_order!r:.20} is not one of {COLOR_ORDERS}")
    dtype, shape = _array_spec(header, "image", limits, image=True)
    image = _array_from(parts[2], dtype, shape, "image", limits)
    truth = None
    if len(parts) == 4:
        if "truth" not in header:
            raise WireError("bad_parts", "a fourth part was sent but the header has no 'truth' description")
        tdtype, tshape = _array_spec(header["truth"], "truth", limits, image=False)
        truth = _array_from(parts[3], tdtype, tshape, "truth", limits)
    return Frame(seq=seq, t_capture_ns=t_capture_ns, image=image, source_id=source_id, truth=truth,
                 color_order=color_order)


# --------------------------------------------------------------------------------------- overlays
def stream_topic(topic: bytes, source_id: str) -> bytes:
    """``overlay/<source_id>``: the per-stream topic of a multi-stream run (a SUB on ``overlay`` gets them all,
    on ``overlay/<id>`` one stream; ZeroMQ filters by prefix)."""
    return topic + b"/" + source_id.encode("ascii")


def topic_matches(got: bytes, topic: bytes) -> bool:
    """``got`` is ``topic`` itself or a per-stream ``topic/<source_id>``."""
    return got == topic or (got.startswith(topic + b"/") and len(got) <= len(topic) + 65)


def encode_overlay(overlay: Overlay) -> list[Any]:
    """``[b"overlay", header, mask, contour_points(, rgba)]``.

    Contour points travel as one int32 ``(N, 2)`` array part, the header listing how many points
    each contour has: JSON lists of points cost 4x more to encode (docs/WIRE.md).
    """
    points = (
        np.concatenate([c.points.reshape(-1, 2) for c in overlay.contours]).astype("<i4", copy=False)
        if overlay.contours else np.zeros((0, 2), "<i4")
    )
    header: dict[str, Any] = {
        "schema": OVERLAY_SCHEMA,
        "source_id": overlay.source_id,
        "seq": overlay.seq,
        "t_capture_ns": overlay.t_capture_ns,
        "t_publish_ns": overlay.t_publish_ns,
        "model_id": overlay.model_id,
        "classes": [{"name": n, "color": list(c)} for n, c in zip(overlay.class_names, overlay.class_colors, strict=True)],
        "frame_size": list(overlay.frame_size),
        "mask": {"dtype": overlay.mask.dtype.str, "shape": list(overlay.mask.shape)},
        "contours": [[c.class_id, int(c.points.reshape(-1, 2).shape[0])] for c in overlay.contours],
        "areas_px": overlay.areas_px,
        "stages_ms": {k: round(v, 4) for k, v in overlay.stages_ms.items()},
    }
    if overlay.mask_roi is not None:
        header["mask_roi"] = list(overlay.mask_roi)
    header.update(_task_fields(overlay))
    parts: list[Any] = [OVERLAY_TOPIC, None, _array_bytes(overlay.mask), _array_bytes(points)]
    if overlay.rgba is not None:
        header["rgba"] = {"dtype": overlay.rgba.dtype.str, "shape": list(overlay.rgba.shape)}
        parts.append(_array_bytes(overlay.rgba))
    parts[1] = _dumps(header)
    return parts


_MAX_CLASSES = 256


def _number_map(header: dict[str, Any], name: str) -> dict[str, float]:
    value = header.get(name, {})
    if not isinstance(value, dict) or len(value) > 64 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in value.items()):
        raise WireError("bad_field", f"field {name!r} must map at most 64 short names to numbers")
    return dict(value)


def _classes(header: dict[str, Any]) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    classes = header.get("classes", [])
    if not isinstance(classes, list) or len(classes) > _MAX_CLASSES:
        raise WireError("bad_field", f"field 'classes' must be a list of at most {_MAX_CLASSES} classes")
    names, colors = [], []
    for c in classes:
        name = c.get("name") if isinstance(c, dict) else None
        color = c.get("color", [0, 0, 0]) if isinstance(c, dict) else None
        if not isinstance(name, str) or len(name) > 64 or not (
                isinstance(color, list) and len(color) in (3, 4)
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)):
            raise WireError("bad_field", "each class must be {'name': text (<= 64), 'color': [0..255 x 3]}")
        names.append(name)
        colors.append(tuple(color))
    return tuple(names), tuple(colors)


def decode_overlay(parts: list[Any], limits: WireLimits = DEFAULT_LIMITS) -> Overlay:
    """Parse an overlay message (consumer side: viewer, status, benchmarks, tests)."""
    if not isinstance(parts, list | tuple) or not 4 <= len(parts) <= 5:
        raise WireError("bad_parts", "an overlay message has 4 or 5 parts [topic, header, mask, contours, rgba?]")
    if not topic_matches(bytes(_buf(parts[0], "topic")), OVERLAY_TOPIC):
        raise WireError("bad_topic", f"expected topic {OVERLAY_TOPIC!r} or {OVERLAY_TOPIC!r}/<source_id>")
    header = _load_header(parts[1], OVERLAY_SCHEMA, limits.max_overlay_header_bytes)
    seq = _int_field(header, "seq")
    t_capture_ns = _int_field(header, "t_capture_ns")
    t_publish_ns = _int_field(header, "t_publish_ns")
    source_id = source_id_of(header)
    model_id = header.get("model_id", "")
    if not isinstance(model_id, str) or len(model_id) > 128:
        raise WireError("bad_field", "field 'model_id' must be text of at most 128 characters")
    class_names, class_colors = _classes(header)
    mdtype, mshape = _array_spec(header.get("mask"), "mask", limits, image=False)
    mask = _array_from(parts[2], mdtype, mshape, "mask", limits)
    frame_size = header.get("frame_size", list(mshape[:2]))
    if not (isinstance(frame_size, list) and len(frame_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= max(limits.max_height, limits.max_width)
            for v in frame_size)):
        raise WireError("bad_field", f"field 'frame_size' must be [H, W] in 1..{max(limits.max_height, limits.max_width)}")
    mask_roi = header.get("mask_roi")
    if mask_roi is not None and not (
            isinstance(mask_roi, list) and len(mask_roi) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in mask_roi)
            and mask_roi[0] >= 0 and mask_roi[1] >= 0 and mask_roi[2] >= 1 and mask_roi[3] >= 1
            and mask_roi[0] + mask_roi[2] <= frame_size[1] and mask_roi[1] + mask_roi[3] <= frame_size[0]):
        raise WireError("bad_field", "field 'mask_roi' must be [x, y, w, h] inside frame_size")
    counts = header.get("contours", [])
    if not isinstance(counts, list):
        raise WireError("bad_field", "contours must be a list of [class_id, n_points]")
    raw_points = _buf(parts[3], "contour points")
    if raw_points.nbytes % 8 or raw_points.nbytes // 8 > limits.max_contour_points:
        raise WireError("size_mismatch", "contour points part is not a sane int32 (N, 2) array")
    points = np.frombuffer(raw_points, dtype="<i4").reshape(-1, 2)
    contours, start = [], 0
    for item in counts:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in item) and 0 <= item[0] < _MAX_CLASSES):
            raise WireError("bad_field", "contours must be a list of [class_id, n_points]")
        class_id, n = item
        if n < 0 or start + n > len(points):
            raise WireError("size_mismatch", "contour point counts exceed the points part")
        contours.append(Contour(class_id=class_id, points=points[start:start + n]))
        start += n
    rgba = None
    if len(parts) == 5:
        rdtype, rshape = _array_spec(header.get("rgba"), "rgba", limits, image=True)
        rgba = _array_from(parts[4], rdtype, rshape, "rgba", limits)
    return Overlay(
        seq=seq, t_capture_ns=t_capture_ns, source_id=source_id, model_id=model_id,
        class_names=class_names, class_colors=class_colors, mask=mask, frame_size=tuple(frame_size),
        contours=contours, areas_px=_number_map(header, "areas_px"), stages_ms=_number_map(header, "stages_ms"),
        t_publish_ns=t_publish_ns, rgba=rgba, mask_roi=tuple(mask_roi) if mask_roi is not None else None,
        **_decode_task_fields(header, len(class_names), tuple(frame_size)),
    )


# ------------------------------------------------------------------------- overlay 1.1: per-task fields
def _task_fields(overlay: Overlay) -> dict[str, Any]:
    """The header fields of schema 1.1 (docs/WIRE.md). Coordinates are source-frame pixels, 2 decimals."""
    out: dict[str, Any] = {"schema_minor": OVERLAY_SCHEMA_MINOR, "task": overlay.task,
                           "low_confidence": bool(overlay.low_confidence)}
    if overlay.confidence is not None:
        out["confidence"] = round(float(overlay.confidence), 5)
    if overlay.entropy is not None:
        out["entropy"] = round(float(overlay.entropy), 5)
    if overlay.label is not None:
        out["label"] = int(overlay.label)
    if overlay.probabilities is not None:
        out["probabilities"] = [round(float(p), 6) for p in overlay.probabilities]
    if overlay.top_k:
        out["top_k"] = [[int(i), round(float(p), 6)] for i, p in overlay.top_k]
    if overlay.boxes is not None:
        out["boxes"] = [[round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2]), 2), round(float(b[3]), 2),
                         int(b[4]), round(float(b[5]), 5)] for b in overlay.boxes]
    if overlay.points is not None:
        out["points"] = [[round(float(p[0]), 2), round(float(p[1]), 2), int(p[2]), round(float(p[3]), 5)]
                         for p in overlay.points]
    if overlay.heatmap is not None:
        import base64

        import cv2

        hm = overlay.heatmap
        ok, png = cv2.imencode(".png", np.ascontiguousarray(hm.data, np.uint8))
        if ok:
            out["heatmap"] = {"png": base64.b64encode(png.tobytes()).decode("ascii"), "shape": list(hm.data.shape),
                              "roi": [int(v) for v in hm.roi], "class_id": int(hm.class_id), "kind": hm.kind}
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unit(header: dict[str, Any], name: str) -> float | None:
    value = header.get(name)
    if value is None:
        return None
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise WireError("bad_field", f"field {name!r} must be a number in [0, 1]")
    return float(value)


def _rows(header: dict[str, Any], name: str, width: int, limit: int, class_col: int, n_classes: int,
          frame_size: tuple[int, int]) -> np.ndarray | None:
    rows = header.get(name)
    if rows is None:
        return None
    fh, fw = frame_size
    if not isinstance(rows, list) or len(rows) > limit:
        raise WireError("bad_field", f"field {name!r} must be a list of at most {limit} rows")
    for r in rows:
        if not (isinstance(r, list) and len(r) == width and all(_is_number(v) for v in r)
                and _is_int(r[class_col]) and 0 <= r[class_col] < n_classes and 0.0 <= r[-1] <= 1.0
                and all(-1.0 <= r[i] <= fw + 1.0 for i in range(0, class_col, 2))
                and all(-1.0 <= r[i] <= fh + 1.0 for i in range(1, class_col, 2))):
            raise WireError("bad_field", f"each of {name!r} must be {width} numbers in the frame, a class id of "
                            f"'classes' and a score in [0, 1]")
    return np.array(rows, np.float32).reshape(-1, width)


def _heatmap(header: dict[str, Any], frame_size: tuple[int, int]):
    spec = header.get("heatmap")
    if spec is None:
        return None
    import base64
    import binascii

    import cv2

    from medstream.runtime.frame import Heatmap

    fh, fw = frame_size
    png, shape, roi = (spec.get(k) for k in ("png", "shape", "roi")) if isinstance(spec, dict) else (None,) * 3
    if not (isinstance(png, str) and len(png) <= MAX_HEATMAP_PNG_BYTES * 4 // 3 + 4
            and isinstance(shape, list) and len(shape) == 2 and all(_is_int(v) and 1 <= v <= MAX_HEATMAP_SIDE for v in shape)
            and isinstance(roi, list) and len(roi) == 4 and all(_is_int(v) for v in roi)
            and roi[0] >= 0 and roi[1] >= 0 and roi[2] >= 1 and roi[3] >= 1
            and roi[0] + roi[2] <= fw and roi[1] + roi[3] <= fh
            and _is_int(spec.get("class_id", -1)) and spec.get("kind", "probability") in ("probability", "activation")):
        raise WireError("bad_field", f"field 'heatmap' must be {{png, shape [h, w] <= {MAX_HEATMAP_SIDE}, roi inside "
                        "frame_size, class_id, kind}")
    try:
        raw = base64.b64decode(png, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("bad_field", "heatmap.png is not base64") from None
    # The PNG's own size (IHDR) is checked before it is decoded: no image bomb through the header.
    if len(raw) < 24 or raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR" or \
            [int.from_bytes(raw[20:24], "big"), int.from_bytes(raw[16:20], "big")] != shape:
        raise WireError("bad_field", "heatmap.png is not a PNG of the stated shape")
    data = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint8 or data.shape != tuple(shape):
        raise WireError("bad_field", "heatmap.png does not decode to a grey uint8 image of the stated shape")
    return Heatmap(data=data, roi=tuple(roi), class_id=spec.get("class_id", -1), kind=spec.get("kind", "probability"))


def _decode_task_fields(header: dict[str, Any], n_classes: int, frame_size: tuple[int, int]) -> dict[str, Any]:
    """Schema 1.1 fields, validated (absent in a 1.0 overlay: the defaults of a segmentation overlay)."""
    task = header.get("task", "segmentation")
    if task not in TASKS:
        raise WireError("bad_field", f"field 'task' must be one of {TASKS}")
    low = header.get("low_confidence", False)
    if not isinstance(low, bool):
        raise WireError("bad_field", "field 'low_confidence' must be true or false")
    label = header.get("label")
    if label is not None and not (_is_int(label) and 0 <= label < n_classes):
        raise WireError("bad_field", "field 'label' must be a class id of 'classes'")
    probs = header.get("probabilities")
    if probs is not None:
        if not (isinstance(probs, list) and len(probs) == n_classes and all(_is_number(p) and 0 <= p <= 1 for p in probs)):
            raise WireError("bad_field", "field 'probabilities' must hold one number in [0, 1] per class")
        probs = np.array(probs, np.float32)
    top = header.get("top_k", [])
    if not (isinstance(top, list) and len(top) <= n_classes and all(
            isinstance(t, list) and len(t) == 2 and _is_int(t[0]) and 0 <= t[0] < n_classes
            and _is_number(t[1]) and 0 <= t[1] <= 1 for t in top)):
        raise WireError("bad_field", "field 'top_k' must be [[class_id, probability], ...]")
    return {"task": task, "confidence": _unit(header, "confidence"), "entropy": _unit(header, "entropy"),
            "low_confidence": low, "label": label, "probabilities": probs,
            "top_k": tuple((int(i), float(p)) for i, p in top),
            "boxes": _rows(header, "boxes", 6, MAX_BOXES, 4, n_classes, frame_size),
            "points": _rows(header, "points", 4, MAX_POINTS, 2, n_classes, frame_size),
            "heatmap": _heatmap(header, frame_size)}


# ----------------------------------------------------------------------------------------- status
def encode_status(status: dict[str, Any]) -> list[bytes]:
    """``[b"status", header]``: the pipeline's health, at least once a second.

    ``status`` must already hold ``source_id``, ``seq`` (status message counter) and
    ``t_capture_ns`` (when the status was made); see :mod:`medstream.runtime.status`.
    """
    body = {"schema": STATUS_SCHEMA, **status}
    return [STATUS_TOPIC, _dumps(body)]


def decode_status(parts: list[Any], limits: WireLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse a status message into a dict (the schema is documented in docs/WIRE.md)."""
    if not isinstance(parts, list | tuple) or len(parts) != 2:
        raise WireError("bad_parts", "a status message has 2 parts [topic, header]")
    if not topic_matches(bytes(_buf(parts[0], "topic")), STATUS_TOPIC):
        raise WireError("bad_topic", f"expected topic {STATUS_TOPIC!r} or {STATUS_TOPIC!r}/<source_id>")
    header = _load_header(parts[1], STATUS_SCHEMA, limits.max_overlay_header_bytes)
    _int_field(header, "seq")
    _int_field(header, "t_capture_ns")
    source_id_of(header)
    return header
