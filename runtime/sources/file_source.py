"""``file://PATH`` (or a bare path): replay a video file or a folder of images / ``.npy`` frames.

What PATH may be:

* a video file OpenCV's FFmpeg backend decodes (``.mp4``, ``.avi``, ``.mkv``...): frames are BGR;
* a folder: its ``.png .jpg .jpeg .bmp .tif .tiff`` images, ``.npy`` arrays (``uint8``/``uint16``,
  ``HxW`` or ``HxWxC``) and ``.npz`` image+mask pairs, in name order; truth masks (``NAME_mask.png``,
  ``NNNNNNNN.truth.npy``...) are not frames: they ride along as ``Frame.truth``; other files (README,
  ``.json`` sidecars) are skipped. The layouts (including ``images/`` + ``masks/``) and every file
  name rule are defined once, in :mod:`medstream.runtime.sources.folder_format`;
* a single image or ``.npy`` file (a one-frame clip, handy with ``loop=1``).

Folders written by ``medstream record`` hold ``NNNNNNNN.npy`` frames, each with an optional
``NNNNNNNN.json`` header (``seq``, ``t_capture_ns``, ``source_id``, ``color_order`` of the original
frame). The header's ``color_order`` and ``source_id`` are used, checked by the wire format's own rules
(:mod:`medstream.runtime.wire`), so a replayed frame can always be re-published; ``seq`` is the replay
index and ``t_capture_ns`` the replay time, so ages and latencies are measured against now.

Truth masks are read leniently by default (a broken mask costs only the frame's truth, never the
frame: the runtime does not need it). :func:`medstream.runtime.sources.read_labelled_frames` opens
the source with ``strict_truth=True``, which lists only frames that have a mask and refuses a broken
or mis-sized one with a :class:`~medstream.runtime.errors.ConfigError` naming the file.

Query parameters (need the ``file://`` form; a bare path takes none):

``fps``
    Replay rate: the video's own rate, 30 for folders; ``0`` means as fast as the consumer reads.
``loop=1``
    Start again at the end instead of ending (``seq`` keeps counting up).
``color``
    Colour order of 3/4-channel ``.npy`` frames without a ``.json`` header (default ``bgr``).
``id``
    Source id (default: the file or folder name).

Images are read as stored: a single-channel file arrives 2-D with ``color_order="gray"``, a 3-channel
one as OpenCV's ``bgr`` even when its three channels are equal (a grey screen saved as RGB). That is
still the truth about the array, and the preprocessor's grey conversion of it is lossless.

A file that cannot be decoded raises :class:`~medstream.runtime.wire.WireError` (reason
``decode_failed``) for that frame only; the next read moves on to the next file.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import cv2
import numpy as np

from medstream.runtime.errors import ConfigError, SourceEnded, SourceError
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.sources import folder_format as fmt
from medstream.runtime.sources.base import Source, SourceURI
from medstream.runtime.sources.folder_format import ARRAY_SUFFIX, IMAGE_SUFFIXES

# The wire format owns the colour orders and the source-id rule (a replayed frame must be publishable).
from medstream.runtime.wire import COLOR_ORDERS, WireError
from medstream.runtime.wire import source_id_of as wire_source_id

log = logging.getLogger("medstream.sources")

_ACCEPTED = ("a video file (.mp4, .avi, .mkv...), a folder of .png/.jpg/.bmp/.tif images and/or .npy "
             "frames (e.g. one written by `medstream record`), or a single image/.npy file")
_DEFAULT_FOLDER_FPS = 30.0


def _path_of(uri: SourceURI) -> Path:
    """``file:///abs/p`` -> ``/abs/p``; ``file://rel/p`` -> ``rel/p``; a bare path as given."""
    raw = uri.path if "://" not in uri.raw else unquote(f"{uri.netloc}{uri.path}")
    return Path(raw).expanduser()


def _default_id(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.:\-]", "_", path.stem or path.name or "file")[:64]
    return name or "file"


def _color_for(image: np.ndarray, declared: str | None) -> str:
    if image.ndim == 2 or image.shape[2] == 1:
        return "gray"
    if declared is not None:
        return declared
    return "bgr" if image.shape[2] == 3 else "bgra"


