"""Test parts for OpenIGTLink: a PLUS-like raw server, a Slicer-like raw client, and a reference decoder.

The reference decoder is written here from the OpenIGTLink specification (openigtlink.org/developers/spec:
the 58-byte header and the IMAGE body), with ``struct`` only: it shares no code with medstream or pyigtl
(the CRC is checked with a bit-by-bit CRC-64/ECMA-182 written below, not crcmod's table), so a decoding
bug in either shows up as a mismatch.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np

HEADER_FMT = ">H12s20sIIQQ"  # version, type, device, seconds, fraction, body size, crc
IMAGE_FMT = ">HBBBBHHH12fHHHHHH"
SCALARS = {2: ">i1", 3: ">u1", 4: ">i2", 5: ">u2", 10: ">f4"}
ECMA_POLY = 0x42F0E1EBA9EA3693


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 56
        for _ in range(8):
            crc = ((crc << 1) ^ ECMA_POLY) if crc & (1 << 63) else (crc << 1)
            crc &= (1 << 64) - 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def ref_crc64(data: bytes) -> int:
    """CRC-64/ECMA-182, MSB first, init 0, no final xor (the OpenIGTLink CRC), one byte at a time."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFFFFFFFFFF) ^ _TABLE[((crc >> 56) ^ b) & 0xFF]
    return crc


def ref_ns(seconds: int, fraction: int) -> int:
    return seconds * 1_000_000_000 + round(fraction * 1_000_000_000 / 2**32)


@dataclass
class RefMessage:
    type: str
    device: str
    t_ns: int
    body: bytes
    crc_ok: bool
    image: np.ndarray | None = None       # (rows, cols[, comps]) for IMAGE
    matrix: np.ndarray | None = None      # 3x4: columns i, j, k (spacing folded in) and the centre
    ijk_to_ras: np.ndarray | None = None  # 4x4, origin at pixel (0, 0, 0)
    coord: int = 0
    text: str | None = None
    points: list = field(default_factory=list)


def ref_decode(raw: bytes) -> RefMessage:
    """Decode one whole message per the specification (header version 1 only, as medstream sends)."""
    version, mtype, device, sec, frac, size, crc = struct.unpack(HEADER_FMT, raw[:58])
    assert version == 1, version
    body = raw[58:58 + size]
    assert len(body) == size
    msg = RefMessage(mtype.rstrip(b"\0").decode(), device.rstrip(b"\0").decode(), ref_ns(sec, frac), body,
                     ref_crc64(body) == crc)
    if msg.type == "IMAGE":
        v = struct.unpack(IMAGE_FMT, body[:72])
        comps, scalar, endian, coord = v[1:5]
        ni, nj, nk = v[5:8]
        dtype = np.dtype(SCALARS[scalar]).newbyteorder(">" if endian == 1 else "<")
        pix = np.frombuffer(body[72:], dtype=dtype).reshape(nk, nj, ni, comps)[0]
        msg.image = pix[:, :, 0] if comps == 1 else pix
        cols = np.array(v[8:17], np.float64).reshape(3, 3).T
        centre = np.array(v[17:20], np.float64)
        msg.matrix = np.column_stack([cols, centre])
        origin = centre - cols @ ((np.array([ni, nj, nk]) - 1) / 2.0)
        msg.ijk_to_ras = np.eye(4)
        msg.ijk_to_ras[:3, :3], msg.ijk_to_ras[:3, 3] = cols, origin
        msg.coord = coord
    elif msg.type == "STRING":
        _, length = struct.unpack(">HH", body[:4])
        msg.text = body[4:4 + length].decode("ascii")
    elif msg.type == "POINT":
        item = struct.Struct(">64s32s4B3ff20s")
        for k in range(len(body) // item.size):
            name, _, _, _, _, _, x, y, z, _, _ = item.unpack_from(body, k * item.size)
            msg.points.append((name.rstrip(b"\0").decode(), x, y, z))
    return msg


def build_message(mtype: bytes, device: bytes, body: bytes, *, t_ns: int | None = None, crc: int | None = None,
                  body_size: int | None = None, version: int = 1) -> bytes:
    """Hand-built message bytes (for malformed-message tests): any field can lie."""
    t_ns = time.time_ns() if t_ns is None else t_ns
    sec, ns = divmod(t_ns, 1_000_000_000)
    frac = (ns * 2**32 + 500_000_000) // 1_000_000_000
    header = struct.pack(HEADER_FMT, version, mtype, device, sec, min(frac, 2**32 - 1),
                         len(body) if body_size is None else body_size, ref_crc64(body) if crc is None else crc)
    return header + body


def image_body(pixels: np.ndarray, scalar: int, *, comps: int = 1, size: tuple[int, int, int] | None = None,
               cols: np.ndarray | None = None, centre=(0.0, 0.0, 0.0), coord: int = 1,
               subvolume: tuple | None = None) -> bytes:
    """An IMAGE body by the specification, big-endian pixels; ``size``/``subvolume`` may lie."""
    rows, ncols = pixels.shape[:2]
    size = size or (ncols, rows, 1)
    cols = np.eye(3) if cols is None else cols
    sub = subvolume or (0, 0, 0, *size)
    head = struct.pack(IMAGE_FMT, 1, comps, scalar, 1, coord, *size, *cols.T.reshape(-1), *centre, *sub)
    return head + np.ascontiguousarray(pixels).astype(np.dtype(SCALARS.get(scalar, ">u1"))).tobytes()


class RawPlus:
    """A PLUS-like server on loopback that sends whatever bytes a test gives to its one client."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(2)
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self, timeout: float = 5.0) -> None:
        self.listener.settimeout(timeout)
        self.conn, _ = self.listener.accept()

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


class RawSlicer:
    """A Slicer-like OpenIGTLink client on a thread, keeping every message decoded by :func:`ref_decode`.

    ``stall=True`` connects and never reads (a frozen Slicer): the server's sends must back up against it.
    """

    def __init__(self, port: int, *, stall: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536 if stall else 4 * 2**20)
        self.messages: list[tuple[int, RefMessage]] = []  # (arrival time ns, message)
        self._stop = threading.Event()
        self.thread = None
        if not stall:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if self._stop.is_set():
                return None
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _loop(self) -> None:
        while not self._stop.is_set():
            head = self._recv_exact(58)
            if head is None:
                return
            size = struct.unpack(">Q", head[42:50])[0]
            body = self._recv_exact(size)
            if body is None:
                return
            self.messages.append((time.time_ns(), ref_decode(head + body)))

    def of_type(self, mtype: str) -> list[RefMessage]:
        return [m for _, m in self.messages if m.type == mtype]

    def wait_for(self, mtype: str, n: int, timeout: float) -> list[RefMessage]:
        deadline = time.monotonic() + timeout
        while len(self.of_type(mtype)) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.of_type(mtype)

    def close(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(2)
        with contextlib.suppress(OSError):
            self.sock.close()


def wait_until(cond, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


#: A non-trivial placement: 0.23 x 0.31 mm pixels, the image plane tilted 30 degrees about A, shifted.
def tilted_geometry() -> np.ndarray:
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([0.23, 0.31, 1.0])
    m[:3, 3] = (12.5, -40.0, 7.25)
    return m
