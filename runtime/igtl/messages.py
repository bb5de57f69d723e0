"""OpenIGTLink messages: check and decode what arrives, pack what medstream sends.

The byte layout (OpenIGTLink protocol v2/v3, openigtlink.org/developers/spec), all numbers big-endian:

* header, 58 bytes: ``H`` header version (1; 2 adds an extended header and metadata), ``12s`` message
  type, ``20s`` device name, ``I I`` timestamp (seconds, 2^-32 fractions of a second), ``Q`` body size,
  ``Q`` CRC-64 (ECMA-182) of the body;
* IMAGE body, after the extended header of version 2: 72 bytes of ``H`` image header version, ``B``
  components, ``B`` scalar type, ``B`` endianness of the pixels (1 big, 2 little), ``B`` coordinate system
  (1 RAS, 2 LPS), ``3H`` size (i, j, k), ``12f`` the 3x3 orientation with spacing folded in (column i,
  column j, column k) and the position of the image *centre*, ``3H`` sub-volume offset, ``3H`` sub-volume
  size; then the pixels, i fastest.

What is checked, and the reason a failure is counted under (``dropped{invalid}`` by reason, as for the
ZeroMQ wire): ``bad_header`` (a header that lies or cannot be read: unknown version, type or device name
that is not printable ASCII, an extended header larger than the body, IMAGE fields out of range),
``too_large`` (a body over the limit: refused before it is allocated), ``bad_crc``,
``unknown_message_type`` (a type no OpenIGTLink version defines), ``body_size_mismatch`` (an IMAGE whose
pixel bytes differ from what its size, components and scalar type need), ``unsupported_scalar_type``
(anything but uint8, int8, uint16, int16, float32), ``unsupported_image`` (more than one slice,
components other than 1 or 3, a sub-volume).

Geometry: the matrix is taken as IJK-to-RAS whatever the coordinate-system byte says, because that is
what 3D Slicer's OpenIGTLinkIF does (OpenIGTLinkIO ``ImageConverter``); a label map sent back with the
same matrix therefore lands on its image in Slicer. medstream sends the byte as RAS (1).

Pixels for the model: uint8 and uint16 pass unchanged; int8 and int16 are shifted to unsigned (+128,
+32768: order kept, nothing lost); float32 is mapped linearly from a window (``window=LOW,HIGH`` on the
source URI, default 0,255) to uint8, values outside it clipped (counted in the source's
``clipped_frames``); a frame with NaN or infinite pixels is refused (``bad_pixels``).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from medstream.runtime.errors import require
from medstream.runtime.frame import ImageGeometry
from medstream.runtime.wire import WireError

HEADER = struct.Struct(">H12s20sIIQQ")
HEADER_SIZE = HEADER.size  # 58
#: Byte offset of the timestamp (seconds, fraction) inside the header.
TIMESTAMP_OFFSET = 34
TIMESTAMP = struct.Struct(">II")
EXTENDED_HEADER = struct.Struct(">HHII")  # header version 2: size, metadata header size, metadata size, message id
IMAGE_HEADER = struct.Struct(">HBBBBHHH12fHHHHHH")
IMAGE_HEADER_SIZE = IMAGE_HEADER.size  # 72

#: IMAGE scalar types medstream takes (OpenIGTLink code -> numpy type, big-endian pixels handled separately).
SCALAR_TYPES: dict[int, type] = {2: np.int8, 3: np.uint8, 4: np.int16, 5: np.uint16, 10: np.float32}
SCALAR_NAMES = {2: "int8", 3: "uint8", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32", 10: "float32", 11: "float64"}

#: Every message type some OpenIGTLink version defines (v1-v3), plus their query/start/stop/reply forms.
_BASE_TYPES = ("IMAGE", "TRANSFORM", "POSITION", "STATUS", "CAPABILITY", "QTDATA", "TDATA", "TRAJ", "TRAJECTORY",
               "IMGMETA", "LBMETA", "COLORT", "POINT", "STRING", "POLYDATA", "BIND", "NDARRAY", "SENSOR", "COMMAND",
               "VIDEO", "VIDEOMETA", "QTRANS", "LABEL", "META")
KNOWN_TYPES = frozenset(_BASE_TYPES) | frozenset(f"{p}_{t}" for p in ("GET", "STT", "STP", "RTS") for t in _BASE_TYPES)

_PRINTABLE_NAME = re.compile(rb"[\x20-\x7e]*")
#: Largest body accepted by default: a 4096x4096 RGB float32 single slice is 201 MiB; 8192x8192 uint16 is
#: 128 MiB. 64 MiB covers every ultrasound and fluoroscopy frame (a 1920x1080 RGB frame is 6 MiB) and is
#: the ZeroMQ wire's frame limit (runtime/wire.py says why).
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
_NS = 1_000_000_000


def pyigtl() -> Any:
    """pyigtl, imported on first use (the ``[igtl]`` extra)."""
    return require("pyigtl", "igtl", "OpenIGTLink (igtl://)")


def crc64(data: Any) -> int:
    """The OpenIGTLink CRC-64 (ECMA-182, as pyigtl computes it with crcmod) of ``data``."""
    return pyigtl().messages.CRC64(data)


def crc_is_native() -> bool:
    """Whether crcmod runs its C extension: 2.1 ms per 1024x768 8-bit IMAGE here, against about 135 ms in pure
    Python (11 ms per 64 KiB, measured), which would cap a 1024x768 stream near 7 fps."""
    try:
        from crcmod import _crcfunext  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------- time
def ns_to_igtl(t_ns: int) -> tuple[int, int]:
    """UNIX-epoch nanoseconds -> (seconds, 2^-32 fraction), rounded to the nearest fraction."""
    sec, ns = divmod(int(t_ns), _NS)
    frac = (ns * 2**32 + _NS // 2) // _NS
    if frac >= 2**32:
        sec, frac = sec + 1, 0
    return sec, frac


def igtl_to_ns(sec: int, frac: int) -> int:
    """(seconds, 2^-32 fraction) -> UNIX-epoch nanoseconds, rounded; ``igtl_to_ns(*ns_to_igtl(t)) == t``."""
    return sec * _NS + (frac * _NS + 2**31) // 2**32


# ----------------------------------------------------------------------------------------- header
@dataclass(frozen=True, slots=True)
class Header:
    """A checked OpenIGTLink header."""

    version: int
    type: str
    device: str
    seconds: int
    fraction: int
    body_size: int
    crc: int

    @property
    def t_ns(self) -> int:
        return igtl_to_ns(self.seconds, self.fraction)

    def fields(self) -> dict[str, Any]:
        """The header as pyigtl's ``MessageBase.parse_header`` gives it (what its ``unpack`` takes)."""
        return {"header_version": self.version, "message_type": self.type, "device_name": self.device,
                "timestamp": self.seconds + self.fraction / 2**32, "body_size": self.body_size}