def _check_pixels(image: np.ndarray, name: str) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise WireError("decode_failed", f"{name}: pixels are {image.dtype}, only uint8 and uint16 are accepted")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))) or 0 in image.shape:
        raise WireError("decode_failed", f"{name}: shape {image.shape} is not HxW or HxWxC with C in 1, 3, 4")


def read_array(path: Path) -> np.ndarray:
    """The array in a ``.npy`` file or the pixels of an image file, as stored (no colour conversion).

    Raises :class:`WireError` (``decode_failed``) naming the file when it cannot be read.
    """
    if path.suffix.lower() == ARRAY_SUFFIX:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise WireError("decode_failed", f"{path}: not a readable .npy array ({exc})") from None
        if not isinstance(array, np.ndarray):
            raise WireError("decode_failed", f"{path}: holds no single array")
        return array
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise WireError("decode_failed", f"{path}: cannot read ({exc})") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as exc:  # e.g. a header claiming 100000x100000 pixels (OpenCV's CV_IO_MAX_IMAGE_PIXELS)
        detail = str(exc).strip().splitlines()[-1][:200]
        reason = "too_large" if "MAX_IMAGE_PIXELS" in detail else "decode_failed"
        raise WireError(reason, f"{path}: OpenCV refuses to decode this image ({detail})") from None
    if image is None:
        raise WireError("decode_failed", f"{path}: OpenCV cannot decode this image (corrupt or truncated?)")
    return image


def read_archive(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image, mask or None)`` from an ``.npz`` pair; :class:`WireError` when it holds no ``image`` array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if fmt.ARCHIVE_IMAGE_KEY not in data:
                raise WireError("decode_failed", f"{path} lacks an 'image' array (it has {sorted(data.files)}); "
                                "save frames with np.savez(path, image=..., mask=...)")
            key = next((k for k in fmt.ARCHIVE_MASK_KEYS if k in data), None)
            return data[fmt.ARCHIVE_IMAGE_KEY], (data[key] if key is not None else None)
    except WireError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise WireError("decode_failed", f"{path}: not a readable .npz archive ({exc})") from None


def check_mask(mask: np.ndarray, mask_path: Path, frame_shape: tuple[int, ...], frame_path: Path) -> np.ndarray:
    """A truth mask as a ``uint8`` ``HxW`` class map of the frame's size, or a :class:`ConfigError` saying why not."""
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    problem = fmt.mask_problem(mask)  # 0/255 pictures and RGB masks: named, with the conversion
    if problem is not None:
        raise ConfigError(f"truth mask {mask_path} (of frame {frame_path.name}) {problem[0]}", problem[1])
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ConfigError(f"truth mask {mask_path} must be a 2-D integer class map, got {mask.dtype} {mask.shape}",
                          "store masks as HxW uint8 arrays of class ids (0 = background)")
    if mask.shape != tuple(frame_shape[:2]):
        raise ConfigError(f"truth mask {mask_path} is {mask.shape}, its frame {frame_path} is {tuple(frame_shape[:2])}",
                          "masks must have the frame's height and width")
    return mask.astype(np.uint8, copy=False)


