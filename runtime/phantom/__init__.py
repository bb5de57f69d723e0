"""Synthetic imaging streams with pixel-exact ground truth, for tests, demos and training.

Two phantoms are provided, both deterministic for a seed and temporally coherent:

* :class:`UltrasoundPhantom`: B-mode ultrasound (convex or linear probe) with vessels and a
  needle; classes ``background, vessel, needle``.
* :class:`FluoroscopyPhantom`: pulsed X-ray fluoroscopy with a guidewire/catheter moving
  with breathing and heartbeat; classes ``background, wire``.

``render(index)`` returns ``(image, mask)`` as uint8 ``(height, width)`` arrays and is a pure
function of the constructor arguments and ``index``.
"""

from __future__ import annotations

from typing import Any

from .fluoroscopy import FluoroscopyPhantom
from .ultrasound import UltrasoundPhantom

Phantom = UltrasoundPhantom | FluoroscopyPhantom

KINDS: dict[str, type[UltrasoundPhantom] | type[FluoroscopyPhantom]] = {
    "ultrasound": UltrasoundPhantom,
    "fluoroscopy": FluoroscopyPhantom,
}


def make_phantom(kind: str, **params: Any) -> Phantom:
    """Build a phantom by name, e.g. ``make_phantom("ultrasound", seed=3, probe="linear")``.

    Lets configuration files and CLIs pick a simulator with a string; ``params`` go to the
    class constructor unchanged.

    Raises
    ------
    ValueError
        If ``kind`` is not one of ``KINDS``.
    """
    try:
        cls = KINDS[kind]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in KINDS)
        raise ValueError(f"unknown phantom kind {kind!r}; allowed kinds: {allowed}") from None
    return cls(**params)


__all__ = ["KINDS", "FluoroscopyPhantom", "Phantom", "UltrasoundPhantom", "make_phantom"]
