"""Calibration frames: read from any medstream source, preprocessed exactly as the runtime does.

``--data`` takes what ``medstream run --source`` takes; the frames are read by the sources' offline
reader, :func:`medstream.runtime.sources.read_frames` (this module opens no file or socket itself):

* ``synthetic://ultrasound?seed=3`` (the phantom; ``fps=0`` is added so it is not paced in real time;
  ``scenes=K`` spreads the frames over seeds ``seed .. seed+K-1``, as in evaluation);
* a folder of images or ``.npy`` frames, including a folder written by ``medstream record``
  (``NNNNNNNN.npy`` + ``NNNNNNNN.json``), as a bare path or ``file://`` URI;
* a video file;
* a live stream (``zmq+tcp://HOST:PORT``), though a recording is better: it can be cached and repeated.

Every frame goes through the runtime's :class:`~medstream.runtime.preprocess.Preprocessor`, so the
statistics describe exactly the tensors the model will see in production (colour conversion, ROI
crop, resize, normalisation, layout). Nothing here reimplements preprocessing.

:class:`CalibrationData` reads lazily: its :attr:`~CalibrationData.description` (the cache key's
data part) is known without touching a frame, so a cache hit reads nothing at all.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError
from medstream.runtime.preprocess import Preprocessor
from medstream.runtime.sources import parse_uri, read_frames
from medstream.runtime.sources.reading import REPRODUCIBLE_SCHEMES, offline_uri
from medstream.runtime.sources.synthetic import scene_uris, split_frames
from medstream.runtime.wire import WireError

log = logging.getLogger("medstream.calibration")


def normalize_uri(uri: str) -> str:
    """The URI to open: bare paths become ``file://`` URIs, and replay runs unpaced (``fps=0``).

    The rule is the sources' (:func:`medstream.runtime.sources.reading.offline_uri`); the result is
    also the cache key's name for the data.
    """
    return offline_uri(uri)


def expand_scenes(uri: str) -> list[str]:
    """``synthetic://KIND?seed=S&scenes=K`` -> K URIs with seeds S .. S+K-1 (one phantom anatomy each).

    The synthetic source's own rule (:func:`medstream.runtime.sources.synthetic.scene_uris`): calibration
    frames spread over several anatomies, gains and probes describe the deployment better than 200
    frames of one, and one URI per scene keeps the cache key's description exact.
    """
    return scene_uris(uri)


def _local_path(uri: str) -> Path | None:
    parsed = parse_uri(uri)
    if parsed.scheme != "file":
        return None
    from urllib.parse import unquote

    return Path(unquote(f"{parsed.netloc}{parsed.path}")).expanduser()


def _fingerprint(path: Path) -> str:
    """Names, sizes and modification times of a file or folder: changes when the data changes."""
    digest = hashlib.sha256()
    entries = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for p in entries:
        st = p.stat()
        digest.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class CalibrationData:
    """Up to ``frames`` calibration frames from ``uris`` (split evenly), as model inputs.

    Parameters
    ----------
    uris
        One or more source URIs or paths.
    frames
        How many frames to use in all.
    contract
        The model's contract; drives preprocessing.
    roi
        Optional crop, as the runtime's ``roi`` config.
    read_timeout_s
        Give up when a live source sends nothing for this long.
    """

    uris: Sequence[str]
    frames: int
    contract: ModelContract
    roi: tuple[int, int, int, int] | None = None
    read_timeout_s: float = 30.0
    #: frames read from the sources so far (tests use it to prove a cache hit read nothing)
    reads: int = field(default=0, init=False)
    #: frames that failed to decode and were skipped
    skipped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"--frames must be at least 1, got {self.frames}", "pass --frames 200 (100-500 is typical)")
        if not self.uris:
            raise ConfigError("no calibration data given", "pass --data SRC (synthetic://..., a folder, a video)")
        self.opened = [normalize_uri(e) for u in self.uris for e in expand_scenes(u)]

    @property
    def cacheable(self) -> bool:
        """True when reading the same URIs again gives the same frames (not a live stream)."""
        return all(parse_uri(u).scheme in REPRODUCIBLE_SCHEMES for u in self.opened)

    @property
    def description(self) -> dict[str, Any]:
        """What the frames are, for the cache key and the report; reads no frame."""
        sources = []
        for uri in self.opened:
            entry: dict[str, Any] = {"uri": uri}
            local = _local_path(uri)
            if local is not None and local.exists():
                entry["fingerprint"] = _fingerprint(local)
            sources.append(entry)
        spec = self.contract.input
        return {"sources": sources, "frames": self.frames, "roi": list(self.roi) if self.roi else None,
                "preprocess": spec.model_dump(mode="json", exclude={"name"})}

    def label(self) -> str:
        return ", ".join(self.uris)

    def inputs(self) -> Iterator[np.ndarray]:
        """Yield preprocessed model inputs (batch 1, fresh arrays), at most ``frames`` of them."""
        pre = Preprocessor(self.contract, roi=self.roi)
        n = len(self.opened)
        quotas = split_frames(self.frames, n)
        for uri, quota in zip(self.opened, quotas, strict=True):
            for image, color in self._read(uri, quota):
                self.reads += 1
                yield pre(image, color).copy()

    def _read(self, uri: str, quota: int) -> Iterator[tuple[np.ndarray, str]]:
        if quota <= 0:
            return
        for frame in read_frames(uri, quota, on_invalid=lambda exc: self._skip(uri, exc),
                                 read_timeout_s=self.read_timeout_s):
            yield frame.image, frame.color_order

    def _skip(self, uri: str, exc: WireError) -> None:
        self.skipped += 1
        log.warning("calibration data %s: skipped a frame (%s: %s)", uri, exc.reason, exc)


def default_eval_uri(data_uris: Sequence[str], frames: int) -> str | None:
    """Held-out evaluation data for synthetic calibration data: the same phantom, seeds 10000+.

    Training and calibration use seeds below 10000; evaluation seeds start at 10000 (see
    :mod:`medstream.runtime.evaluation`). Returns ``None`` for other data (the user must say).
    """
    parsed = parse_uri(data_uris[0])
    if parsed.scheme != "synthetic":
        return None
    kind = (parsed.netloc or parsed.path.strip("/")).lower()
    keep = {k: v for k, v in parsed.params.items() if k in ("width", "height", "probe")}
    extra = "".join(f"&{k}={v}" for k, v in keep.items())
    scenes = max(1, min(10, frames // 30))
    return f"synthetic://{kind}?seed=10000&scenes={scenes}{extra}"


__all__ = ["CalibrationData", "default_eval_uri", "expand_scenes", "normalize_uri"]
