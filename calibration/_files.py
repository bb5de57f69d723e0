"""Atomic file writes with ordinary permissions.

Every output is written to a temporary file in the destination folder and renamed into place, so a
crash never leaves half a model. ``tempfile.mkstemp`` creates files readable by their owner only
(0600); :func:`publish` gives them the mode a plain ``open()`` would (0666 minus the umask) before the
rename, so the service account that runs the model can read what an engineer calibrated.
"""

from __future__ import annotations

import os
from pathlib import Path


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: read once at import: os.umask is process-wide and not something to toggle per write
DEFAULT_MODE = _default_mode()


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Give ``tmp`` normal permissions and rename it to ``path`` (atomic on one filesystem)."""
    os.chmod(tmp, DEFAULT_MODE)
    os.replace(tmp, path)
    return Path(path)
