"""Prometheus metrics: frame counters, latency histograms, queue depth, model info, device telemetry.

Served by ``prometheus_client`` on ``metrics_host:metrics_port`` (loopback by default, off unless a
port is configured), from a **private** ``CollectorRegistry`` so several pipelines (tests) can each have
their own.

Exactness: the frame counters are not incremented by this observer; they are the pipeline's own
:class:`~medstream.runtime.accounting.FrameAccounting` snapshot, taken from each status message and
from the final summary. ``on_frame`` would miss frames the receiver rejects as malformed (they never
reach the worker), so counting there could not match the summary; the snapshot can, and after the
pipeline stops the scraped counters equal the ``--summary`` counters exactly. During a run they lag by
at most one status interval (1 s).

Latency histograms are observed per processed frame in ``on_frame`` (so each histogram's ``_count``
equals the processed count). Units are **seconds**, the Prometheus convention, but the buckets are
chosen for milliseconds: 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 250, 500, 1000 ms
(a frame at 30 fps has a 33 ms budget; web-request buckets would put every frame in the first two).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Enum, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from medstream.runtime.errors import ConfigError
from medstream.runtime.frame import Overlay
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.service.telemetry import TelemetrySampler

log = logging.getLogger("medstream.service.metrics")

LATENCY_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 250, 500, 1000)
LATENCY_BUCKETS_S = tuple(ms / 1000.0 for ms in LATENCY_BUCKETS_MS)
STAGES = ("queue", "preprocess", "infer", "compute", "postprocess")
SOURCE_STATES = ["starting", "live", "stalled", "reconnecting", "ended", "stopped"]


class _CountersCollector(Collector):
    """Frame counters from the latest accounting snapshot (exact, see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, Any] = {}

    def update(self, counters: dict[str, Any]) -> None:
        with self._lock:
            self.counters = counters

    def collect(self):
        with self._lock:
            c = dict(self.counters)
        for name, key, doc in (
            ("medstream_frames_received", "received", "Frames received from the source (including malformed ones)"),
            ("medstream_frames_processed", "processed", "Frames that went through the model"),
            ("medstream_frames_published", "published", "Overlays handed to the publisher socket"),
            ("medstream_frames_publish_failed", "publish_failed", "Overlays the publisher could not queue"),
        ):
            m = CounterMetricFamily(name, doc)
            m.add_metric([], float(c.get(key, 0)))
            yield m
        dropped = CounterMetricFamily("medstream_frames_dropped", "Frames dropped, by reason", labels=["reason"])
        for reason, n in sorted(c.get("dropped", {}).items()):
            dropped.add_metric([reason], float(n))
        yield dropped
        invalid = CounterMetricFamily("medstream_frames_invalid", "Frames rejected as invalid, by detail",
                                      labels=["detail"])
        for detail, n in sorted(c.get("invalid_by_reason", {}).items()):
            invalid.add_metric([detail], float(n))
        yield invalid
        g = GaugeMetricFamily("medstream_frames_in_flight",
                              "Frames received but not yet ended (mailbox + worker; at most 2)")
        g.add_metric([], float(c.get("in_flight", 0)))
        yield g


class _TelemetryCollector(Collector):
    """Device telemetry gauges from the sampler's latest sample (read at scrape time, never per frame)."""

    def __init__(self, telemetry) -> None:
        self.telemetry = telemetry

    def collect(self):
        t = self.telemetry() or {}
        fams = {
            "util": GaugeMetricFamily("medstream_gpu_utilization_ratio", "GPU utilisation (0-1)", labels=["gpu", "name"]),
            "mem_used": GaugeMetricFamily("medstream_gpu_memory_used_bytes", "GPU memory used", labels=["gpu", "name"]),
            "mem_total": GaugeMetricFamily("medstream_gpu_memory_total_bytes", "GPU memory total", labels=["gpu", "name"]),
            "temp": GaugeMetricFamily("medstream_gpu_temperature_celsius", "GPU temperature", labels=["gpu", "name"]),
            "power": GaugeMetricFamily("medstream_gpu_power_watts", "GPU (Jetson: module input) power",
                                       labels=["gpu", "name"]),
            "clock": GaugeMetricFamily("medstream_gpu_clock_hertz", "GPU clocks", labels=["gpu", "name", "clock"]),
        }
        for g in t.get("gpus", []):
            lab = [str(g.get("index", 0)), str(g.get("name", ""))]
            for key, fam, scale in (("util_pct", "util", 0.01), ("mem_used_bytes", "mem_used", 1), ("mem_total_bytes", "mem_total", 1),
                                    ("temp_c", "temp", 1), ("power_w", "power", 1)):
                if g.get(key) is not None:
                    fams[fam].add_metric(lab, float(g[key]) * scale)
            for clock, mhz in g.get("clocks_mhz", {}).items():
                fams["clock"].add_metric([*lab, clock], float(mhz) * 1e6)
        yield from fams.values()
        cpu, mem, proc = t.get("cpu", {}), t.get("memory", {}), t.get("process", {})
        for name, doc, value in (
            ("medstream_cpu_utilization_ratio", "Host CPU utilisation (0-1, all cores)",
             cpu.get("util_pct") / 100.0 if cpu.get("util_pct") is not None else None),
            ("medstream_memory_used_bytes", "Host memory in use", mem.get("used_bytes")),
            ("medstream_memory_total_bytes", "Host memory total", mem.get("total_bytes")),
            ("medstream_process_resident_memory_bytes", "This process's resident memory", proc.get("rss_bytes")),
        ):
            fam = GaugeMetricFamily(name, doc)
            if value is not None:
                fam.add_metric([], float(value))
            yield fam
        thermal = GaugeMetricFamily("medstream_thermal_zone_celsius", "Thermal zone temperatures", labels=["zone"])
        for zone, c in sorted(t.get("thermal_c", {}).items()):
            thermal.add_metric([zone], float(c))
        yield thermal
        rails = GaugeMetricFamily("medstream_power_rail_watts", "Jetson power rails (INA3221)", labels=["rail"])
        for rail, w in sorted(t.get("power_rails_w", {}).items()):
            rails.add_metric([rail], float(w))
        yield rails


