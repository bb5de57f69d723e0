"""GPU plumbing shared by the GPU backends: CUDA memory, streams, events and graphs, and device-side
pre/postprocessing.

Nothing here is imported by a CPU-only ``medstream run``: the modules import ``cuda.bindings`` and
``cupy`` lazily, through :func:`medstream.runtime.errors.require`, so a missing one says which extra
to install instead of breaking start-up.
"""

from __future__ import annotations

from medstream.runtime.gpu.cuda import (
    CudaError,
    CudaGraph,
    DeviceBuffer,
    Event,
    PinnedHostBuffer,
    Stream,
    check,
    device_count,
    device_info,
)

__all__ = ["CudaError", "CudaGraph", "DeviceBuffer", "Event", "PinnedHostBuffer", "Stream", "check",
           "device_count", "device_info"]
