"""Synthetic B-mode ultrasound stream with vessel and needle ground truth.

The phantom imitates what a capture card sees from a scanner during ultrasound-guided
vascular access: a convex (sector) or linear field of view, log-compressed speckle over
layered tissue, depth attenuation with partial time-gain compensation, one to three
pulsating anechoic vessels with echogenic walls, and a bright needle advancing at an
angle with reverberation artefacts and an acoustic shadow. Masks come from the very same
drawing calls as the image, so labels match pixels exactly.

Everything is computed in display units (grey levels) in the log domain: tissue
echogenicity, attenuation and speckle add there, which is also how a scanner's
log-compression makes them combine. All scene layout is drawn at construction from
``seed``; each frame only draws the moving objects and a fresh slice of speckle, which
keeps rendering a few milliseconds per frame.
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

PROBES = ("convex", "linear")
_SHIFT = 4  # fractional bits for OpenCV sub-pixel drawing
_LN_TO_DB = 20.0 / np.log(10.0)  # amplitude natural-log -> dB


@dataclass(frozen=True)
class _Vessel:
    """Layout and motion of one vessel cross-section (pixels, degrees)."""

    cx: float
    cy: float
    ax: float  # lumen semi-axis along the ellipse's own x axis
    ay: float
    angle: float
    wall: int  # wall thickness in pixels
    wall_db: float  # wall echo above the surrounding tissue
    enhancement_db: float  # posterior acoustic enhancement below the lumen
    pulse: float  # relative change of the axes at systole
    drift_x: SmoothSignal
    drift_y: SmoothSignal
    breath: SmoothSignal  # slow calibre change (venous filling with breathing)


@dataclass(frozen=True)
class _Needle:
    """Needle insertion: entry point, angle, reach and advance/retract cycle."""

    entry: tuple[float, float]
    angle_deg: float  # below horizontal
    side: float  # +1 enters at the right and points left, -1 the opposite
    max_length: float
    period_s: float
    phase: float
    jitter: SmoothSignal  # hand irregularity in the advance, in fractions of max_length
    tremor: SmoothSignal  # angular tremor, degrees
    width: int
    brightness: float  # display grey level of the shaft
    reverb_count: int
    shadow_db: float  # attenuation behind the shaft
    reverb_spacing: float


class _FanGeometry:
    """Field-of-view geometry: per-pixel depth/lateral coordinates and the fan mask.

    Parameters
    ----------
    height, width:
        Output size in pixels.
    probe:
        ``"convex"``: a sector whose apex sits above the image top, as from a curved
        abdominal probe; ``"linear"``: a rectangle, as from a vascular linear probe.
    rng:
        Layout generator (the fan's opening angle and apex radius vary per seed).
    """

    def __init__(self, height: int, width: int, probe: str, rng: np.random.Generator) -> None:
        self.height, self.width, self.probe = height, width, probe
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        if probe == "convex":
            self.r0 = float(height * rng.uniform(0.25, 0.6))
            self.depth_px = float(height * rng.uniform(0.93, 0.99))
            self.half_angle = float(np.deg2rad(rng.uniform(26.0, 38.0)))
            self.apex = (width / 2.0 - 0.5, -self.r0)
            dx, dy = xs - self.apex[0], ys - self.apex[1]
            r = np.sqrt(dx * dx + dy * dy)
            theta = np.arctan2(dx, dy)
            self.depth = (r - self.r0) / self.depth_px
            self.lateral = theta / self.half_angle
            lateral_px = 2.0 * self.half_angle * (self.r0 + 0.5 * self.depth_px)
        else:
            self.margin = float(width * rng.uniform(0.0, 0.06))
            self.depth_px = float(height)
            half = width / 2.0 - self.margin
            self.depth = ys / (height - 1)
            self.lateral = (xs - (width / 2.0 - 0.5)) / half
            lateral_px = 2.0 * half
        self.lateral_px = lateral_px
        self.inside = (self.depth >= 0) & (self.depth <= 1) & (np.abs(self.lateral) <= 1)
        self.fan255 = np.where(self.inside, 255, 0).astype(np.uint8)

    def to_pixel(self, depth: float, lateral: float) -> tuple[float, float]:
        """Map normalised (depth in [0, 1], lateral in [-1, 1]) to pixel (x, y)."""
        if self.probe == "convex":
            r = self.r0 + depth * self.depth_px
            th = lateral * self.half_angle
            return self.apex[0] + r * np.sin(th), self.apex[1] + r * np.cos(th)
        half = self.width / 2.0 - self.margin
        return self.width / 2.0 - 0.5 + lateral * half, depth * (self.height - 1)

    def beam(self, x: float, y: float) -> tuple[float, float]:
        """Unit direction of the ultrasound beam through pixel (x, y).

        Shadows and reverberations travel along the beam, which fans out radially from
        the apex for a convex probe and runs straight down for a linear one.
        """
        if self.probe == "linear":
            return 0.0, 1.0
        dx, dy = x - self.apex[0], y - self.apex[1]
        n = float(np.hypot(dx, dy)) or 1.0
        return dx / n, dy / n


class UltrasoundPhantom:
    """Deterministic synthetic B-mode stream: ``render(index) -> (image, mask)``.

    Parameters
    ----------
    height, width:
        Frame size in pixels (any size >= 32; feature sizes scale with ``min(height, width)``).
    seed:
        Scene seed. It fixes the anatomy, probe geometry, gains, speckle grain and the
        motion parameters; per-frame speckle is seeded from ``(seed, index)``.
    fps:
        Frame rate; frame ``index`` shows the scene at time ``index / fps`` seconds.
    probe:
        ``"convex"`` (sector, apex above the image) or ``"linear"`` (rectangle).

    Notes
    -----
    ``render`` is a pure function of ``(height, width, seed, fps, probe, index)``: frames can
    be rendered out of order, repeatedly or in parallel processes with identical results.
    Mask classes: 0 background (and everything outside the fan), 1 vessel lumen (inside the
    wall), 2 needle shaft from entry to tip (overrides vessel).
    """

    CLASSES = ("background", "vessel", "needle")
    COLORS = ((0, 0, 0), (220, 40, 40), (40, 220, 40))

    def __init__(
        self,
        height: int = 256,
        width: int = 256,
        seed: int = 0,
        fps: float = 30.0,
        probe: str = "convex",
    ) -> None:
        self.height, self.width = check_size(height, width)
        self.seed = check_seed(seed)
        self.fps = float(fps)
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
        self.probe = probe
        rng = np.random.default_rng(self.seed)
        self._scale = min(self.height, self.width) / 256.0
        self._fan = _FanGeometry(self.height, self.width, probe, rng)
        self._init_display(rng)
        self._base = self._tissue_base(rng)
        self._init_speckle(rng)
        self._vessels = self._layout_vessels(rng)
        self._needle = self._layout_needle(rng)
        self._heart_rate = float(rng.uniform(*HEART_RATE_HZ))
        self._heart_phase = float(rng.uniform(0.0, 2.0 * np.pi))
        self._layer = np.empty((self.height, self.width), np.float32)
        self._shadow = np.empty_like(self._layer)
        self._needle_layer = np.empty_like(self._layer)
        self._blur_k = odd_kernel(0.8 * self._scale)

    # ------------------------------------------------------------------ layout (init)

    def _init_display(self, rng: np.random.Generator) -> None:
        """Per-seed display settings: dynamic range and overall gain.

        Real operators set gain and dynamic range differently; varying them per seed stops
        a segmentation model from keying on one absolute brightness.
        """
        self._dyn_range = float(rng.uniform(45.0, 62.0))  # dB shown from black to white
        self._db_to_grey = 255.0 / self._dyn_range
        mean_grey = rng.uniform(95.0, 135.0)  # grey level of average tissue
        # Rayleigh speckle has a mean of about -2.5 dB in 20 log10 |z| with E|z|^2 = 1.
        self._floor_db = -2.5 - mean_grey / self._db_to_grey

    def _tissue_base(self, rng: np.random.Generator) -> np.ndarray:
        """Static echogenicity map in grey levels (before speckle), -1e4 outside the fan.

        Layers with wavy boundaries (skin, fat, fascia, muscle), smooth texture, an
        organ-like region, depth attenuation partly undone by TGC and a focal-zone gain bump.
        """
        fan = self._fan
        d, u = fan.depth, fan.lateral
        shape = d.shape
        db = np.zeros(shape, np.float32)
        db += 7.0 * np.exp(-((d / 0.015) ** 2))  # skin / probe-contact line
        db -= rng.uniform(2.0, 6.0) * np.exp(-(((d - 0.07) / 0.04) ** 2))  # subcutaneous fat
        for _ in range(int(rng.integers(2, 6))):
            depth = rng.uniform(0.08, 0.92)
            wave = rng.uniform(0.0, 0.04) * np.sin(rng.uniform(1, 4) * np.pi * u + rng.uniform(0, 6.3))
            thin = rng.random() < 0.6
            width = rng.uniform(0.006, 0.02) if thin else rng.uniform(0.04, 0.12)
            amp = rng.uniform(4.0, 10.0) if thin else rng.uniform(-6.0, 5.0)
            db += amp * np.exp(-(((d - depth - wave) / width) ** 2))
        # Deeper region of a different tissue (e.g. muscle vs. organ parenchyma).
        boundary = rng.uniform(0.3, 0.8) + 0.05 * np.sin(rng.uniform(1, 3) * np.pi * u + rng.uniform(0, 6.3))
        db += rng.uniform(-4.0, 4.0) / (1.0 + np.exp(-(d - boundary) / 0.02))
        db += rng.uniform(1.0, 3.0) * smooth_noise(rng, shape, (6, 6))
        db += rng.uniform(1.5, 3.5) * smooth_noise(rng, shape, (shape[0] // 14, shape[1] // 14))
        db += self._scatter_clusters(rng)
        db += self._organ_region(rng)
        attenuation = rng.uniform(18.0, 36.0)  # dB lost at full depth
        tgc = rng.uniform(0.6, 0.85)  # fraction of it the operator's TGC gives back
        db -= attenuation * (1.0 - tgc) * np.clip(d, 0.0, 1.0)
        focus = rng.uniform(0.3, 0.7)
        db += rng.uniform(0.5, 2.5) * np.exp(-(((d - focus) / 0.15) ** 2))
        if fan.probe == "convex":
            db -= 2.0 * np.clip(np.abs(u), 0, 1) ** 4  # weaker edge beams
        grey = (db - self._floor_db) * self._db_to_grey
        grey[~fan.inside] = -1e4
        return grey.astype(np.float32)

    def _scatter_clusters(self, rng: np.random.Generator) -> np.ndarray:
        """Sparse small bright clusters (connective tissue, microcalcification-like echoes).

        Real parenchyma is not uniform speckle: brighter specular flecks break it up, and a
        model should not learn that any bright blob is a needle.
        """
        shape = (self.height, self.width)
        out = np.zeros(shape, np.float32)
        count = int(rng.integers(10, 40) * self.height * self.width / 256**2)
        xs = rng.uniform(0, self.width, count)
        ys = rng.uniform(0, self.height, count)
        for x, y in zip(xs, ys, strict=True):
            axes = (int(rng.uniform(1.5, 5.0) * self._scale), int(rng.uniform(1.0, 2.5) * self._scale))
            cv2.ellipse(
                out,
                (int(x), int(y)),
                axes,
                rng.uniform(-30, 30),
                0,
                360,
                float(rng.uniform(3.0, 9.0)),
                -1,
                cv2.LINE_AA,
            )
        return cv2.GaussianBlur(out, (0, 0), 1.0 * self._scale)

    def _organ_region(self, rng: np.random.Generator) -> np.ndarray:
        """Zero to two soft elliptical regions of different echogenicity (organs, nodes)."""
        shape = (self.height, self.width)
        out = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(0, 3))):
            x, y = self._fan.to_pixel(rng.uniform(0.3, 1.0), rng.uniform(-1.0, 1.0))
            axes = rng.uniform(0.15, 0.4, size=2) * min(shape)
            blob = np.zeros(shape, np.float32)
            cv2.ellipse(
                blob, (int(x), int(y)), (int(axes[0]), int(axes[1])), rng.uniform(0, 180), 0, 360, 1.0, -1
            )
            sigma = 6.0 * self._scale
            blob = cv2.GaussianBlur(blob, (odd_kernel(sigma),) * 2, sigma)
            out += rng.uniform(-5.0, 4.0) * blob
        return out

    def _init_speckle(self, rng: np.random.Generator) -> None:
        """Prepare speckle: a coarse (depth x beam) complex grid mapped onto the fan.

        Complex Gaussian noise whose magnitude is taken after interpolation is Rayleigh
        distributed with a finite grain, like coherent speckle. Sampling it on a polar grid
        makes the grain elongate laterally and widen with depth, as real beams do. Each
        frame mixes a fixed field with a fresh one so speckle decorrelates only partly
        between frames, as it does for a still probe on breathing tissue.

        For speed the coarse grid is upsampled (bicubic, separable) to about one sample
        per output pixel in polar space, and only the log-amplitude is then remapped
        (bilinear) onto the fan; for a linear probe polar space is image space already.
        """
        fan = self._fan
        axial = rng.uniform(1.4, 2.6) * self._scale  # grain size along the beam, pixels
        lateral = axial * rng.uniform(1.5, 2.6)
        n_d = max(4, int(np.ceil(fan.depth_px / axial)))
        n_u = max(4, int(np.ceil(fan.lateral_px / lateral)))
        self._speckle_shape = (n_d, n_u)
        self._speckle_static = rng.standard_normal((2, n_d, n_u)).astype(np.float32)
        fresh = rng.uniform(0.25, 0.5)
        self._speckle_mix = (float(np.sqrt(1.0 - fresh**2)), float(fresh))
        self._speckle_grey = _LN_TO_DB * self._db_to_grey
        if fan.probe == "linear":
            self._polar_size = (self.width, self.height)  # lateral margins fall outside the fan
            self._map1 = self._map2 = None
            return
        polar_h = max(n_d, int(np.ceil(fan.depth_px)))
        polar_w = max(n_u, int(np.ceil(fan.lateral_px)))
        self._polar_size = (polar_w, polar_h)
        map_y = (np.clip(fan.depth, 0.0, 1.0) * (polar_h - 1)).astype(np.float32)
        map_x = ((np.clip(fan.lateral, -1.0, 1.0) + 1.0) * 0.5 * (polar_w - 1)).astype(np.float32)
        self._map1, self._map2 = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)

    def _layout_vessels(self, rng: np.random.Generator) -> list[_Vessel]:
        """Place 1-3 non-overlapping vessels well inside the fan."""
        count = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        s, side = self._scale, min(self.height, self.width)
        vessels: list[_Vessel] = []
        for _ in range(60):
            if len(vessels) == count:
                break
            ax = rng.uniform(0.045, 0.1) * side
            ay = ax * rng.uniform(0.55, 0.95)
            x, y = self._fan.to_pixel(rng.uniform(0.25, 0.78), rng.uniform(-0.6, 0.6))
            if not (ax * 1.4 < x < self.width - ax * 1.4 and ax * 1.4 < y < self.height - ax * 1.4):
                continue
            if any(np.hypot(x - v.cx, y - v.cy) < ax + v.ax + 14 * s for v in vessels):
                continue
            artery = rng.random() < 0.5
            vessels.append(
                _Vessel(
                    cx=x,
                    cy=y,
                    ax=ax,
                    ay=ay,
                    angle=float(rng.uniform(-25, 25)),
                    wall=max(2, int(round(rng.uniform(1.6, 3.0) * s))),
                    wall_db=float(rng.uniform(8.0, 16.0)),
                    enhancement_db=float(rng.uniform(2.0, 6.0)),
                    pulse=float(rng.uniform(0.06, 0.12) if artery else rng.uniform(0.01, 0.04)),
                    drift_x=SmoothSignal.random(rng, 4.0 * s, (0.03, 0.15)),
                    drift_y=SmoothSignal.random(rng, 3.0 * s, (0.03, 0.15)),
                    breath=SmoothSignal.random(rng, 0.02 if artery else 0.08, (0.2, 0.3), 1),
                )
            )
        return vessels

    def _layout_needle(self, rng: np.random.Generator) -> _Needle:
        """Choose entry side, angle (20-50 degrees), reach and the advance cycle."""
        s = self._scale
        side = float(rng.choice([-1.0, 1.0]))
        x0, y0 = self._fan.to_pixel(0.0, side * rng.uniform(0.6, 1.15))  # > 1: enters from the fan's side
        angle = float(rng.uniform(20.0, 50.0))
        rad = np.deg2rad(angle)
        tip_y = rng.uniform(0.45, 0.85) * self.height
        far_x = self.width * 0.08 if side > 0 else self.width * 0.92
        reach = min((tip_y - y0) / np.sin(rad), abs(x0 - far_x) / np.cos(rad))
        width = int(np.clip(round(rng.uniform(3.0, 5.0) * s), 2, None))
        return _Needle(
            entry=(float(x0), float(y0)),
            angle_deg=angle,
            side=side,
            max_length=float(max(reach, 0.25 * min(self.height, self.width))),
            period_s=float(rng.uniform(8.0, 20.0)),
            phase=float(rng.uniform(0, 2 * np.pi)),
            jitter=SmoothSignal.random(rng, 0.05, (0.1, 0.4)),
            tremor=SmoothSignal.random(rng, 1.0, (0.2, 1.0)),
            width=width,
            brightness=float(rng.uniform(205.0, 250.0)),
            reverb_count=int(rng.integers(2, 5)),
            shadow_db=float(rng.uniform(6.0, 11.0)),
            reverb_spacing=float(width * rng.uniform(1.6, 2.4)),
        )

    # ------------------------------------------------------------------ per frame

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Render frame ``index``.

        Returns
        -------
        image:
            ``uint8`` array ``(height, width)``, grey B-mode, 0 outside the fan.
        mask:
            ``uint8`` array ``(height, width)`` of class ids (see ``CLASSES``).
        """
        image = np.empty((self.height, self.width), np.uint8)
        mask = np.empty_like(image)
        self.render_into(index, image, mask)
        return image, mask

    def render_into(self, index: int, image_out: np.ndarray, mask_out: np.ndarray) -> None:
        """Render frame ``index`` into preallocated ``uint8`` (height, width) arrays.

        Avoids two allocations per frame for live streaming loops.
        """
        index = check_index(index)
        _check_out(image_out, mask_out, self.height, self.width)
        t = index / self.fps
        mask_out.fill(0)
        self._layer.fill(0.0)
        self._shadow.fill(0.0)
        self._needle_layer.fill(0.0)
        self._draw_vessels(t, mask_out)
        self._draw_needle(t, mask_out)
        grey = self._layer
        grey += self._shadow
        k = self._blur_k
        cv2.GaussianBlur(grey, (k, k), 0, dst=grey)
        grey += self._base
        speckle = self._speckle(index)
        grey += speckle
        needle = cv2.GaussianBlur(self._needle_layer, (3, 3), 0)
        needle += 0.35 * speckle
        np.maximum(grey, needle, out=grey)
        clip_to_uint8(grey, image_out)
        cv2.bitwise_and(image_out, self._fan.fan255, dst=image_out)
        cv2.bitwise_and(mask_out, self._fan.fan255, dst=mask_out)

    def _speckle(self, index: int) -> np.ndarray:
        """Log-amplitude speckle for frame ``index`` in grey levels (mean about -2.5 dB)."""
        fresh = frame_rng(self.seed, index).standard_normal((2, *self._speckle_shape), dtype=np.float32)
        keep, new = self._speckle_mix
        z = keep * self._speckle_static + new * fresh
        re = cv2.resize(z[0], self._polar_size, interpolation=cv2.INTER_CUBIC)
        im = cv2.resize(z[1], self._polar_size, interpolation=cv2.INTER_CUBIC)
        amp = cv2.magnitude(re, im)
        amp *= np.float32(1.0 / np.sqrt(2.0))  # E|z|^2 = 1
        np.maximum(amp, 1e-3, out=amp)
        log_amp = cv2.log(amp)
        log_amp *= np.float32(self._speckle_grey)
        if self._map1 is None:
            return log_amp
        return cv2.remap(log_amp, self._map1, self._map2, cv2.INTER_LINEAR)

    def _draw_vessels(self, t: float, mask: np.ndarray) -> None:
        """Draw each vessel: posterior enhancement, echogenic wall, anechoic lumen."""
        pulse = heartbeat(t, self._heart_rate, self._heart_phase)
        g = self._db_to_grey
        for v in self._vessels:
            scale = 1.0 + v.pulse * pulse + v.breath(t)
            cx, cy = v.cx + v.drift_x(t), v.cy + v.drift_y(t)
            ax, ay = v.ax * scale, v.ay * scale
            centre = tuple(int(c) for c in to_fixed((cx, cy), _SHIFT))
            below = tuple(int(c) for c in to_fixed((cx, cy + 1.3 * ay), _SHIFT))
            wall = v.wall
            outer = tuple(int(c) for c in to_fixed((ax + wall / 2.0, ay + wall / 2.0), _SHIFT))
            lumen = tuple(int(c) for c in to_fixed((ax, ay), _SHIFT))
            enh = tuple(int(c) for c in to_fixed((ax * 0.9, ay * 1.1), _SHIFT))
            cv2.ellipse(
                self._layer, below, enh, v.angle, 0, 360, v.enhancement_db * g, -1, cv2.LINE_AA, _SHIFT
            )
            cv2.ellipse(self._layer, centre, outer, v.angle, 0, 360, v.wall_db * g, wall, cv2.LINE_AA, _SHIFT)
            cv2.ellipse(self._layer, centre, lumen, v.angle, 0, 360, -32.0 * g, -1, cv2.LINE_8, _SHIFT)
            cv2.ellipse(mask, centre, lumen, v.angle, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)

    def needle_tip(self, index: int) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Entry and tip pixel coordinates ``((x0, y0), (x1, y1))`` of the needle at frame
        ``index``, or ``None`` while the needle is withdrawn. Useful for tip-error metrics."""
        return self._needle_segment(check_index(index) / self.fps)

    def _needle_segment(self, t: float) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Needle entry and tip at time ``t``; ``None`` while withdrawn (about 15 % of a cycle)."""
        n = self._needle
        cycle = 0.5 - 0.5 * np.cos(2.0 * np.pi * t / n.period_s + n.phase)
        advance = (cycle + n.jitter(t) - 0.06) / 0.94
        length = n.max_length * min(advance, 1.0)
        if length < 2.0:
            return None
        rad = np.deg2rad(n.angle_deg + n.tremor(t))
        x0, y0 = n.entry
        return (x0, y0), (x0 - n.side * length * np.cos(rad), y0 + length * np.sin(rad))

    def _draw_needle(self, t: float, mask: np.ndarray) -> None:
        """Draw shaft (bright, into the max-composited layer), reverberations and shadow."""
        seg = self._needle_segment(t)
        if seg is None:
            return
        n = self._needle
        (x0, y0), (x1, y1) = seg
        bx0, by0 = self._fan.beam(x0, y0)
        bx1, by1 = self._fan.beam(x1, y1)
        far = 4.0 * (self.height + self.width)
        shadow = to_fixed(
            [(x0, y0), (x1, y1), (x1 + far * bx1, y1 + far * by1), (x0 + far * bx0, y0 + far * by0)], _SHIFT
        )
        cv2.fillPoly(self._shadow, [shadow], -n.shadow_db * self._db_to_grey, cv2.LINE_AA, _SHIFT)
        for k in range(1, n.reverb_count + 1):
            off = k * n.reverb_spacing
            a = tuple(int(c) for c in to_fixed((x0 + off * bx0, y0 + off * by0), _SHIFT))
            b = tuple(int(c) for c in to_fixed((x1 + off * bx1, y1 + off * by1), _SHIFT))
            level = n.brightness * 0.5 * 0.7 ** (k - 1)
            cv2.line(self._needle_layer, a, b, level, max(1, n.width - 2), cv2.LINE_AA, _SHIFT)
        p0 = tuple(int(c) for c in to_fixed((x0, y0), _SHIFT))
        p1 = tuple(int(c) for c in to_fixed((x1, y1), _SHIFT))
        cv2.line(self._needle_layer, p0, p1, n.brightness, n.width, cv2.LINE_8, _SHIFT)
        cv2.line(mask, p0, p1, 2, n.width, cv2.LINE_8, _SHIFT)


def _check_out(image_out: np.ndarray, mask_out: np.ndarray, height: int, width: int) -> None:
    """Reject output buffers of the wrong shape or dtype before drawing into them."""
    for name, arr in (("image_out", image_out), ("mask_out", mask_out)):
        if arr.shape != (height, width) or arr.dtype != np.uint8 or not arr.flags.c_contiguous:
            raise ValueError(
                f"{name} must be a C-contiguous uint8 array of shape {(height, width)}, "
                f"got {arr.dtype} {arr.shape}"
            )
