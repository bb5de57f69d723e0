"""Helpers shared by the ultrasound and fluoroscopy phantoms.

Both simulators need the same three ingredients: motion that is a smooth, deterministic
function of time (so any frame can be rendered on its own, in any order), static
low-frequency random fields (tissue texture, soft-tissue thickness), and a physiological
heartbeat waveform. Keeping them here guarantees both phantoms move "the same way".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

HEART_RATE_HZ = (1.0, 1.4)
"""Plausible resting heart-rate range (60-84 bpm) that per-seed heart rates are drawn from."""


def check_seed(seed: int) -> int:
    """Validate a seed and return it as a plain ``int``.

    Seeds feed ``np.random.default_rng([seed, index])``, which rejects negative numbers
    with an obscure message, so we fail early with a clear one.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def check_index(index: int) -> int:
    """Validate a frame index (non-negative integer) and return it as ``int``."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"frame index must be an integer, got {type(index).__name__}")
    index = int(index)
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return index


def check_size(height: int, width: int) -> tuple[int, int]:
    """Validate the output size; tiny images cannot hold the anatomy we draw."""
    height, width = int(height), int(width)
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be >= 32 pixels, got {height}x{width}")
    return height, width


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """Random generator for the per-frame noise of frame ``index``.

    Seeding from ``(seed, index)`` rather than advancing one stream makes every frame a pure
    function of its index: out-of-order and repeated renders give identical pixels.
    """
    return np.random.default_rng([seed, index])


@dataclass(frozen=True)
class SmoothSignal:
    """A zero-mean sum of sinusoids: a smooth, bounded, deterministic function of time.

    Used for every slow drift in the scenes (vessel wander, needle tremor, wire wiggle).
    Because it is an analytic function of ``t`` it needs no state, so frames can be
    rendered out of order. ``amplitude`` bounds ``|value(t)|``.
    """

    freqs: np.ndarray
    phases: np.ndarray
    weights: np.ndarray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        amplitude: float,
        freq_range: tuple[float, float],
        n_terms: int = 3,
    ) -> SmoothSignal:
        """Draw a signal with ``n_terms`` random frequencies (Hz) and phases."""
        freqs = rng.uniform(*freq_range, size=n_terms)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=n_terms)
        raw = rng.uniform(0.5, 1.0, size=n_terms)
        weights = amplitude * raw / raw.sum()
        return cls(freqs, phases, weights)

    def __call__(self, t: float) -> float:
        """Value at time ``t`` seconds."""
        return float(np.dot(self.weights, np.sin(2.0 * np.pi * self.freqs * t + self.phases)))


def heartbeat(t: float, rate_hz: float, phase: float) -> float:
    """Cardiac pulse waveform in [0, 1] at time ``t``.

    A raised cosine sharpened by a power gives a short systolic peak and a long diastolic
    rest, closer to an arterial pressure pulse than a pure sinusoid, yet still smooth.
    """
    c = 0.5 + 0.5 * np.cos(2.0 * np.pi * rate_hz * t + phase)
    return float(c**3)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field of ``shape`` (float32).

    A coarse ``cells`` grid of Gaussian values is upsampled with bicubic interpolation:
    cheap, and the feature size is set directly by the cell count.
    """
    ch, cw = max(2, int(cells[0])), max(2, int(cells[1]))
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def odd_kernel(sigma: float) -> int:
    """Smallest odd Gaussian kernel size that covers about +-3 sigma."""
    return max(3, int(2 * round(3.0 * sigma) + 1))


def to_fixed(points: np.ndarray, shift: int) -> np.ndarray:
    """Convert float pixel coordinates to the int32 fixed-point form OpenCV draws with.

    OpenCV drawing functions accept a ``shift`` (fractional bits); using it gives sub-pixel
    positioning, so slowly moving objects glide instead of jumping a pixel at a time.
    """
    return np.round(np.asarray(points, dtype=np.float64) * (1 << shift)).astype(np.int32)


def clip_to_uint8(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Saturate float ``values`` into the uint8 array ``out`` in place (``values`` is clobbered)."""
    np.clip(values, 0.0, 255.0, out=values)
    np.copyto(out, values, casting="unsafe")
    return out
