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
    """Draw the overlay onto ``frame_bgr``: mask and contours, heatmap, boxes, points, the classifier's label,
    seq and latency, and a red LOW CONFIDENCE banner when the overlay is flagged.

    With no frame (the viewer only receives overlays), it is drawn on black at frame size.
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
    if overlay.heatmap is not None:
        _draw_heatmap(canvas, overlay)
    x, y, w, h = overlay.mask_roi if overlay.mask_roi is not None else (0, 0, fw, fh)
    if overlay.mask.any():
        colored = lut[cv2.resize(overlay.mask, (w, h), interpolation=cv2.INTER_NEAREST)]
        fg = colored.any(axis=2)
        region = canvas[y:y + h, x:x + w]
        region[fg] = (region[fg] * (1 - alpha) + colored[fg] * alpha).astype(np.uint8)
    for c in overlay.contours:
        color = tuple(int(v) for v in lut[c.class_id])
        cv2.polylines(canvas, [c.points.reshape(-1, 1, 2)], True, color, 1, cv2.LINE_AA)
    if overlay.boxes is not None:
        _draw_boxes(canvas, overlay, lut)
    if overlay.points is not None:
        _draw_points(canvas, overlay, lut)
    text = f"seq {overlay.seq}"
    if latency_ms is not None:
        text += f"  age {latency_ms:.1f} ms"
    _text(canvas, text, (6, 16))
    if overlay.label is not None:
        name = overlay.class_names[overlay.label] if overlay.label < len(overlay.class_names) else str(overlay.label)
        score = float(overlay.probabilities[overlay.label]) if overlay.probabilities is not None else None
        _text(canvas, f"{name}" + (f" {score:.2f}" if score is not None else ""), (6, 40), scale=0.6)
    if overlay.low_confidence:
        _low_confidence_banner(canvas, overlay)
    return canvas


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45,
          color: tuple[int, int, int] = (255, 255, 255)) -> None:
    """Text with a dark outline, readable on any image."""
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def _draw_heatmap(canvas: np.ndarray, overlay: Overlay, alpha: float = 0.4) -> None:
    hm = overlay.heatmap
    assert hm is not None
    x, y, w, h = hm.roi
    color = cv2.applyColorMap(cv2.resize(hm.data, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
    region = canvas[y:y + h, x:x + w]
    cv2.addWeighted(color, alpha, region, 1 - alpha, 0, dst=region)


def _draw_boxes(canvas: np.ndarray, overlay: Overlay, lut: np.ndarray) -> None:
    assert overlay.boxes is not None
    for x0, y0, x1, y1, cls, score in overlay.boxes:
        c = int(cls)
        color = tuple(int(v) for v in lut[c]) if lut[c].any() else (0, 255, 255)
        cv2.rectangle(canvas, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), color, 2,
                      cv2.LINE_AA)
        name = overlay.class_names[c] if c < len(overlay.class_names) else str(c)
        _text(canvas, f"{name} {score:.2f}", (int(round(x0)) + 2, max(12, int(round(y0)) - 4)), 0.4, color)


def _draw_points(canvas: np.ndarray, overlay: Overlay, lut: np.ndarray) -> None:
    assert overlay.points is not None
    for px, py, cls, score in overlay.points:
        c = int(cls)
        color = tuple(int(v) for v in lut[c]) if lut[c].any() else (0, 255, 255)
        center = (int(round(px)), int(round(py)))
        cv2.drawMarker(canvas, center, color, cv2.MARKER_CROSS, 14, 2, cv2.LINE_AA)
        name = overlay.class_names[c] if c < len(overlay.class_names) else str(c)
        _text(canvas, f"{name} {score:.2f}", (center[0] + 8, center[1] - 6), 0.4, color)


def _low_confidence_banner(canvas: np.ndarray, overlay: Overlay) -> None:
    """A red band along the bottom: the model is unsure of this frame (confidence under the configured floor)."""
    h, w = canvas.shape[:2]
    band = max(18, h // 14)
    cv2.rectangle(canvas, (0, h - band), (w - 1, h - 1), (0, 0, 200), -1)
    conf = f" {overlay.confidence:.2f}" if overlay.confidence is not None else ""
    cv2.putText(canvas, f"LOW CONFIDENCE{conf}", (6, h - band // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                min(0.6, band / 30), (255, 255, 255), 1, cv2.LINE_AA)
