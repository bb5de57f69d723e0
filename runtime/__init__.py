"""medstream.runtime: the streaming runtime and the contracts every other part builds on.

The runtime owns the wire schema (:mod:`medstream.runtime.wire`), the model contract
(:mod:`medstream.runtime.contract`), the frame and overlay types (:mod:`medstream.runtime.frame`)
and the backend interface (:mod:`medstream.runtime.backends.base`). ``medstream.export``,
``medstream.calibration`` and ``medstream.benchmarks`` import from here; nothing here imports them.
"""

from medstream.runtime.version import __version__

__all__ = ["__version__"]