class FileSource(Source):
    """Replays a video file or a folder of frames at a steady, real-time rate."""

    finite = True

    def __init__(self, uri: SourceURI, source_id: str | None = None, *, strict_truth: bool = False) -> None:
        self.path = _path_of(uri)
        self._explicit_id = source_id or uri.params.get("id")
        super().__init__(uri, self._explicit_id or _default_id(self.path))
        if not str(self.path) or not self.path.exists():
            raise ConfigError(f"source file or folder {str(self.path)!r} does not exist (from {uri.raw!r})",
                              f"give {_ACCEPTED}")
        self.loop = uri.param("loop", False, bool)
        self.finite = not self.loop
        self.npy_color = uri.param("color", "bgr", str).lower()
        if self.npy_color not in COLOR_ORDERS[1:]:
            raise ConfigError(f"source {uri.raw!r}: color={self.npy_color!r} is not one of {COLOR_ORDERS[1:]}",
                              "fix 'color=' in the source URI")
        self.strict_truth = strict_truth
        self.items: list[Path] = []
        #: frame file -> its truth mask file (folder_format's pairing rules)
        self.masks: dict[Path, Path] = {}
        if self.path.is_dir():
            self.mode = "folder"
            # Truth masks (NNNNNNNN.truth.npy, NAME_mask.png, masks/NAME.png) are not frames: they
            # ride along with their frame as Frame.truth.
            listed = fmt.list_folder(self.path)
            if strict_truth:
                listed = [item for item in listed if item.mask is not None]
                if not listed:
                    raise ConfigError(f"no frame/mask pairs found in {self.path}", f"use {fmt.LABELLED_LAYOUTS}")
            self.items = [item.image for item in listed]
            self.masks = {item.image: item.mask for item in listed if item.mask is not None}
            if not self.items:
                raise ConfigError(f"folder {str(self.path)!r} holds no .png/.jpg/.bmp/.tif images or .npy frames",
                                  f"give {_ACCEPTED}")
        elif self.path.suffix.lower() in (*fmt.FRAME_SUFFIXES, fmt.ARCHIVE_SUFFIX) and not fmt.is_mask_file(self.path):
            self.mode = "folder"
            self.items = [self.path]
            self.masks = {item.image: item.mask for item in fmt.list_folder(self.path.parent)
                          if item.image == self.path and item.mask is not None}
        else:
            self.mode = "video"
        self._fps_param = uri.param("fps", None, float)
        if self._fps_param is not None and (self._fps_param < 0 or not math.isfinite(self._fps_param)):
            raise ConfigError(f"source {uri.raw!r}: fps must be >= 0", "use fps=0 for as fast as possible")
        self.fps = self._fps_param if self._fps_param is not None else _DEFAULT_FOLDER_FPS
        self._cap: cv2.VideoCapture | None = None
        self._index = 0  # frames (or decode failures) delivered since open: the replay seq
        self._pos = 0  # next item in the folder
        self._pass_frames = 0  # video frames read since the last (re)open of the file
        self._t0 = 0.0

    # ------------------------------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        self._index = 0
        self._pos = 0
        if self.mode == "video":
            self._open_video()
            if self._fps_param is None:
                native = self._cap.get(cv2.CAP_PROP_FPS)
                self.fps = native if math.isfinite(native) and 0 < native <= 1000 else _DEFAULT_FOLDER_FPS
        self._t0 = time.perf_counter()

    def preflight(self) -> None:
        """Before anything is bound: a video must open and decode its first frame (a zero-byte or random-bytes
        file is refused here with the file named, not after the publisher is up)."""
        if self.mode != "video":
            return
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        try:
            ok = cap.isOpened() and cap.read()[0]
        except cv2.error:
            ok = False
        finally:
            cap.release()
        if not ok:
            size = self.path.stat().st_size if self.path.exists() else 0
            raise ConfigError(f"{str(self.path)!r} is not a video OpenCV (FFmpeg) can decode "
                              f"({size} bytes{'; the file is empty' if size == 0 else ''})",
                              f"check the file is a complete video (copy it again), or give {_ACCEPTED}")

    def _open_video(self) -> None:
        if self._cap is not None:
            self._cap.release()
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise ConfigError(f"OpenCV (FFmpeg) cannot open {str(self.path)!r} as a video",
                              f"check the file is a complete video, or give {_ACCEPTED}")
        self._cap = cap
        self._pass_frames = 0

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    # ----------------------------------------------------------------------------------------- read
    def read(self, timeout: float) -> Frame | None:
        """The next frame when it is due within ``timeout`` seconds, else ``None``.

        Raises
        ------
        SourceEnded
            The end of the file or folder was reached and ``loop`` is off.
        WireError
            This frame's file could not be decoded (reason ``decode_failed``); the next read moves on.
        """
        if self._t0 == 0.0 or not self.is_open:
            raise SourceError(f"source {self.uri.raw!r} is not open", "call open() first")
        if self.mode == "folder" and not self.loop and self._pos >= len(self.items):
            raise SourceEnded(f"{self.uri.raw}: all {len(self.items)} files replayed")
        if self.fps > 0:
            wait = self._t0 + self._index / self.fps - time.perf_counter()
            if wait > timeout:
                time.sleep(max(timeout, 0.0))
                return None
            if wait > 0:
                time.sleep(wait)
        seq = self._index
        if self.mode == "video":
            image, color, sid = self._next_video_frame(), "bgr", None
            self._index += 1
        else:
            item = self.items[self._pos % len(self.items)]
            self._pos = (self._pos + 1) % len(self.items) if self.loop else self._pos + 1
            self._index += 1  # a file that fails to decode still uses its time slot and its seq
            image, color, sid, truth = self._load(item)
        if self.mode == "video":
            truth = None
        return Frame(seq=seq, t_capture_ns=now_ns(), image=image, source_id=self._explicit_id or sid or self.source_id,
                     color_order=_color_for(image, color), t_receive_ns=time.perf_counter_ns(), truth=truth)

    def _truth(self, item: Path, frame_shape: tuple[int, ...], mask: np.ndarray | None = None) -> np.ndarray | None:
        """The ground-truth mask paired with a frame file (see folder_format), if any.

        ``mask`` is given for an ``.npz`` (its own ``mask`` array). Lenient by default: a broken mask
        must not cost the frame (the runtime never needs it), so it is logged and left out. With
        ``strict_truth`` it is a :class:`ConfigError` naming the file.
        """
        mask_path = item if item.suffix.lower() == fmt.ARCHIVE_SUFFIX else self.masks.get(item)
        if mask_path is None:
            return None
        try:
            if mask is None and mask_path == item:
                raise ConfigError(f"{item} lacks a 'mask' array", "save frames with np.savez(path, image=..., mask=...)")
            if mask is None:
                try:
                    mask = read_array(mask_path)
                except WireError as exc:
                    raise ConfigError(f"cannot read truth mask {mask_path} ({exc})",
                                      "check that it is a valid .npy/PNG/TIFF class map") from None
            return check_mask(mask, mask_path, frame_shape, item)
        except ConfigError as exc:
            if self.strict_truth:
                raise
            log.warning("frame %s replayed without its truth: %s", item.name, exc)
            return None

    def _next_video_frame(self) -> np.ndarray:
        assert self._cap is not None
        ok, image = self._cap.read()
        if not ok and self.loop and self._pass_frames > 0:
            self._open_video()
            ok, image = self._cap.read()
        if not ok or image is None:
            if self._index == 0 and self._pass_frames == 0:
                raise SourceEnded(f"{self.uri.raw}: OpenCV opened the video but decoded no frame from it")
            raise SourceEnded(f"{self.uri.raw}: end of video after {self._index} frames")
        self._pass_frames += 1
        return image

    def _load(self, item: Path) -> tuple[np.ndarray, str, str | None, np.ndarray | None]:
        """Pixels, colour order, (from a ``.json`` header) source id and truth mask of one folder item."""
        suffix = item.suffix.lower()
        if suffix == fmt.ARCHIVE_SUFFIX:
            image, mask = read_archive(item)
            _check_pixels(image, str(item))
            color = "rgb" if image.ndim == 3 and image.shape[2] == 3 else None  # numpy arrays: RGB by convention
            return image, _color_for(image, color), None, self._truth(item, image.shape, mask)
        image = read_array(item)
        _check_pixels(image, str(item))
        if suffix == ARRAY_SUFFIX:
            color, sid = self._sidecar(item)
            return image, _color_for(image, color or self.npy_color), sid, self._truth(item, image.shape)
        return image, _color_for(image, None), None, self._truth(item, image.shape)

    def _sidecar(self, item: Path) -> tuple[str | None, str | None]:
        """``color_order`` and ``source_id`` from a ``medstream record`` header next to ``item``."""
        header_path = fmt.header_path(item)
        if not header_path.is_file():
            return None, None
        try:
            header = json.loads(header_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WireError("bad_header", f"{header_path}: not a readable JSON header ({exc})") from None
        if not isinstance(header, dict):
            raise WireError("bad_header", f"{header_path}: must hold a JSON object")
        color = header.get("color_order")
        if color is not None and color not in COLOR_ORDERS:
            raise WireError("bad_field", f"{header_path}: color_order {color!r:.20} is not one of {COLOR_ORDERS}")
        sid = header.get("source_id")
        if sid is not None:
            try:
                wire_source_id(header)
            except WireError as exc:
                raise WireError(exc.reason, f"{header_path}: {exc}") from None
        return color, sid

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {**super().describe(), "path": str(self.path), "mode": self.mode,
                                "fps": self.fps, "loop": self.loop, "position": self._index}
        if self.mode == "folder":
            info["files"] = len(self.items)
        elif self._cap is not None:
            info["video_frames"] = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return info


__all__ = ["ARRAY_SUFFIX", "IMAGE_SUFFIXES", "FileSource", "check_mask", "read_archive", "read_array"]
