"""Package version and build provenance (the git commit, when run from a checkout)."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

try:
    __version__ = metadata.version("medstream")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The short commit of the checkout this code runs from, or ``"unknown"`` outside git.

    Logged at start-up and written into model provenance, so a result can be traced to its code.
    """
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=2, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
