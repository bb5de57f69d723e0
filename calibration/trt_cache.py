"""TensorRT calibration cache files, for TensorRT 8.x-10.x toolchains that still take one.

``trtexec --onnx=M.onnx --int8 --calib=M.calib.cache`` (TensorRT 8.x-10.x; removed in 11) builds an
implicitly quantized engine from the *FP32* model plus a cache of per-tensor scales, skipping
TensorRT's own calibration. The file is plain text (see docs/CALIBRATION.md)::

    TRT-8601-EntropyCalibration2
    input: 3c010204
    /stem/stem.2/Relu_output_0: 3d8a1e2f
    ...

* line 1: ``TRT-<version>-<algorithm>``. ``<version>`` is TensorRT's ``NV_TENSORRT_VERSION`` of the
  builder that will read it (8.6.1 -> ``8601``: major*1000 + minor*100 + patch for 8.x;
  10.3.0 -> ``100300``: major*10000 + minor*100 + patch from 10.0). TensorRT ignores a cache whose
  header does not match its version or the calibrator's algorithm and calibrates again, so pass the
  target's version (``--trt-version``).
* then one line per tensor: ``<tensor name>: <scale>``, where ``<scale> = amax / 127`` as the
  8 hexadecimal digits of its IEEE-754 float32 bit pattern, most significant first (big-endian).
* tensor names are the ONNX tensor names: TensorRT's ONNX parser names each ``ITensor`` after the
  ONNX value it comes from (graph inputs by input name, layer outputs by the node's output name).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from pathlib import Path

from medstream.runtime.errors import ConfigError
from medstream.runtime.files import write_text_atomic

DEFAULT_TRT_VERSION = "8.6.1"
DEFAULT_ALGORITHM = "EntropyCalibration2"
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


def trt_version_code(version: str) -> int:
    """TensorRT's ``NV_TENSORRT_VERSION`` for ``"8.6.1"`` (8601) or ``"10.3.0"`` (100300)."""
    parts = version.strip().split(".")
    try:
        nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    except ValueError:
        raise ConfigError(f"TensorRT version {version!r} is not like 8.6.1 or 10.3.0",
                          "give --trt-version as MAJOR.MINOR.PATCH") from None
    major, minor, patch = nums[:3]
    if major < 8 or minor > 99 or patch > 99:
        raise ConfigError(f"TensorRT version {version!r} is not one whose builder reads calibration caches (8.x-10.x)",
                          "give --trt-version as MAJOR.MINOR.PATCH, e.g. 8.6.1 or 10.3.0")
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """The float32 bit pattern of ``scale`` as 8 lowercase hex digits, big-endian."""
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.strip().rjust(8, "0")))[0]


def format_cache(amax: Mapping[str, float], version: str = DEFAULT_TRT_VERSION,
                 algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The cache text for symmetric ranges ``amax`` (tensor name -> largest magnitude kept)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"calibration algorithm {algorithm!r} is not one TensorRT writes",
                          f"use one of {', '.join(ALGORITHMS)}")
    lines = [f"TRT-{trt_version_code(version)}-{algorithm}"]
    for name, value in amax.items():
        if ":" in name or "\n" in name:
            continue  # cannot be written unambiguously; TensorRT falls back to float for it
        scale = max(float(value), 1e-12) / 127.0
        lines.append(f"{name}: {scale_to_hex(scale)}")
    return "\n".join(lines) + "\n"


def write_cache(path: str | Path, amax: Mapping[str, float], version: str = DEFAULT_TRT_VERSION,
                algorithm: str = DEFAULT_ALGORITHM) -> Path:
    """Write the cache atomically (temp file + rename) and return its path."""
    path = Path(path)
    write_text_atomic(path, format_cache(amax, version, algorithm))
    return path


def read_cache(path: str | Path) -> tuple[int, str, dict[str, float]]:
    """Parse a cache: ``(version code, algorithm, {tensor name: scale})``."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    match = _HEADER.match(lines[0].strip()) if lines else None
    if match is None:
        raise ConfigError(f"{path} does not start with a TRT-<version>-<algorithm> line",
                          "is this a TensorRT calibration cache?")
    scales: dict[str, float] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, _, value = line.rpartition(":")
        scales[name.strip()] = hex_to_scale(value)
    return int(match.group(1)), match.group(2), scales


__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "DEFAULT_TRT_VERSION", "format_cache", "hex_to_scale",
           "read_cache", "scale_to_hex", "trt_version_code", "write_cache"]