def _name(raw: bytes, what: str) -> str:
    text = raw.rstrip(b"\0")
    if b"\0" in text or not _PRINTABLE_NAME.fullmatch(text):
        raise WireError("bad_header", f"the {what} field is not printable ASCII: {raw!r:.60}")
    return text.decode("ascii").strip()


def parse_header(raw: bytes | bytearray | memoryview, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Header:
    """Check a 58-byte header. Any failure means the stream cannot be trusted past it (its body size may lie)."""
    version, mtype, device, sec, frac, body_size, crc = HEADER.unpack(raw)
    if version not in (1, 2):
        raise WireError("bad_header", f"header version {version} is not 1 or 2 (OpenIGTLink v1-v3)")
    type_name = _name(mtype, "message type")
    if not type_name:
        raise WireError("bad_header", "the message type is empty")
    device_name = _name(device, "device name")
    if body_size > max_body_bytes:
        raise WireError("too_large", f"a {type_name} message announces a {body_size}-byte body; the limit is "
                                     f"{max_body_bytes} bytes")
    return Header(version, type_name, device_name, sec, frac, body_size, crc)


def check_body(header: Header, body: bytes | bytearray | memoryview) -> None:
    """The CRC, then the type: :class:`WireError` ``bad_crc`` or ``unknown_message_type``."""
    got = crc64(body)
    if got != header.crc:
        raise WireError("bad_crc", f"{header.type} from {header.device!r}: CRC-64 of the body is {got:#018x}, the "
                                   f"header says {header.crc:#018x} (corrupted or not OpenIGTLink)")
    if header.type not in KNOWN_TYPES:
        raise WireError("unknown_message_type", f"message type {header.type!r:.20} (device {header.device!r}) is not "
                                                "defined by any OpenIGTLink version")


def _content_range(header: Header, body: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Where the message content lies in the body (version 2 puts an extended header before, metadata after)."""
    if header.version == 1:
        return 0, len(body)
    if len(body) < EXTENDED_HEADER.size:
        raise WireError("bad_header", f"a version-2 body of {len(body)} bytes has no room for its extended header")
    ext_size, meta_header, meta_body, _ = EXTENDED_HEADER.unpack_from(body)
    end = len(body) - meta_header - meta_body
    if ext_size < EXTENDED_HEADER.size or end < ext_size:
        raise WireError("bad_header", f"the extended header ({ext_size} bytes) and metadata ({meta_header + meta_body} "
                                      f"bytes) do not fit a {len(body)}-byte body")
    return ext_size, end


# ------------------------------------------------------------------------------------------ IMAGE
@dataclass(slots=True)
class DecodedImage:
    """An IMAGE message's pixels ``HxW`` or ``HxWx3`` (native byte order) and where they lie."""

    pixels: np.ndarray
    geometry: ImageGeometry
    scalar_type: str
    coordinate_system: str  # "ras" | "lps", as the message said (the matrix is used as RAS either way)


def _geometry(values: tuple, size: tuple[int, int, int]) -> ImageGeometry:
    """IJK-to-RAS from the IMAGE header's columns (spacing folded in) and its centre position."""
    m = np.asarray(values[8:20], np.float64)
    cols = m[:9].reshape(3, 3).T  # rows x, y, z; columns i, j, k
    centre = m[9:12]
    if not np.all(np.isfinite(m)):
        raise WireError("bad_header", "the IMAGE matrix holds NaN or infinite values")
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0):
        raise WireError("bad_header", f"the IMAGE matrix has a zero-length axis (spacing {spacing.tolist()})")
    origin = centre - cols @ ((np.asarray(size, np.float64) - 1.0) / 2.0)
    ijk = np.eye(4)
    ijk[:3, :3] = cols
    ijk[:3, 3] = origin
    return ImageGeometry(spacing=tuple(float(v) for v in spacing), ijk_to_ras=tuple(tuple(float(v) for v in row)
                                                                                   for row in ijk))


def decode_image(header: Header, body: bytes | bytearray | memoryview, *, max_width: int = 8192,
                 max_height: int = 8192) -> DecodedImage:
    """Check an IMAGE body field by field, then unpack it with pyigtl's ``ImageMessage``.

    Raises :class:`WireError` (reasons in the module docstring). The CRC must have been checked
    (:func:`check_body`).
    """
    start, end = _content_range(header, body)
    if end - start < IMAGE_HEADER_SIZE:
        raise WireError("body_size_mismatch", f"an IMAGE content of {end - start} bytes is shorter than the "
                                              f"{IMAGE_HEADER_SIZE}-byte image header")
    values = IMAGE_HEADER.unpack_from(body, start)
    image_version, comps, scalar, endian, coord = values[:5]
    size = values[5:8]
    sub_offset, sub_size = values[20:23], values[23:26]
    if image_version not in (1, 2):
        raise WireError("bad_header", f"IMAGE header version {image_version} is unknown")
    if endian not in (1, 2) or coord not in (1, 2):
        raise WireError("bad_header", f"IMAGE endianness {endian} / coordinate system {coord} is not 1 or 2")
    if scalar not in SCALAR_TYPES:
        name = SCALAR_NAMES.get(scalar, f"code {scalar}")
        raise WireError("unsupported_scalar_type", f"IMAGE scalar type {name} is not one of uint8, int8, uint16, "
                                                   "int16, float32")
    if min(size) < 1 or comps < 1:
        raise WireError("bad_header", f"IMAGE size {size} with {comps} components is empty")
    if size[2] != 1 or comps not in (1, 3):
        raise WireError("unsupported_image", f"IMAGE of size {size} with {comps} components: medstream takes 2-D "
                                             "images (one slice) with 1 or 3 components")
    if tuple(sub_offset) != (0, 0, 0) or tuple(sub_size) != tuple(size):
        raise WireError("unsupported_image", f"IMAGE sends a sub-volume (offset {sub_offset}, size {sub_size} of "
                                             f"{size}); send whole images")
    if size[0] > max_width or size[1] > max_height:
        raise WireError("too_large", f"IMAGE of {size[0]}x{size[1]} exceeds the limit {max_width}x{max_height}")
    itemsize = np.dtype(SCALAR_TYPES[scalar]).itemsize
    expected = size[0] * size[1] * comps * itemsize
    got = end - start - IMAGE_HEADER_SIZE
    if got != expected:
        raise WireError("body_size_mismatch", f"IMAGE {size[0]}x{size[1]}x{comps} {SCALAR_NAMES[scalar]} needs "
                                              f"{expected} pixel bytes, the body carries {got}")
    geometry = _geometry(values, size)
    msg = pyigtl().ImageMessage()
    try:
        msg.unpack(header.fields(), bytes(body) if isinstance(body, memoryview) else body)
    except Exception as exc:  # version-2 metadata pyigtl cannot read (its own checks raise several types)
        raise WireError("bad_header", f"IMAGE metadata cannot be read: {type(exc).__name__}: {str(exc)[:120]}") from None
    pixels = msg.image[0]  # (k, j, i[, c]) -> (j, i[, c]) = (rows, columns)
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return DecodedImage(np.ascontiguousarray(pixels), geometry, SCALAR_NAMES[scalar], "ras" if coord == 1 else "lps")


def model_pixels(pixels: np.ndarray, window: tuple[float, float] = (0.0, 255.0)) -> tuple[np.ndarray, bool]:
    """Pixels the pipeline takes (uint8/uint16) and whether any were clipped (float32 outside ``window``)."""
    if pixels.dtype in (np.uint8, np.uint16):
        return pixels, False
    if pixels.dtype == np.int8:
        return (pixels.view(np.uint8) ^ np.uint8(0x80)), False
    if pixels.dtype == np.int16:
        return (pixels.view(np.uint16) ^ np.uint16(0x8000)), False
    if not np.all(np.isfinite(pixels)):
        raise WireError("bad_pixels", "a float32 IMAGE holds NaN or infinite pixels")
    lo, hi = window
    scaled = (pixels.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    clipped = bool(scaled.min() < 0.0 or scaled.max() > 255.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), clipped


# ------------------------------------------------------------------------------------------ packing
def pack(message: Any, t_ns: int) -> bytes:
    """A pyigtl message packed, its header timestamp set to ``t_ns`` exactly.

    pyigtl stamps a float of seconds (about 0.2 us of rounding at today's epoch); the exact value is
    written over it, so a receiver reads back the frame's capture time to the nanosecond. The CRC
    covers the body only, so it stays valid.
    """
    raw = bytearray(message.pack())
    TIMESTAMP.pack_into(raw, TIMESTAMP_OFFSET, *ns_to_igtl(t_ns))
    return bytes(raw)


def geometry_matrix(geometry: ImageGeometry | None) -> np.ndarray:
    return np.eye(4) if geometry is None else np.asarray(geometry.ijk_to_ras, np.float64)


def image_message(pixels: np.ndarray, geometry: ImageGeometry | None, device: str, t_ns: int) -> bytes:
    """An IMAGE (one slice) of ``pixels`` (``HxW`` or ``HxWx3``) placed by ``geometry``, coordinate system RAS."""
    m = pyigtl().ImageMessage(pixels[np.newaxis], ijk_to_world_matrix=geometry_matrix(geometry),
                              world_coordinate_system="ras", device_name=device)
    return pack(m, t_ns)


def string_message(text: str, device: str, t_ns: int) -> bytes:
    """A STRING (ASCII: JSON is written with ``ensure_ascii``; OpenIGTLink caps it at 65535 bytes)."""
    if len(text) > 65535:
        raise ValueError(f"a STRING message holds at most 65535 bytes, got {len(text)}")
    return pack(pyigtl().StringMessage(text, device_name=device), t_ns)


def point_message(points_ras: list[tuple[float, float, float]], names: list[str], device: str, t_ns: int) -> bytes:
    """A POINT message with one point per RAS position."""
    m = pyigtl().PointMessage(positions=np.asarray(points_ras, np.float32), names=names, device_name=device)
    return pack(m, t_ns)


def check_device_name(name: str, what: str) -> str:
    """A device name OpenIGTLink can carry (printable ASCII, 1-20 bytes), or :class:`ValueError` naming it."""
    if not 1 <= len(name) <= 20 or not name.isascii() or not name.isprintable():
        raise ValueError(f"{what} {name!r} must be 1-20 printable ASCII characters (OpenIGTLink device name)")
    return name


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


__all__ = ["DEFAULT_MAX_BODY_BYTES", "HEADER", "HEADER_SIZE", "IMAGE_HEADER", "KNOWN_TYPES", "SCALAR_TYPES",
           "DecodedImage", "Header", "check_body", "check_device_name", "crc64", "crc_is_native", "decode_image",
           "dumps", "igtl_to_ns", "image_message", "model_pixels", "ns_to_igtl", "pack", "parse_header",
           "point_message", "pyigtl", "string_message"]