class MetricsObserver(PipelineObserver):
    """Serves ``/metrics`` for one pipeline.

    Parameters
    ----------
    port, host
        Where to listen; ``port=0`` picks a free port (see :attr:`port`). The server starts at once, so
        a scraper sees ``medstream_ready 0`` during a long engine build, and it stays up until
        :meth:`close` or process exit, so the final counters can be scraped after the run.
    telemetry
        Callable returning the latest device telemetry sample (see :mod:`.telemetry`), or a sampler.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", telemetry: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._counters = _CountersCollector()
        r.register(self._counters)
        if isinstance(telemetry, TelemetrySampler):
            telemetry = telemetry.latest
        if telemetry is not None:
            r.register(_TelemetryCollector(telemetry))
        self.stage_latency = Histogram("medstream_stage_latency_seconds", "Latency of each pipeline stage per processed frame",
                                       ["stage"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.e2e_latency = Histogram("medstream_end_to_end_latency_seconds",
                                     "Capture to overlay publish, per processed frame", buckets=LATENCY_BUCKETS_S, registry=r)
        self.ready = Gauge("medstream_ready", "1 once the model is loaded and warmed up, 0 after stop", registry=r)
        self.source_state = Enum("medstream_source_state", "State of the frame source", states=SOURCE_STATES, registry=r)
        self.fps = Gauge("medstream_fps", "Frame rate over the last status interval", ["direction"], registry=r)
        self.latency_recent = Gauge("medstream_recent_latency_seconds", "End-to-end latency percentiles, recent window",
                                    ["quantile"], registry=r)
        self.model_info = Info("medstream_model", "Model and backend in use", registry=r)
        from medstream.runtime.version import __version__

        self.build_info = Info("medstream_build", "medstream version", registry=r)
        self.build_info.info({"version": __version__})
        try:
            self.server, self._thread = start_http_server(port, addr=host, registry=r)
        except OSError as exc:
            raise ConfigError(f"cannot serve Prometheus metrics on {host}:{port}: {exc.strerror or exc}",
                              "another process uses that port: choose another metrics_port, or remove it to turn "
                              "metrics off") from None
        self.host, self.port = host, int(self.server.server_address[1])
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    # ---- hooks
    def on_ready(self, info: dict[str, Any]) -> None:
        self.model_info.info({k: str(info.get(k, "")) for k in ("model_id", "backend", "device", "precision", "model")})
        self.ready.set(1)

    def on_frame(self, outcome: str, overlay: Overlay | None, stages_ms: dict[str, float]) -> None:
        if outcome != "processed":
            return
        for stage in STAGES:
            ms = stages_ms.get(stage)
            if ms is not None:
                self.stage_latency.labels(stage).observe(ms / 1000.0)
        if "total" in stages_ms:
            self.e2e_latency.observe(stages_ms["total"] / 1000.0)

    def on_status(self, status: dict[str, Any]) -> None:
        self._counters.update(status.get("counters", {}))
        if status.get("source_state") in SOURCE_STATES:
            self.source_state.state(status["source_state"])
        self.fps.labels("in").set(status.get("fps_in", 0.0))
        self.fps.labels("out").set(status.get("fps_out", 0.0))
        for q, v in status.get("latency_ms", {}).get("total", {}).items():
            if q in ("p50", "p90", "p99"):
                self.latency_recent.labels(q).set(v / 1000.0)

    def on_stop(self, summary: dict[str, Any]) -> None:
        self._counters.update(summary.get("counters", {}))
        if summary.get("source_state") in SOURCE_STATES:
            self.source_state.state(summary["source_state"])
        self.ready.set(0)

    def close(self) -> None:
        """Stop the HTTP server (tests; in the service it lives until the process exits)."""
        self.server.shutdown()
        self.server.server_close()
