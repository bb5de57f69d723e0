"""Read a bounded number of frames from any URI, as fast as they come: the offline readers.

The pipeline reads its live source frame by frame (:func:`medstream.runtime.sources.open_source`).
Everything else that wants frames from a URI (evaluation, calibration data, training on a folder) calls
one of these, so there is one answer to "what frames does this URI hold":

* :func:`read_frames` yields up to N :class:`~medstream.runtime.frame.Frame` objects, plain;
* :func:`read_labelled_frames` yields up to N frames that all carry ``truth`` (a ``uint8`` class map of
  the frame's size), from ``synthetic://`` (with ``scenes=K``/``stride=S``), a ``medstream record``
  folder, an ``images/`` + ``masks/`` folder, ``NAME`` + ``NAME_mask`` files, ``.npz`` pairs (layouts in
  :mod:`medstream.runtime.sources.folder_format`), or any source whose frames carry truth (a
  ``zmq+tcp://`` stream from ``medstream simulate --truth``). A frame without truth, a broken mask or an
  undecodable file is an error naming it: an accuracy number must never silently leave frames out.

Reading is unpaced: :func:`offline_uri` adds ``fps=0`` to ``synthetic://`` and ``file://`` URIs that do
not set ``fps`` (a given ``fps`` is honoured), and a bare path becomes a ``file://`` URI.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np

from medstream.runtime.errors import ConfigError, SourceEnded, SourceError
from medstream.runtime.frame import Frame
from medstream.runtime.sources import folder_format as fmt
from medstream.runtime.sources.base import parse_uri
from medstream.runtime.sources.file_source import check_mask, read_archive, read_array
from medstream.runtime.wire import WireError

#: Sources whose frames are the same every time they are read.
REPRODUCIBLE_SCHEMES = ("synthetic", "file")


def offline_uri(uri: str) -> str:
    """The URI to open for offline reading: bare paths become ``file://`` URIs, replay runs unpaced (``fps=0``).

    A recorded folder replays at 30 fps by default and the phantom at its frame rate; offline readers
    want the frames as fast as they can be read, so ``fps=0`` is set unless the user gave one.
    """
    parsed = parse_uri(uri)
    if "://" not in uri:
        path = Path(uri).expanduser().resolve()
        return f"file://{quote(str(path))}?fps=0"
    if parsed.scheme in REPRODUCIBLE_SCHEMES and "fps" not in parsed.params:
        return f"{uri}{'&' if '?' in uri else '?'}fps=0"
    return uri


def _with_param(uri: str, key: str, value: object) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{key}={value}"


def read_frames(uri: str, limit: int, *, labelled: bool = False,
                on_invalid: Callable[[WireError], None] | None = None,
                read_timeout_s: float = 30.0) -> Iterator[Frame]:
    """Up to ``limit`` frames from ``uri`` (fewer when a finite source ends first), unpaced.

    Parameters
    ----------
    uri
        Any source URI or a bare path (see :func:`medstream.runtime.sources.open_source`).
    limit
        How many frames at most. A ``synthetic://`` URI without ``frames=`` gets ``frames=limit``, so
        ``scenes=K`` spreads exactly the frames asked for.
    labelled
        Every frame must carry ``truth`` (see :func:`read_labelled_frames`).
    on_invalid
        Called with each frame that arrived malformed or undecodable, which is then skipped; without it
        such a frame is a :class:`ConfigError`.
    read_timeout_s
        A live source that sends nothing for this long is a :class:`SourceError`.
    """
    from medstream.runtime.sources import open_source

    if limit <= 0:
        raise ConfigError(f"frames must be positive, got {limit}", "pass --frames N with N >= 1")
    opened = offline_uri(uri)
    parsed = parse_uri(opened)
    options: dict[str, object] = {}
    if parsed.scheme == "synthetic" and "frames" not in parsed.params:
        opened = _with_param(opened, "frames", limit)
    if parsed.scheme == "file" and labelled:
        options["strict_truth"] = True
        if "color" not in parsed.params:  # colour .npy arrays without a header: numpy's RGB convention
            opened = _with_param(opened, "color", "rgb")
    source = open_source(opened, **options)
    source.open()
    try:
        got, last = 0, time.monotonic()
        while got < limit:
            try:
                frame = source.read(timeout=0.5)
            except SourceEnded:
                return
            except WireError as exc:
                if on_invalid is None:
                    raise ConfigError(f"a frame from {uri} cannot be read: {exc}",
                                      "fix or remove that file, or record the data again") from None
                on_invalid(exc)
                continue
            if frame is None:
                if time.monotonic() - last > read_timeout_s:
                    raise SourceError(f"source {uri} sent no frame for {read_timeout_s:.0f} s",
                                      "check the stream is running, or record it first with 'medstream record'")
                continue
            last = time.monotonic()
            if labelled and frame.truth is None:
                raise ConfigError(f"source {uri} gives frames without ground truth",
                                  f"use synthetic:// frames or a folder of frames with masks: {fmt.LABELLED_LAYOUTS}")
            got += 1
            yield frame
    finally:
        source.close()


def read_labelled_frames(uri: str, limit: int, **options) -> Iterator[Frame]:
    """Up to ``limit`` frames that all carry ``truth``; see the module docstring for what ``uri`` may be.

    Keyword options are those of :func:`read_frames`.
    """
    return read_frames(uri, limit, labelled=True, **options)


# ------------------------------------------------------------------------- folder pairs (training)
def find_image_mask_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """Pairs ``(image file, mask file)`` of a folder of frames with truth masks, in name order.

    The layouts are :mod:`~medstream.runtime.sources.folder_format`'s; an ``.npz`` is paired with itself.

    Raises
    ------
    ConfigError
        The folder does not exist or holds no pairs; the message says which layouts are understood.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data folder {root} does not exist", "give a folder of frames with truth masks")
    pairs = [(item.image, item.mask) for item in fmt.list_folder(root) if item.mask is not None]
    if not pairs:
        raise ConfigError(f"no frame/mask pairs found in {root}", f"use {fmt.LABELLED_LAYOUTS}")
    return pairs


def load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """One frame and its truth mask: ``(image, mask uint8 HxW, colour order)``.

    Colour: OpenCV decodes colour image files as BGR; ``.npy``/``.npz`` arrays are taken as RGB (numpy
    convention) unless a ``medstream record`` header beside them says otherwise.
    """
    try:
        if image_path.suffix.lower() == fmt.ARCHIVE_SUFFIX:
            image, mask = read_archive(image_path)
            if mask is None:
                raise ConfigError(f"{image_path} lacks a 'mask' array",
                                  "save frames with np.savez(path, image=..., mask=...)")
            return image, check_mask(mask, image_path, image.shape, image_path), \
                ("rgb" if image.ndim == 3 and image.shape[2] == 3 else "gray")
        image = read_array(image_path)
        mask = read_array(mask_path)
    except WireError as exc:
        raise ConfigError(f"cannot read {exc}", "check that it is a valid .npy/PNG/TIFF/JPEG file") from None
    color = "gray" if image.ndim == 2 else ("bgr" if image_path.suffix.lower() != fmt.ARRAY_SUFFIX else "rgb")
    header = fmt.header_path(image_path)
    if image.ndim == 3 and header.is_file():
        with contextlib.suppress(OSError, ValueError):
            color = str(json.loads(header.read_text()).get("color_order", color))
    return image, check_mask(mask, mask_path, image.shape, image_path), color


__all__ = ["REPRODUCIBLE_SCHEMES", "find_image_mask_pairs", "load_pair", "offline_uri", "read_frames",
           "read_labelled_frames"]
