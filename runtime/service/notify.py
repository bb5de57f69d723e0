"""systemd notification (``sd_notify``): readiness, status line, watchdog and shutdown.

Why our own ~80 lines and not a package: the protocol is one datagram of ``KEY=value`` lines sent to
the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace).
``sdnotify`` (0.3.2) has been unmaintained since 2019 and has no watchdog helpers (no
``WATCHDOG_USEC``/``WATCHDOG_PID`` handling); ``systemd-python`` needs libsystemd headers and a C
compiler to install, which a Jetson image or a slim container often lacks. Our implementation has no
dependency, never raises into the pipeline, and is tested against a real datagram socket.

Watchdog design: ``WATCHDOG=1`` is sent from :meth:`NotifyObserver.on_progress`, which the pipeline's
worker calls after each frame or idle wait. There is deliberately no free-running timer thread: if an
inference hangs, the worker stops calling ``on_progress``, the pings stop and systemd restarts the
service after ``WatchdogSec``. Pings are rate-limited to half of ``WATCHDOG_USEC`` (systemd's advice).
systemd starts enforcing the watchdog only after ``READY=1``, so a long first engine build is covered
by ``TimeoutStartSec`` alone.

Worker progress alone is not enough with a remote backend (issue 17): while a Triton server is unreachable the
worker loops happily, dropping every frame as ``backend_error``, and no overlay can be made. So while the
latest status says ``backend_state: unreachable`` and a source is live (frames arrive), ``WATCHDOG=1`` is sent
only if a frame was processed within the last ping interval; an idle source (stalled, ended) still gets its
pings, there is nothing to make. systemd then restarts the service after ``WatchdogSec`` of outage, which makes
the outage visible to whoever watches the unit; the backend reconnects by itself when the server is back.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from medstream.runtime.observers import PipelineObserver

log = logging.getLogger("medstream.service.notify")


class SdNotifier:
    """Sends ``sd_notify`` datagrams; every method is a no-op when ``NOTIFY_SOCKET`` is unset.

    Parameters
    ----------
    environ
        Where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default ``os.environ``;
        tests pass their own).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or ""
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        elif path:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket (@name): systemd "
                        "notifications are off", path)
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        wd_pid = env.get("WATCHDOG_PID")
        if usec and (not wd_pid or wd_pid == str(os.getpid())):
            try:
                if int(usec) > 0:
                    self.watchdog_interval_s = int(usec) / 1e6 / 2.0
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number: watchdog pings are off", usec)
        self._sock: socket.socket | None = None
        self._last_ping = float("-inf")
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram with ``lines`` (e.g. ``"READY=1"``); ``False`` if off or it failed."""
        if self.address is None:
            return False
        msg = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self.address)
            return True
        except OSError as exc:
            if not self._warned:  # once: a full journal of the same warning helps nobody
                log.warning("cannot notify systemd on %s: %s (readiness/watchdog will not reach systemd)",
                            os.environ.get("NOTIFY_SOCKET"), exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self, now: float | None = None) -> bool:
        """``WATCHDOG=1``, at most once per half ``WATCHDOG_USEC``; ``True`` if a ping was sent."""
        if self.watchdog_interval_s is None or self.address is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval_s:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(status: dict[str, Any]) -> str:
    """The one line ``systemctl status medstream`` shows: rates, latency, drops, source state."""
    lat = status.get("latency_ms", {}).get("total", {})
    c = status.get("counters", {})
    drops = ", ".join(f"{k} {v}" for k, v in sorted(c.get("dropped", {}).items())) or "none"
    p50, p99 = lat.get("p50"), lat.get("p99")
    lat_txt = f"latency p50 {p50:.1f} ms p99 {p99:.1f} ms" if p50 is not None and p99 is not None else "latency n/a"
    backend = ""
    if status.get("backend_state", "ready") != "ready":
        backend = f", backend {status.get('backend_state')}: {status.get('backend_error') or '?'}"
    return (f"{status.get('source_state', '?')}: {status.get('fps_in', 0):.1f} fps in, "
            f"{status.get('fps_out', 0):.1f} fps out, {lat_txt}, processed {c.get('processed', 0)}, drops: {drops}"
            f"{backend}")


class NotifyObserver(PipelineObserver):
    """Pipeline hooks -> systemd: READY at ``on_ready``, STATUS at ``on_status``, WATCHDOG at
    ``on_progress``, STOPPING at ``on_stop``."""

    def __init__(self, notifier: SdNotifier | None = None) -> None:
        self.notifier = notifier or SdNotifier()
        self.notifier.status("loading model and warming up")
        self._backend_unreachable = False
        self._live_sources: dict[str, bool] = {}
        self._last_processed = time.monotonic()

    def on_ready(self, info: dict[str, Any]) -> None:
        self.notifier.ready(f"ready: model {info.get('model_id', '?')} on {info.get('backend', '?')}/"
                            f"{info.get('device', '?')}, publishing on {info.get('publish', '?')}")

    def on_progress(self) -> None:
        if not self._overlays_possible():
            return
        self.notifier.watchdog()

    def _overlays_possible(self, now: float | None = None) -> bool:
        """False while the backend is unreachable, frames arrive and none was processed lately (module docstring)."""
        if not self._backend_unreachable or not any(self._live_sources.values()):
            return True
        window = self.notifier.watchdog_interval_s or 1.0
        return (time.monotonic() if now is None else now) - self._last_processed < window

    def on_frame(self, outcome: str, overlay: Any, stages_ms: dict[str, float]) -> None:
        if outcome == "processed":
            self._last_processed = time.monotonic()
            self._backend_unreachable = False

    def on_status(self, status: dict[str, Any]) -> None:
        self._backend_unreachable = status.get("backend_state") == "unreachable"
        self._live_sources[str(status.get("source_id"))] = status.get("source_state") == "live"
        self.notifier.status(status_line(status))

    def on_stop(self, summary: dict[str, Any]) -> None:
        c = summary.get("counters", {})
        self.notifier.stopping(f"stopped: processed {c.get('processed', 0)} of {c.get('received', 0)} frames")


_default: SdNotifier | None = None


def notify_stopping(reason: str = "shutting down") -> bool:
    """Send ``STOPPING=1`` now, e.g. from the SIGTERM handler, before the frame in progress finishes.

    Safe to call from a signal handler (one ``sendto``) and a no-op without ``NOTIFY_SOCKET``.
    """
    global _default
    if _default is None:
        _default = SdNotifier()
    return _default.stopping(reason)
