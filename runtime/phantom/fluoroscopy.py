"""Synthetic pulsed X-ray fluoroscopy stream with guidewire/catheter ground truth.

The image is formed the way a fluoroscope forms it: a map of line integrals of the
attenuation coefficient (soft tissue, air-filled lungs, ribs, spine, the device) goes
through Beer-Lambert, ``I = I0 * exp(-sum(mu * t))``, photon (quantum) noise is added at a
chosen dose, and the detector signal is log-mapped to grey levels inside a circular
collimator. Dense structures therefore come out dark on a bright background, and lowering
the dose makes the image grainier, as on a real C-arm.

Anatomy is laid out once from ``seed``. Per frame, the breathing-coupled anatomy is
shifted, the device curve is re-evaluated (breathing, heartbeat, slow advance) and noise
is seeded from ``(seed, index)``, so any frame can be rendered on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._geometry import (
    HEART_RATE_HZ,
    SmoothSignal,
    check_index,
    check_seed,
    check_size,
    clip_to_uint8,
    frame_rng,
    heartbeat,
    odd_kernel,
    smooth_noise,
    to_fixed,
)
from .ultrasound import _check_out

ALLOWED_FPS = (7.5, 15.0, 30.0)
"""Pulse rates of pulsed fluoroscopy (pulses per second) offered by typical C-arms."""
PHOTONS_AT_UNIT_DOSE = 1500.0
"""Mean detected quanta per pixel behind no attenuation at ``dose=1``."""
_SHIFT = 4
_SAMPLES_PER_SEGMENT = 24


@dataclass(frozen=True)
class _Device:
    """Guidewire or catheter: rest-shape control points (pixels) and motion parameters."""

    kind: str
    points: np.ndarray  # (n, 2) control points at rest, pixels, entry first
    width: int
    density: float  # line integral added where the device is, in mu*t units
    tip_density: float
    tip_fraction: float  # distal fraction of the drawn length that is denser
    min_visible: float  # visible fraction of the full length at maximal retraction
    advance_period_s: float
    advance_phase: float
    wiggle: tuple[tuple[SmoothSignal, SmoothSignal], ...]  # per control point, pixels
    breath_coupling: float
    heart_dir: tuple[float, float]
    heart_amp: float  # pixels


def catmull_rom(points: np.ndarray, samples: int) -> np.ndarray:
    """Sample a uniform Catmull-Rom spline through ``points`` (n, 2); returns (m, 2).

    The curve passes through every control point and is C1-smooth, which is how a
    flexible wire bends; end points are duplicated so the curve starts and ends on them.
    """
    p = np.concatenate([points[:1], points, points[-1:]], axis=0)
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    segs = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        segs.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (3 * p1 - p0 - 3 * p2 + p3) * t3
            )
        )
    segs.append(points[-1:])
    return np.concatenate(segs, axis=0)


def cut_by_length(curve: np.ndarray, fraction: float) -> np.ndarray:
    """The initial part of a polyline ``curve`` holding ``fraction`` of its arc length."""
    seg = np.hypot(*np.diff(curve, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    target = cum[-1] * float(np.clip(fraction, 0.0, 1.0))
    k = int(np.searchsorted(cum, target, side="right"))
    if k >= len(curve):
        return curve
    a = (target - cum[k - 1]) / max(seg[k - 1], 1e-9)
    tip = curve[k - 1] + a * (curve[k] - curve[k - 1])
    return np.concatenate([curve[:k], tip[None]], axis=0)


class FluoroscopyPhantom:
    """Deterministic synthetic fluoroscopy stream: ``render(index) -> (image, mask)``.

    Parameters
    ----------
    height, width:
        Frame size in pixels (any size >= 32).
    seed:
        Scene seed: anatomy, device shape and type, collimator, display settings and
        motion. Per-frame quantum noise is seeded from ``(seed, index)``.
    fps:
        Pulse rate; must be one of ``ALLOWED_FPS`` (7.5, 15 or 30), the rates pulsed
        fluoroscopy runs at. Frame ``index`` shows time ``index / fps`` seconds.
    dose:
        Relative dose per pulse (1.0 = typical). Photon counts scale with it, so lower
        dose means more quantum noise; anatomy and masks do not change.

    Notes
    -----
    Mask classes: 0 background (and everything outside the collimator), 1 device (wire or
    catheter) pixels, from the same drawing call that puts the device in the image.
    """

    CLASSES = ("background", "wire")
    COLORS = ((0, 0, 0), (255, 200, 0))

    def __init__(
        self,
        height: int = 256,
        width: int = 256,
        seed: int = 0,
        fps: float = 15.0,
        dose: float = 1.0,
    ) -> None:
        self.height, self.width = check_size(height, width)
        self.seed = check_seed(seed)
        self.fps = _check_fps(fps)
        self.dose = float(dose)
        if not self.dose > 0:
            raise ValueError(f"dose must be positive, got {dose}")
        rng = np.random.default_rng(self.seed)
        self._scale = min(self.height, self.width) / 256.0
        self._unit = min(self.height, self.width) / 2.0  # pixels per normalised unit
        self._breath_amp = float(rng.uniform(0.04, 0.08) * self.height)
        self._breath_rate = float(rng.uniform(0.2, 0.3))
        self._breath_phase = float(rng.uniform(0.0, 2.0 * np.pi))
        self._heart_rate = float(rng.uniform(*HEART_RATE_HZ))
        self._heart_phase = float(rng.uniform(0.0, 2.0 * np.pi))
        self._pad = int(np.ceil(self._breath_amp)) + 2
        self._static = self._static_anatomy(rng)
        self._moving = self._moving_anatomy(rng)
        self._device = self._layout_device(rng)
        self._init_detector(rng)
        self._mu = np.empty((self.height, self.width), np.float32)
        self._wire = np.empty_like(self._mu)
        self._psf_k = odd_kernel(0.6 * self._scale)

    # ------------------------------------------------------------------ layout (init)

    def _norm_grid(self, height: int, y_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Normalised coordinates: origin at the image centre, 1 unit = half the short side."""
        ys, xs = np.mgrid[0:height, 0 : self.width].astype(np.float32)
        x = (xs - (self.width - 1) / 2.0) / self._unit
        y = (ys - y_offset - (self.height - 1) / 2.0) / self._unit
        return x, y

    def _static_anatomy(self, rng: np.random.Generator) -> np.ndarray:
        """Line integrals that do not move with breathing: body soft tissue and the spine."""
        x, y = self._norm_grid(self.height)
        half_width = rng.uniform(0.9, 1.5)
        thickness = rng.uniform(1.4, 2.4)
        mu = thickness * np.sqrt(np.clip(1.0 - (x / half_width) ** 2, 0.0, None))
        mu += 0.12 * smooth_noise(rng, x.shape, (5, 5))
        mu += self._spine(rng)
        return mu.astype(np.float32)

    def _spine(self, rng: np.random.Generator) -> np.ndarray:
        """Vertebral column: stacked boxy bodies with denser cortex, pedicles and discs.

        Also records the column's centre line (``self._spine_x``) so ribs attach to it.
        """
        h, w, u = self.height, self.width, self._unit
        layer = np.zeros((h, w), np.float32)
        cx = w / 2.0 + rng.uniform(-0.2, 0.2) * u
        tilt = rng.uniform(-0.12, 0.12)
        self._spine_x = (cx, tilt)
        half_w = rng.uniform(0.15, 0.22) * u
        pitch = rng.uniform(0.24, 0.32) * u
        gap = pitch * rng.uniform(0.18, 0.26)
        density = rng.uniform(0.15, 0.3)
        cortex = max(1, int(round(1.5 * self._scale)))
        y = -rng.uniform(0.0, pitch)
        while y < h + pitch:
            yc = y + (pitch - gap) / 2.0
            xc = cx + tilt * (yc - h / 2.0)
            half_h = (pitch - gap) / 2.0
            box = np.array([(xc - half_w, yc - half_h), (xc + half_w, yc + half_h)])
            (x0, y0), (x1, y1) = to_fixed(box, _SHIFT)
            cv2.rectangle(layer, (x0, y0), (x1, y1), float(density), -1, cv2.LINE_AA, _SHIFT)
            cv2.rectangle(layer, (x0, y0), (x1, y1), float(density * 1.6), cortex, cv2.LINE_AA, _SHIFT)
            for side in (-1, 1):  # pedicles: small dense rings ("eyes" of the vertebra)
                cv2.ellipse(
                    layer,
                    (int(xc + side * half_w * 0.65), int(yc - half_h * 0.35)),
                    (max(1, int(half_w * 0.18)), max(1, int(half_h * 0.35))),
                    0,
                    0,
                    360,
                    float(density * 0.8),
                    cortex,
                    cv2.LINE_AA,
                )
            cv2.ellipse(
                layer,
                (int(xc), int(yc + half_h * 0.4)),  # spinous process
                (max(1, int(half_w * 0.12)), max(1, int(half_h * 0.45))),
                0,
                0,
                360,
                float(density * 0.6),
                -1,
                cv2.LINE_AA,
            )
            y += pitch
        sigma = 1.5 * self._scale
        layer = cv2.GaussianBlur(layer, (odd_kernel(sigma),) * 2, sigma)
        # Mediastinum / paraspinal soft tissue: a broad denser band along the column.
        xs = np.arange(w, dtype=np.float32)[None, :]
        ys = np.arange(h, dtype=np.float32)[:, None]
        band = np.exp(-(((xs - cx - tilt * (ys - h / 2.0)) / (rng.uniform(1.6, 2.6) * half_w)) ** 2))
        return layer + rng.uniform(0.2, 0.4) * band.astype(np.float32)

    def _moving_anatomy(self, rng: np.random.Generator) -> np.ndarray:
        """Breathing-coupled line integrals (lungs, diaphragm, heart, ribs, bowel gas).

        Built on a canvas ``2 * pad`` rows taller than the image so each frame can take a
        vertically shifted window as the chest moves with respiration.
        """
        h, w, u, pad = self.height, self.width, self._unit, self._pad
        x, y = self._norm_grid(h + 2 * pad, y_offset=pad)
        mu = np.zeros(x.shape, np.float32)
        diaphragm = rng.uniform(-0.7, 0.7)  # where the lungs end; low values -> abdomen view
        dome = diaphragm + 0.25 * (x / 0.6) ** 2
        above = 1.0 / (1.0 + np.exp((y - dome) / 0.04))
        lung_x = rng.uniform(0.35, 0.6)
        air = rng.uniform(0.6, 1.1)
        lungs = np.exp(-(((np.abs(x) - lung_x) / rng.uniform(0.25, 0.4)) ** 2)) * above
        mu -= air * lungs.astype(np.float32)
        mu += (1.0 - above) * rng.uniform(0.15, 0.35)  # liver / abdominal organs
        heart = np.exp(
            -(
                ((x + rng.uniform(0.0, 0.25)) / rng.uniform(0.28, 0.38)) ** 2
                + ((y - diaphragm + 0.2) / 0.3) ** 2
            )
        )
        mu += rng.uniform(0.4, 0.8) * heart.astype(np.float32) * air
        mu += self._ribs(rng, x.shape, diaphragm) * 1.0
        mu -= self._gas(rng, x.shape, diaphragm)
        del h, w, u, pad
        return mu.astype(np.float32)

    def _ribs(self, rng: np.random.Generator, shape: tuple[int, int], diaphragm: float) -> np.ndarray:
        """Curved rib bands on both sides, denser at their cortical edges."""
        layer = np.zeros(shape, np.float32)
        u, cy0 = self._unit, shape[0] / 2.0
        spine_cx, tilt = self._spine_x
        spacing = rng.uniform(0.22, 0.32)
        thick = max(3, int(rng.uniform(0.05, 0.08) * u))
        density = rng.uniform(0.12, 0.25)
        droop = rng.uniform(0.3, 0.6)
        s = np.linspace(0.0, 1.0, 24)
        for y0 in np.arange(-1.4 + rng.uniform(0, spacing), diaphragm + 0.3, spacing):
            for side in (-1.0, 1.0):
                xs = side * (0.1 + 1.1 * s)
                ys = y0 - 0.3 * np.sin(np.pi * s * 0.7) + droop * s**2
                cx0 = spine_cx + tilt * y0 * u
                pts = to_fixed(np.stack([cx0 + xs * u, cy0 + ys * u], axis=1), _SHIFT)
                cv2.polylines(layer, [pts], False, float(density), thick, cv2.LINE_AA, _SHIFT)
                cv2.polylines(
                    layer, [pts], False, float(density * 0.45), max(1, thick - 4), cv2.LINE_AA, _SHIFT
                )
        sigma = 1.0 * self._scale
        return cv2.GaussianBlur(layer, (odd_kernel(sigma),) * 2, sigma)

    def _gas(self, rng: np.random.Generator, shape: tuple[int, int], diaphragm: float) -> np.ndarray:
        """Bowel-gas pockets below the diaphragm: bright, irregular, a common distractor."""
        layer = np.zeros(shape, np.float32)
        u, cx0, cy0 = self._unit, self.width / 2.0, shape[0] / 2.0
        for _ in range(int(rng.integers(0, 6))):
            gx, gy = rng.uniform(-0.9, 0.9), rng.uniform(diaphragm + 0.2, 1.2)
            for _bubble in range(int(rng.integers(2, 6))):  # irregular clusters of small bubbles
                bx, by = gx + rng.normal(0, 0.05), gy + rng.normal(0, 0.04)
                axes = (max(2, int(rng.uniform(0.02, 0.07) * u)), max(2, int(rng.uniform(0.015, 0.05) * u)))
                cv2.ellipse(
                    layer,
                    (int(cx0 + bx * u), int(cy0 + by * u)),
                    axes,
                    rng.uniform(0, 180),
                    0,
                    360,
                    float(rng.uniform(0.1, 0.3)),
                    -1,
                    cv2.LINE_AA,
                )
        sigma = 3.0 * self._scale
        return cv2.GaussianBlur(layer, (odd_kernel(sigma),) * 2, sigma)

    def _layout_device(self, rng: np.random.Generator) -> _Device:
        """Random-walk control points from an image edge inwards, plus device properties."""
        kind = "guidewire" if rng.random() < 0.5 else "catheter"
        n_points = int(rng.integers(4, 7))
        points = self._random_walk(rng, n_points)
        s = self._scale
        if kind == "guidewire":
            width, density, tip = max(2, round(3 * s)), rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.6)
        else:
            width, density, tip = (
                max(2, round(rng.uniform(3.5, 4.5) * s)),
                rng.uniform(0.35, 0.6),
                rng.uniform(0.4, 0.8),
            )
        wiggle_amp = 0.02 * self._unit
        wiggle = tuple(
            (
                SmoothSignal.random(rng, wiggle_amp, (0.1, 0.5), 2),
                SmoothSignal.random(rng, wiggle_amp, (0.1, 0.5), 2),
            )
            for _ in range(n_points)
        )
        angle = rng.uniform(0, 2 * np.pi)
        return _Device(
            kind=kind,
            points=points,
            width=int(width),
            density=float(density),
            tip_density=float(tip),
            tip_fraction=float(rng.uniform(0.04, 0.1)),
            min_visible=float(rng.uniform(0.55, 0.8)),
            advance_period_s=float(rng.uniform(20.0, 60.0)),
            advance_phase=float(rng.uniform(0, 2 * np.pi)),
            wiggle=wiggle,
            breath_coupling=float(rng.uniform(0.6, 1.0)),
            heart_dir=(float(np.cos(angle)), float(np.sin(angle))),
            heart_amp=float(rng.uniform(0.01, 0.025) * self._unit),
        )

    def _random_walk(self, rng: np.random.Generator, n_points: int) -> np.ndarray:
        """Control points of a plausible device path, entering from outside the image.

        The walk turns by moderate random angles and steers away from the image border,
        so the curve crosses the field of view instead of hugging an edge.
        """
        u, cx, cy = self._unit, (self.width - 1) / 2.0, (self.height - 1) / 2.0
        edge = rng.choice(["bottom", "bottom", "left", "right", "top"])
        along = rng.uniform(-0.6, 0.6)
        start = {
            "bottom": (along, 1.15),
            "top": (along, -1.15),
            "left": (-1.15, along),
            "right": (1.15, along),
        }[edge]
        heading = np.arctan2(-start[1], -start[0]) + rng.normal(0.0, 0.4)
        pts = [np.array(start)]
        step = rng.uniform(0.3, 0.45)
        for _ in range(n_points - 1):
            for _attempt in range(20):
                h = heading + rng.normal(0.0, 0.6)
                nxt = pts[-1] + step * np.array([np.cos(h), np.sin(h)])
                if np.hypot(*nxt) < 0.8:
                    break
            heading = h
            pts.append(nxt)
        arr = np.array(pts)
        return np.stack([cx + arr[:, 0] * u, cy + arr[:, 1] * u], axis=1).astype(np.float64)

    def _init_detector(self, rng: np.random.Generator) -> None:
        """Source intensity with vignetting, collimator, and per-seed display mapping.

        The log-to-grey mapping is calibrated on the noise-free first frame (percentiles
        inside the collimator), imitating the automatic brightness control of a C-arm.
        """
        h, w, u = self.height, self.width, self._unit
        x, y = self._norm_grid(h)
        vignette = 1.0 - rng.uniform(0.1, 0.3) * (x * x + y * y) / 2.0
        self._i0 = (PHOTONS_AT_UNIT_DOSE * self.dose * vignette).astype(np.float32)
        ccx = (w - 1) / 2.0 + rng.uniform(-0.04, 0.04) * u
        ccy = (h - 1) / 2.0 + rng.uniform(-0.04, 0.04) * u
        radius = rng.uniform(0.9, 1.25) * u
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        dist = np.hypot(xs - ccx, ys - ccy)
        edge = 1.5 * self._scale
        self._coll = np.clip((radius - dist) / edge + 0.5, 0.0, 1.0).astype(np.float32)
        self._coll255 = np.where(self._coll >= 0.5, 255, 0).astype(np.uint8)
        self._dark = float(rng.uniform(4.0, 18.0))
        # Calibrate on the noise-free scene at unit dose: display settings must not depend
        # on dose, otherwise a lower dose would also change brightness, not just noise.
        log_i = np.log(PHOTONS_AT_UNIT_DOSE * vignette) - (
            self._static + self._moving[self._pad : self._pad + h]
        )
        inside = log_i[self._coll >= 0.5]
        lo, hi = np.percentile(inside, [0.5, 99.5])
        grey_lo, grey_hi = rng.uniform(15.0, 45.0), rng.uniform(205.0, 245.0)
        self._gain = float((grey_hi - grey_lo) / max(hi - lo, 1e-3))
        self._offset = float(grey_lo - lo * self._gain)

    # ------------------------------------------------------------------ per frame

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Render frame ``index``.

        Returns
        -------
        image:
            ``uint8`` array ``(height, width)``: bright = little attenuation, dark outside
            the collimator.
        mask:
            ``uint8`` array ``(height, width)``: 1 on device pixels, else 0.
        """
        image = np.empty((self.height, self.width), np.uint8)
        mask = np.empty_like(image)
        self.render_into(index, image, mask)
        return image, mask

    def render_into(self, index: int, image_out: np.ndarray, mask_out: np.ndarray) -> None:
        """Render frame ``index`` into preallocated ``uint8`` (height, width) arrays."""
        index = check_index(index)
        _check_out(image_out, mask_out, self.height, self.width)
        t = index / self.fps
        breath = self._breathing(t)
        shift = np.float32([[1, 0, 0], [0, 1, breath - self._pad]])
        mu = cv2.warpAffine(
            self._moving,
            shift,
            (self.width, self.height),
            dst=self._mu,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        mu += self._static
        self._wire.fill(0.0)
        mask_out.fill(0)
        self._draw_device(t, breath, mask_out)
        mu += self._wire
        cv2.GaussianBlur(mu, (self._psf_k, self._psf_k), 0, dst=mu)  # focal spot + detector blur
        counts = self._detect(mu, index)
        grey = cv2.log(counts)
        grey *= np.float32(self._gain)
        grey += np.float32(self._offset - self._gain * np.log(self.dose))
        grey -= self._dark
        grey *= self._coll
        grey += self._dark
        clip_to_uint8(grey, image_out)
        cv2.bitwise_and(mask_out, self._coll255, dst=mask_out)

    def _breathing(self, t: float) -> float:
        """Vertical displacement (pixels) from respiration: smooth, inspiration lingers less."""
        phase = 2.0 * np.pi * self._breath_rate * t + self._breath_phase
        return float(self._breath_amp * (0.5 - 0.5 * np.cos(phase)) ** 1.5)

    def _detect(self, mu: np.ndarray, index: int) -> np.ndarray:
        """Beer-Lambert transmission plus quantum noise; returns photon counts (>= 0.5).

        Poisson noise is approximated by a Gaussian with variance equal to the mean, which
        is accurate at the tens-to-thousands of counts per pixel here and several times
        faster than sampling Poisson variates.
        """
        np.negative(mu, out=mu)
        counts = cv2.exp(mu)
        counts *= self._i0
        noise = frame_rng(self.seed, index).standard_normal(counts.shape, dtype=np.float32)
        noise *= cv2.sqrt(counts)
        counts += noise
        np.maximum(counts, 0.5, out=counts)
        return counts

    def device_curve(self, index: int) -> np.ndarray:
        """Centre line of the device at frame ``index`` as (m, 2) pixel (x, y), entry first.

        The last row is the tip; useful for tip-tracking metrics.
        """
        t = check_index(index) / self.fps
        return self._curve(t, self._breathing(t))

    def _curve(self, t: float, breath: float) -> np.ndarray:
        """Deformed, advanced device centre line at time ``t``."""
        dev = self._device
        n = len(dev.points)
        ramp = np.linspace(0.3, 1.0, n)  # the distal part moves more than the entry
        pulse = heartbeat(t, self._heart_rate, self._heart_phase) * dev.heart_amp
        pts = dev.points.copy()
        for i, (wx, wy) in enumerate(dev.wiggle):
            pts[i, 0] += ramp[i] * (wx(t) + pulse * dev.heart_dir[0])
            pts[i, 1] += ramp[i] * (wy(t) + pulse * dev.heart_dir[1]) + breath * dev.breath_coupling
        curve = catmull_rom(pts, _SAMPLES_PER_SEGMENT)
        cycle = 0.5 - 0.5 * np.cos(2.0 * np.pi * t / dev.advance_period_s + dev.advance_phase)
        return cut_by_length(curve, dev.min_visible + (1.0 - dev.min_visible) * cycle)

    def _draw_device(self, t: float, breath: float, mask: np.ndarray) -> None:
        """Draw the device into the attenuation layer and the mask with the same geometry."""
        dev = self._device
        curve = self._curve(t, breath)
        pts = to_fixed(curve, _SHIFT)
        cv2.polylines(self._wire, [pts], False, dev.density, dev.width, cv2.LINE_8, _SHIFT)
        cv2.polylines(mask, [pts], False, 1, dev.width, cv2.LINE_8, _SHIFT)
        n_tip = max(2, int(len(curve) * dev.tip_fraction))
        cv2.polylines(
            self._wire, [pts[-n_tip:]], False, dev.density + dev.tip_density, dev.width, cv2.LINE_8, _SHIFT
        )


def _check_fps(fps: float) -> float:
    """Accept only pulsed-fluoroscopy rates; anything else is almost surely a mistake."""
    for allowed in ALLOWED_FPS:
        if abs(float(fps) - allowed) < 1e-6:
            return allowed
    names = ", ".join(f"{a:g}" for a in ALLOWED_FPS)
    raise ValueError(f"fps must be one of {names} (pulsed fluoroscopy rates), got {fps}")
