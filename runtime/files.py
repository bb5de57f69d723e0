"""Small file helpers shared by every part of medstream: content hashes and atomic writes.

Every output (summary, report, calibrated model, cache) is written to a temporary file in the
destination folder and renamed into place, so a crash or a full disk never leaves half a file.
``tempfile.mkstemp`` creates files readable by their owner only (0600); :func:`publish` gives them
the mode a plain ``open()`` would (0666 minus the umask) before the rename, so the service account
that runs a model can read what an engineer calibrated or exported.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: read once at import: os.umask is process-wide and not something to toggle per write
DEFAULT_MODE = _default_mode()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (models, engines, calibration inputs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Give ``tmp`` normal permissions and rename it to ``path`` (atomic on one filesystem)."""
    os.chmod(tmp, DEFAULT_MODE)
    os.replace(tmp, path)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and :func:`publish`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON atomically, so a reader never sees half a file."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))
