"""Running as a service: systemd notification, device telemetry and Prometheus metrics.

:func:`make_service_hooks` is what ``medstream run`` attaches to its pipeline. Each piece is an
observer (see :mod:`medstream.runtime.observers`), so the pipeline itself knows nothing of systemd,
Prometheus or NVML; the telemetry sampler is handed over by name for the status messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medstream.runtime.config import ServiceSection
from medstream.runtime.observers import PipelineObserver


@dataclass
class ServiceHooks:
    """What a service run attaches to its pipeline: observers, and the telemetry sampler for status messages."""

    observers: list[PipelineObserver] = field(default_factory=list)
    telemetry: Callable[[], dict[str, Any]] | None = None


def make_service_hooks(service: ServiceSection, *, allow_insecure_remote: bool = False) -> ServiceHooks:
    """Observers for a run: systemd notify (always; a no-op without ``NOTIFY_SOCKET``), device
    telemetry (always; sampled every 1.5 s on its own thread, carried in the status message as
    ``device_telemetry``), and Prometheus metrics when ``service.metrics_port`` is set.
    """
    from medstream.runtime.service.notify import NotifyObserver
    from medstream.runtime.service.telemetry import TelemetryObserver

    telemetry = TelemetryObserver()
    observers: list[PipelineObserver] = [NotifyObserver(), telemetry]
    if service.metrics_port is not None:
        from medstream.runtime.security import check_bind_allowed
        from medstream.runtime.service.metrics import MetricsObserver

        # The same rule as every other socket: metrics (stream names, counters) stay on loopback unless the
        # operator says the network is isolated. Prometheus metrics have no encryption of their own.
        check_bind_allowed(f"tcp://{service.metrics_host}:{service.metrics_port}", encrypted=False,
                           allow_insecure_remote=allow_insecure_remote, what="the Prometheus metrics endpoint")
        try:
            observers.append(MetricsObserver(service.metrics_port, service.metrics_host, telemetry=telemetry.telemetry))
        except Exception:
            telemetry.sampler.close()
            raise
    return ServiceHooks(observers, telemetry.telemetry)


def make_observers(service: ServiceSection) -> list[PipelineObserver]:
    """The observers of :func:`make_service_hooks` alone."""
    return make_service_hooks(service).observers


__all__ = ["ServiceHooks", "make_observers", "make_service_hooks"]
