"""Calibration frames: read from any medstream source, preprocessed exactly as the runtime does.

``--data`` takes what ``medstream run --source`` takes, through the same
:func:`medstream.runtime.sources.open_source`:

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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError, SourceEnded, SourceError
from medstream.runtime.preprocess import Preprocessor
from medstream.runtime.sources import open_source, parse_uri
from medstream.runtime.wire import WireError

log = logging.getLogger("medstream.calibration")

#: Sources whose frames are the same every time they are read: safe to cache statistics for.
_REPRODUCIBLE = ("synthetic", "file")
TRUTH_SUFFIX = ".truth.npy"


def normalize_uri(uri: str) -> str:
    """The URI to open: bare paths become ``file://`` URIs, and replay runs unpaced (``fps=0``).

    A recorded folder replays at 30 fps by default and the phantom at its frame rate; calibration
    wants the frames as fast as they can be read, so ``fps=0`` is set unless the user gave one.
    """
    parsed = parse_uri(uri)
    if "://" not in uri:
        path = Path(uri).expanduser().resolve()
        return f"file://{quote(str(path))}?fps=0"
    if parsed.scheme in ("synthetic", "file") and "fps" not in parsed.params:
        return f"{uri}{'&' if '?' in uri else '?'}fps=0"
    return uri


def expand_scenes(uri: str) -> list[str]:
    """``synthetic://KIND?seed=S&scenes=K`` -> K URIs with seeds S .. S+K-1 (one phantom anatomy each).

    The same convention as the evaluation oracle's ``scenes=``: calibration frames spread over
    several anatomies, gains and probes describe the deployment better than 200 frames of one.
    """
    parsed = parse_uri(uri)
    if parsed.scheme != "synthetic" or "scenes" not in parsed.params:
        return [uri]
    scenes = parsed.param("scenes", 1, int)
    if scenes < 1:
        raise ConfigError(f"{uri}: scenes must be >= 1", "use scenes=8 for eight phantom anatomies")
    seed = parsed.param("seed", 0, int)
    rest = [f"{k}={v}" for k, v in parsed.params.items() if k not in ("scenes", "seed")]
    base = f"synthetic://{parsed.netloc or parsed.path.strip('/')}"
    return [f"{base}?{'&'.join([f'seed={seed + i}', *rest])}" for i in range(scenes)]


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
        return all(parse_uri(u).scheme in _REPRODUCIBLE for u in self.opened)

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
        quotas = [self.frames // n + (1 if i < self.frames % n else 0) for i in range(n)]
        for uri, quota in zip(self.opened, quotas, strict=True):
            for image, color in self._read(uri, quota):
                self.reads += 1
                yield pre(image, color).copy()

    def _read(self, uri: str, quota: int) -> Iterator[tuple[np.ndarray, str]]:
        if quota <= 0:
            return
        source = open_source(uri)
        _skip_truth_files(source)
        source.open()
        try:
            got = 0
            last = time.monotonic()
            while got < quota:
                try:
                    frame = source.read(timeout=0.5)
                except SourceEnded:
                    break
                except WireError as exc:
                    self.skipped += 1
                    log.warning("calibration data %s: skipped a frame (%s: %s)", uri, exc.reason, exc)
                    continue
                if frame is None:
                    if time.monotonic() - last > self.read_timeout_s:
                        raise SourceError(f"calibration source {uri} sent no frame for {self.read_timeout_s:.0f} s",
                                          "check the stream is running, or record it first with 'medstream record'")
                    continue
                last = time.monotonic()
                got += 1
                yield frame.image, frame.color_order
        finally:
            source.close()


def _skip_truth_files(source: Any) -> None:
    """Leave ``NNNNNNNN.truth.npy`` masks of a recorded folder out of the frames to read.

    ``medstream record`` stores ground-truth masks beside the frames; they are class maps, not
    images, and would skew the statistics if read as frames.
    """
    items = getattr(source, "items", None)
    if isinstance(items, list) and any(str(p).endswith(TRUTH_SUFFIX) for p in items):
        source.items = [p for p in items if not str(p).endswith(TRUTH_SUFFIX)]
        if not source.items:
            raise ConfigError(f"{source.uri.raw} holds only ground-truth masks, no frames",
                              "point --data at the folder of recorded frames")


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
