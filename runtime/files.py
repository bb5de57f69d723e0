"""The one owner of file writes in medstream: content hashes and atomic writes.

Every output (summary, report, calibrated model, engine, cache, recorded frame) is written to a
temporary file in the destination folder and renamed into place, so a crash or a full disk never
leaves half a file. ``tempfile.mkstemp`` creates files readable by their owner only (0600);
:func:`publish` gives them the mode a plain ``open()`` would (0666 minus the umask, so 0644 with the
usual umask 022) before the rename, so the service account that runs a model can read what an
engineer calibrated, exported or built.

Which helper to call:

* text or JSON: :func:`write_text_atomic`, :func:`write_json_atomic`;
* bytes already in memory (an engine, a manifest): :func:`write_bytes_atomic`;
* a stream of writes to an open file (a recorded frame): ``with atomic_file(path) as f: ...``;
* a library that wants a file *name* (``onnx.save``, ``numpy.savez``, ``torch.onnx.export``):
  ``with atomic_path(path) as tmp: library.save(..., tmp)``;
* a temporary file you manage yourself (e.g. kept under another name when rejected): :func:`publish`.

No other module calls ``os.replace``, ``os.rename`` or ``tempfile.mkstemp`` to write a file:
``tests/architecture/test_file_writes.py`` greps the tree for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


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


def _temp_in(folder: Path, name: str, suffix: str = ".tmp") -> tuple[int, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=suffix)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a library to write to; published to ``path`` on success.

    ``suffix``: for libraries that append their own otherwise (``numpy.savez`` adds ``.npz``). On an
    exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = _temp_in(path.parent, path.name, suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, durable: bool = False,
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """An open temporary file beside ``path``; flushed (and fsynced when ``durable``) and published on success.

    ``durable=True`` fsyncs the data before the rename, so after a power cut the file is either the
    old one or the complete new one (engines: minutes to rebuild; a few ms to fsync).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a whole new file: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = _temp_in(path.parent, path.name)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically with normal permissions; returns the path."""
    with atomic_file(path, "wb", durable=durable) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically with normal permissions; returns the path."""
    with atomic_file(path, "w", durable=durable, encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """Write JSON atomically, so a reader never sees half a file."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str))
