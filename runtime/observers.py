"""Observers: how the service layer (systemd notify, Prometheus metrics, logs) watches a pipeline.

The pipeline calls these hooks from its worker thread; each must be quick and must not raise (an
observer that fails is logged and the stream goes on). Keeping them out of the pipeline keeps the
pipeline free of systemd, Prometheus and NVML.
"""

from __future__ import annotations

from typing import Any

from medstream.runtime.frame import Overlay


class PipelineObserver:
    """No-op base: override what you need."""

    def on_ready(self, info: dict[str, Any]) -> None:
        """Backend loaded and warmed up, sockets bound: the pipeline is about to take frames."""

    def on_progress(self) -> None:
        """The worker finished one unit of work (a frame, or an idle wait): proof of life for watchdogs."""

    def on_frame(self, outcome: str, overlay: Overlay | None, stages_ms: dict[str, float]) -> None:
        """One frame ended: ``outcome`` is ``processed`` or a drop reason."""

    def on_status(self, status: dict[str, Any]) -> None:
        """A status message was made (about once a second)."""

    def on_stop(self, summary: dict[str, Any]) -> None:
        """The pipeline stopped; ``summary`` is what ``--summary`` writes."""
