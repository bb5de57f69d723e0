"""Drawing overlays onto frames: for the viewer, ``--save`` and the optional RGBA render on the wire."""

from __future__ import annotations

import cv2
import numpy as np

from medstream.runtime.frame import Overlay


def color_lut(colors: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """A 256x3 BGR lookup table from class id to colour (class 0 stays black = untouched)."""
    lut = np.zeros((256, 3), np.uint8)
    for i, (r, g, b) in enumerate(colors[:256]):
        lut[i] = (b, g, r)
    return lut


def rgba_mask(mask: np.ndarray, colors: tuple[tuple[int, int, int], ...], alpha: int = 110) -> np.ndarray:
    """An RGBA image of the class map: class colours, transparent background."""
    lut = np.zeros((256, 4), np.uint8)
    for i, (r, g, b) in enumerate(colors[:256]):
        lut[i] = (r, g, b, alpha if i else 0)
    return lut[mask]


def draw_overlay(frame_bgr: np.ndarray | None, overlay: Overlay, latency_ms: float | None = None,
                 alpha: float = 0.45) -> np.ndarray:
    """Blend the overlay's mask and contours onto ``frame_bgr`` and print seq and latency on it.

    With no frame (the viewer only receives overlays), the mask is drawn on black at frame size.
    """
    fh, fw = overlay.frame_size
    if frame_bgr is None:
        canvas = np.zeros((fh, fw, 3), np.uint8)
    elif frame_bgr.ndim == 2:
        canvas = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    else:
        canvas = frame_bgr[:, :, :3].copy()
    lut = color_lut(overlay.class_colors)
    if canvas.shape[:2] != (fh, fw):  # a frame of another size than the overlay's: draw in overlay space
        canvas = cv2.resize(canvas, (fw, fh))
    x, y, w, h = overlay.mask_roi if overlay.mask_roi is not None else (0, 0, fw, fh)
    colored = lut[cv2.resize(overlay.mask, (w, h), interpolation=cv2.INTER_NEAREST)]
    fg = colored.any(axis=2)
    region = canvas[y:y + h, x:x + w]
    region[fg] = (region[fg] * (1 - alpha) + colored[fg] * alpha).astype(np.uint8)
    for c in overlay.contours:
        color = tuple(int(v) for v in lut[c.class_id])
        cv2.polylines(canvas, [c.points.reshape(-1, 1, 2)], True, color, 1, cv2.LINE_AA)
    text = f"seq {overlay.seq}"
    if latency_ms is not None:
        text += f"  age {latency_ms:.1f} ms"
    cv2.putText(canvas, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
