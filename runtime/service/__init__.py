"""Running as a service: systemd notification, device telemetry and Prometheus metrics.

:func:`make_observers` is what ``medstream run`` attaches to its pipeline. Each piece is an
observer (see :mod:`medstream.runtime.observers`), so the pipeline itself knows nothing of systemd,
Prometheus or NVML.
"""

from __future__ import annotations

from typing import Any

from medstream.runtime.observers import PipelineObserver


def make_observers(cfg: Any) -> list[PipelineObserver]:
    """Observers for a run: systemd notify (always; a no-op without ``NOTIFY_SOCKET``), device
    telemetry (always; sampled every 1.5 s on its own thread, carried in the status message as
    ``device_telemetry``), and Prometheus metrics when ``cfg.metrics_port`` is set.

    The telemetry observer has a ``telemetry()`` method; :func:`medstream.runtime.app.build_pipeline`
    hands it to the pipeline so status messages include the latest sample.
    """
    from medstream.runtime.service.notify import NotifyObserver
    from medstream.runtime.service.telemetry import TelemetryObserver

    telemetry = TelemetryObserver()
    observers: list[PipelineObserver] = [NotifyObserver(), telemetry]
    if getattr(cfg, "metrics_port", None) is not None:
        from medstream.runtime.service.metrics import MetricsObserver

        try:
            observers.append(MetricsObserver(cfg.metrics_port, cfg.metrics_host, telemetry=telemetry.telemetry))
        except Exception:
            telemetry.sampler.close()
            raise
    return observers


__all__ = ["make_observers"]
