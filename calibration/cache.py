"""The calibration cache: a second run with the same model and data skips the statistics pass.

Two kinds of file live in the cache folder (``~/.cache/medstream/calib``, ``$MEDSTREAM_CACHE_DIR``
or ``--cache-dir``):

* ``stats-<key>.npz``: the activation statistics of one statistics pass (min, max, histogram of
  ``|x|`` per tensor; :mod:`medstream.calibration.stats`). ``key`` = sha256 of the model file's
  sha256, the data description (sources, folder fingerprints, preprocessing, frame count) and the
  statistics format. Every method's ranges are computed from it.
* ``ranges-<key>.json``: one method's ranges in ONNX Runtime's ``TensorsData`` JSON, the file
  ``onnxruntime.quantization.quantize_static(calibration_cache_path=...)`` loads instead of
  calibrating. ``key`` adds the method and its parameter.

Writes are atomic (temp file + rename), so an interrupted run never leaves a half cache behind.
Live streams are not cached (the same URI gives other frames next time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from medstream.calibration.stats import STATS_FORMAT, ActivationStats
from medstream.runtime.files import atomic_path
from medstream.runtime.files import sha256_file as file_sha256

log = logging.getLogger("medstream.calibration")


def default_cache_dir() -> Path:
    """``$MEDSTREAM_CACHE_DIR/calib``, else ``$XDG_CACHE_HOME/medstream/calib``, else ``~/.cache/medstream/calib``."""
    if os.environ.get("MEDSTREAM_CACHE_DIR"):
        return Path(os.environ["MEDSTREAM_CACHE_DIR"]).expanduser() / "calib"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "medstream" / "calib"


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class CalibrationCache:
    """Statistics and ranges stored by key under ``root``; ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None

    @staticmethod
    def stats_key(model_sha256: str, data_description: dict[str, Any]) -> str:
        return _key({"model": model_sha256, "data": data_description, "format": STATS_FORMAT})

    @staticmethod
    def ranges_key(stats_key: str, method: str, percentile: float) -> str:
        return _key({"stats": stats_key, "method": method,
                     "percentile": percentile if method == "percentile" else None})

    def stats_path(self, key: str) -> Path | None:
        return self.root / f"stats-{key}.npz" if self.root else None

    def ranges_path(self, key: str) -> Path | None:
        return self.root / f"ranges-{key}.json" if self.root else None

    def load_stats(self, key: str) -> ActivationStats | None:
        path = self.stats_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return ActivationStats.load(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("calibration cache %s is unreadable (%s); collecting statistics again", path, exc)
            return None

    def save_stats(self, key: str, stats: ActivationStats) -> Path | None:
        path = self.stats_path(key)
        if path is None:
            return None
        try:
            with atomic_path(path, suffix=".npz") as tmp:  # numpy.savez would append .npz to any other name
                stats.save(tmp)
        except OSError as exc:
            log.warning("could not write the calibration cache %s (%s); the next run will recalibrate", path, exc)
            return None
        return path


__all__ = ["CalibrationCache", "default_cache_dir", "file_sha256"]
