"""The two types that cross every boundary in medstream: :class:`Frame` and :class:`Overlay`.

A frame is what a source produced (pixels plus when and in what order it was captured); an overlay is
what the pipeline made of exactly one frame. The overlay repeats the frame's ``seq`` and
``t_capture_ns`` so a consumer can always tell which frame a mask belongs to and how old it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def now_ns() -> int:
    """Wall-clock UNIX-epoch nanoseconds: comparable across processes on one host."""
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class ImageGeometry:
    """Where the image's pixels lie in patient space, when the source knows (OpenIGTLink IMAGE messages do).

    ``spacing`` is mm per pixel along (i, j, k) = (column, row, slice); ``ijk_to_ras`` the 4x4 matrix from
    pixel indices to RAS millimetres, row-major. Sinks copy it onto what they send (a label map drawn
    in 3D Slicer lands exactly on its image) and use ``spacing`` for areas in mm^2.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ijk_to_ras: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0),
                                                 (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))


@dataclass(slots=True)
class Frame:
    """One captured image.

    Attributes
    ----------
    seq
        Sequence number given by the source, increasing by one per captured frame. Gaps in it show
        frames lost before medstream saw them.
    t_capture_ns
        UNIX-epoch nanoseconds at capture (wall clock, so other processes can compute age).
    image
        ``uint8`` (or ``uint16``) pixels, ``HxW`` (grey) or ``HxWxC`` (``C`` in 1, 3, 4; colour order
        given by the source, BGR for OpenCV captures).
    source_id
        Names the stream, so several streams can share one socket.
    truth
        Optional ground-truth class map (synthetic sources); the runtime never uses it for inference.
    t_receive_ns
        ``time.perf_counter_ns()`` when this process received the frame; in-process stage timing only.
    """

    seq: int
    t_capture_ns: int
    image: np.ndarray
    source_id: str = "default"
    truth: np.ndarray | None = None
    t_receive_ns: int = 0
    color_order: str = "gray"  # gray | bgr | rgb | bgra | rgba
    geometry: ImageGeometry | None = None  # pixel spacing and placement, when the source knows them


@dataclass(slots=True)
class Contour:
    """One closed outline of a class region, in frame pixel coordinates (x, y)."""

    class_id: int
    points: np.ndarray  # (N, 2) int32


@dataclass(slots=True)
class Heatmap:
    """A coarse map over part of the frame: a classifier's activation map, a keypoint or foreground probability.

    ``data`` is uint8 ``(h, w)``, 0..255 standing for 0..1 (a probability, or an activation scaled to its
    own minimum and maximum: ``kind`` says which); it covers ``roi = (x, y, w, h)`` of the source frame
    (scale it to ``w x h`` and place it at ``(x, y)``). ``class_id`` is the class it shows, -1 for all.
    """

    data: np.ndarray
    roi: tuple[int, int, int, int]
    class_id: int = -1
    kind: str = "probability"  # probability | activation


@dataclass(slots=True)
class Overlay:
    """What the pipeline publishes for one frame.

    ``mask`` is the class map at the model's resolution; ``frame_size`` is the source frame's
    ``(height, width)`` so a consumer can scale it. With a region of interest (config ``source.roi``)
    the mask covers only ``mask_roi = (x, y, w, h)`` of the frame: scale it to ``w x h`` and place it at
    ``(x, y)``; ``None`` means the whole frame. Contours are already in full-frame coordinates.

    Per task (overlay schema 1.1, docs/WIRE.md): ``task`` names it; a classifier fills ``label`` (class id),
    ``probabilities`` (one per class) and ``top_k``; a detector ``boxes`` ``(N, 6)`` float32 rows ``x0, y0, x1,
    y1, class_id, score``; a keypoint model ``points`` ``(N, 4)`` rows ``x, y, class_id, score``; all in
    source-frame pixels. Tasks without a mask carry a 1x1 background ``mask``. ``heatmap`` is optional.
    Every overlay carries ``confidence`` (0..1: the mean probability of what the model answered),
    ``entropy`` (0..1: normalised entropy of its distributions) and ``low_confidence`` (confidence under the
    configured ``model.low_confidence_below``); see :mod:`medstream.runtime.decoders.base`.
    """

    seq: int
    t_capture_ns: int
    source_id: str
    model_id: str
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    mask: np.ndarray
    frame_size: tuple[int, int]
    contours: list[Contour] = field(default_factory=list)
    areas_px: dict[str, int] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    t_publish_ns: int = 0
    rgba: np.ndarray | None = None
    mask_roi: tuple[int, int, int, int] | None = None
    geometry: ImageGeometry | None = None  # the frame's geometry, copied (in-process sinks only; not on the ZeroMQ wire)
    task: str = "segmentation"
    label: int | None = None
    probabilities: np.ndarray | None = None  # (C,) float32, index = class id
    top_k: tuple[tuple[int, float], ...] = ()
    boxes: np.ndarray | None = None  # (N, 6) float32: x0, y0, x1, y1, class_id, score (source-frame pixels)
    points: np.ndarray | None = None  # (N, 4) float32: x, y, class_id, score (source-frame pixels)
    heatmap: Heatmap | None = None
    confidence: float | None = None
    entropy: float | None = None
    low_confidence: bool = False
