"""The streaming pipeline: source -> preprocess -> infer -> postprocess -> publish, and its lifetime.

Two threads::

    receiver thread (stream/receiver.py): source.read() -> validate, count -> LatestMailbox.put()  (newest wins)
    worker (caller's thread, here):       mailbox.take() -> preprocess -> backend.infer -> postprocess -> publish

The receiver never waits on the worker, so a slow model cannot back-pressure the capture; the
mailbox of size one means the worker always takes the freshest frame and everything older is
counted as ``superseded``. The worker also publishes the ``status`` message at least once a second,
including while no frames arrive, so a consumer can tell a stalled source from a live one.

A :class:`Pipeline` owns its four resources (source, backend, publisher, CURVE server) and is a context
manager: leaving the ``with`` block closes them in order (source, backend, publisher, security), on
success and on error alike.

Why not overlap preprocessing of frame N+1 with inference of N? Measured on 2 cores: the model
already uses both cores (ONNX Runtime intra-op threads), preprocessing a 256x256 frame costs about
0.1 ms, and a third busy thread raised p99 latency. The receiver thread already overlaps the wire
decode with inference; GPU backends overlap copies and compute on their CUDA stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from medstream.runtime import accounting as acc
from medstream.runtime.accounting import FrameAccounting
from medstream.runtime.backends.base import Backend
from medstream.runtime.config import InjectConfig
from medstream.runtime.errors import BackendError, BackendUnavailable
from medstream.runtime.frame import Frame, Overlay, now_ns
from medstream.runtime.mailbox import LatestMailbox
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.preprocess import FrameMismatch
from medstream.runtime.render import rgba_mask
from medstream.runtime.sinks import OverlaySinks
from medstream.runtime.sources.base import Source
from medstream.runtime.stream.injection import InjectingBackend, delayed
from medstream.runtime.stream.receiver import Receiver
from medstream.runtime.stream.status import ENDED, STOPPED, RateMeter, StreamStatus

log = logging.getLogger("medstream.pipeline")


class Closeable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class StreamOptions:
    """How the worker treats each frame (from the config's ``source``, ``model`` and ``publish`` sections)."""

    max_age_ms: float | None = None
    render_rgba: bool = False
    roi: tuple[int, int, int, int] | None = None
    status_interval_s: float = 1.0
    stall_timeout_s: float = 1.0
    warmup_runs: int = 3
    inject: InjectConfig = field(default_factory=InjectConfig)


class Pipeline:
    """One source, one model, one publisher: a context manager that closes all it owns.

    Parameters
    ----------
    source
        Not yet opened; the receiver thread opens it (and reopens it after a failure, with backoff).
    backend
        Activated and warmed up by :meth:`prepare`; deactivated by :meth:`close`.
    publisher
        The bound sinks for overlays and status (ZeroMQ PUB, OpenIGTLink, ...), as one.
    security
        The publisher's CURVE server (its ZAP authenticator), closed after the publisher; or ``None``.
    options
        Per-frame rules; ``max_age_ms`` drops frames older than that (capture to start of work) as
        ``stale`` instead of processing them: a late overlay is worse than none.
    telemetry
        The latest device telemetry sample, for status messages (the service layer's sampler).
    """

    def __init__(self, source: Source, backend: Backend, publisher: OverlaySinks, *, security: Closeable | None = None,
                 options: StreamOptions | None = None, accounting: FrameAccounting | None = None,
                 observers: list[PipelineObserver] | None = None,
                 telemetry: Callable[[], dict[str, Any]] | None = None) -> None:
        self.options = options or StreamOptions()
        opts = self.options
        self.source = source
        self.backend: Backend = InjectingBackend(backend, opts.inject) if opts.inject.active else backend
        self.publisher = publisher
        self.security = security
        self.accounting = accounting or FrameAccounting()
        self.observers = list(observers or [])
        self.max_age_ns = int(opts.max_age_ms * 1e6) if opts.max_age_ms else None
        self.telemetry = telemetry
        self.stop_event = threading.Event()
        self._mailbox: LatestMailbox[Frame] = LatestMailbox(self._superseded)
        self.receiver = Receiver(source, self._mailbox, self.accounting, self.stop_event, opts.stall_timeout_s)
        self._status_seq = 0
        self._t_start = time.monotonic()
        self._rates = RateMeter()
        self._closed = False
        self.backend_state = "ready"
        self.backend_error: str | None = None
        self.pre = None
        self.post = None
        self._input_name = backend.contract.input.name

    # ------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close what the pipeline owns, in order: source, backend, publisher, CURVE server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for what, close in (("source", self.source.close), ("backend", self.backend.deactivate),
                            ("publisher", self.publisher.close),
                            ("security", self.security.close if self.security is not None else None)):
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("closing the %s failed", what)

    def prepare(self) -> None:
        """Load and warm up the backend; then observers hear ``on_ready`` (systemd READY=1)."""
        opts = self.options
        self.backend.activate()
        pre = self.backend.make_preprocessor()
        if opts.roi is not None:
            pre.roi = opts.roi
        post = self.backend.make_postprocessor()
        if opts.warmup_runs:
            self.backend.warm_up(opts.warmup_runs)
        delay = opts.inject.delay_ms
        self.pre = delayed(pre, delay.get("preprocess"))
        self.post = post
        self._class_map = delayed(post.class_map, delay.get("postprocess"))
        self._publish = delayed(self._stamp_and_send, delay.get("publish"))
        info = {**self.backend.describe(), "source": self.source.describe(), "publish": self.publisher.bound_endpoint}
        if opts.inject.active:
            log.warning("fault/delay injection is ON (%s): test use only", opts.inject.model_dump(exclude_defaults=True))
        self._notify("on_ready", info)

    def stop(self) -> None:
        """Ask the pipeline to stop: the frame in progress finishes, the rest is counted and dropped."""
        self.stop_event.set()
        self._mailbox.wake()

    @property
    def source_state(self) -> str:
        return self.receiver.state

    def run(self, max_frames: int | None = None, duration_s: float | None = None) -> dict[str, Any]:
        """Run until the source ends, ``max_frames`` frames were received, ``duration_s`` passed or
        :meth:`stop` is called. Returns the summary (counters and latency percentiles)."""
        if self.pre is None:
            self.prepare()
        self._t_start = time.monotonic()
        self._rates.reset()
        deadline = self._t_start + duration_s if duration_s else None
        self.receiver.start(max_frames)
        next_status = time.monotonic()
        announced = self.receiver.state
        try:
            while True:
                now = time.monotonic()
                # A change of source state (stalled, live, reconnecting) is published at once, not at the next
                # period: a stall shows within stall_timeout_s (+ at most 0.1 s, the longest wait below).
                if now >= next_status or self.receiver.state != announced:
                    announced = self.receiver.state
                    self._publish_status()
                    next_status = now + self.options.status_interval_s
                if deadline is not None and now >= deadline:
                    self.stop()
                frame = self._mailbox.take(timeout=max(0.0, min(next_status - now, 0.1)))
                if frame is not None:
                    self._process(frame)
                    self._notify("on_progress")
                    continue
                if self.stop_event.is_set() or self.receiver.done.is_set():
                    # The receiver may have put one last frame just before finishing.
                    last = self._mailbox.drain()
                    if last is None:
                        break
                    if self.stop_event.is_set():
                        self._drop(last, acc.SHUTDOWN)
                    else:
                        self._process(last)
                    continue
                self._notify("on_progress")
        finally:
            self.stop_event.set()
            self.receiver.join(timeout=5)
            leftover = self._mailbox.drain()
            if leftover is not None:
                self._drop(leftover, acc.SHUTDOWN)
            if self.receiver.state != ENDED:
                self.receiver.state = STOPPED
            self._publish_status(final=True)
            self.source.close()
        summary = self.summary()
        self._notify("on_stop", summary)
        return summary

    # ------------------------------------------------------------------------------- worker
    def _superseded(self, frame: Frame) -> None:
        self._drop(frame, acc.SUPERSEDED)

    def _drop(self, frame: Frame, reason: str, detail: str | None = None) -> None:
        self.accounting.on_dropped(reason, detail)
        self._notify("on_frame", reason, None, {})

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter_ns()
        if self.max_age_ns is not None and now_ns() - frame.t_capture_ns > self.max_age_ns:
            self._drop(frame, acc.STALE)
            return
        try:
            x = self.pre(frame.image, frame.color_order)
        except FrameMismatch as exc:
            log.warning("frame %d does not fit the model: %s", frame.seq, exc.what)
            self._drop(frame, acc.INVALID, "contract_mismatch")
            return
        t1 = time.perf_counter_ns()
        backend = self.backend
        if isinstance(backend, InjectingBackend):
            backend.at_frame(frame.seq)
        try:
            outputs = backend.infer({self._input_name: x})
        except Exception as exc:  # any engine failure costs one frame, never the stream
            self._backend_failed(frame, exc)
            return
        if self.backend_state != "ready":
            log.info("backend %s is working again", backend.name)
            self.backend_state, self.backend_error = "ready", None
        t2 = time.perf_counter_ns()
        try:
            mask = self._class_map(outputs)
            frame_size = (int(frame.image.shape[0]), int(frame.image.shape[1]))
            mask_roi = self.options.roi
            contours = self.post.contours(mask, frame_size, roi=mask_roi)
            areas = self.post.areas(mask)
        except Exception as exc:
            log.error("postprocessing failed on frame %d: %r", frame.seq, exc)
            self._drop(frame, acc.POSTPROCESS_ERROR)
            return
        t3 = time.perf_counter_ns()
        contract = backend.contract
        stages = {
            "queue": (t0 - frame.t_receive_ns) / 1e6 if frame.t_receive_ns else 0.0,
            "preprocess": (t1 - t0) / 1e6,
            "infer": (t2 - t1) / 1e6,
            "compute": backend.last_compute_ms,
            "postprocess": (t3 - t2) / 1e6,
        }
        overlay = Overlay(
            seq=frame.seq, t_capture_ns=frame.t_capture_ns, source_id=frame.source_id, model_id=contract.model_id,
            class_names=contract.class_names, class_colors=contract.class_colors, mask=mask, frame_size=frame_size,
            contours=contours, areas_px=areas, stages_ms=stages, mask_roi=mask_roi, geometry=frame.geometry,
            rgba=rgba_mask(mask, contract.class_colors) if self.options.render_rgba else None,
        )
        try:
            ok = self._publish(overlay)
        except Exception:  # an encoding bug must cost one overlay, not the stream
            log.exception("publishing the overlay of frame %d failed", frame.seq)
            ok = False
        if ok is None:  # too old by the time it was ready (a paused or swapping machine): never shown
            self.accounting.on_stale_at_publish()
            self._notify("on_frame", acc.STALE, None, {})
            return
        self.accounting.on_processed()
        self.accounting.on_published(ok)
        for stage, ms in stages.items():
            self.accounting.record_latency(stage, ms)
        self._notify("on_frame", "processed", overlay, stages)

    def _backend_failed(self, frame: Frame, exc: Exception) -> None:
        state = "unreachable" if isinstance(exc, BackendUnavailable) else "failing"
        reason = exc.what if isinstance(exc, BackendError) else repr(exc)
        if (state, reason) != (self.backend_state, self.backend_error):
            log.error("inference failed on frame %d (%s): %s", frame.seq, state, reason)
        self.backend_state, self.backend_error = state, reason
        self._drop(frame, acc.BACKEND_ERROR)

    def _stamp_and_send(self, overlay: Overlay) -> bool | None:
        """Stamp the publish time (and the capture-to-publish ``total``) at the last moment, then send.

        ``None``: the overlay is older than ``max_age_ms`` now and was not sent. The age limit holds at
        publish time as well as when work starts: a machine paused for seconds (SIGSTOP, swapping) must
        not publish a seconds-old overlay as current.
        """
        overlay.t_publish_ns = now_ns()
        if self.max_age_ns is not None and overlay.t_publish_ns - overlay.t_capture_ns > self.max_age_ns:
            return None
        overlay.stages_ms["total"] = (overlay.t_publish_ns - overlay.t_capture_ns) / 1e6
        return self.publisher.send_overlay(overlay)

    # ------------------------------------------------------------------------------- status
    def stream_status(self) -> StreamStatus:
        """The live status, typed."""
        counters = self.accounting.counters()
        fps_in, fps_out = self._rates.rates(counters["received"], counters["processed"])
        latency = self.accounting.latency_summary(recent=True)
        telemetry = None
        if self.telemetry is not None:
            try:
                telemetry = self.telemetry()
            except Exception:
                log.exception("reading device telemetry failed")
        return StreamStatus(
            source_id=self.source.source_id, seq=self._status_seq, t_capture_ns=now_ns(),
            state="running" if not self.stop_event.is_set() else "stopping",
            source_state=self.receiver.state, source_error=self.receiver.error,  # type: ignore[arg-type]
            seconds_since_frame=round(self.receiver.seconds_since_frame(), 3),
            uptime_s=round(time.monotonic() - self._t_start, 3), counters=counters, fps_in=fps_in, fps_out=fps_out,
            latency_ms={k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in latency.items()
                        if k in ("total", "infer", "compute", "queue")},
            model_id=self.backend.contract.model_id, backend=self.backend.name, device=self.backend.device,
            backend_state=self.backend_state, backend_error=self.backend_error,
            peers_refused=self.receiver.peers_refused,
            subscribers_refused=int(getattr(self.security, "refused", 0) or 0),
            device_telemetry=telemetry, extra=self._sink_counts(),
        )

    def _sink_counts(self) -> dict[str, Any]:
        """Per-output counts when there are several outputs (one slow consumer shows, the others do not hide it)."""
        sinks = getattr(self.publisher, "sinks", None)
        if not sinks or len(sinks) < 2:
            return {}
        return {"sinks": [{"endpoint": s.bound_endpoint, "sent": s.sent, "failed": s.failed} for s in sinks]}

    def status(self) -> dict[str, Any]:
        """The live status as the ``status`` topic carries it."""
        return self.stream_status().to_wire()

    def _publish_status(self, final: bool = False) -> None:
        status = self.stream_status()
        if final:
            status.state = "stopped"
            status.end_of_stream = self.receiver.state == ENDED
        wire = status.to_wire()
        self._status_seq += 1
        self.publisher.send_status(wire)
        self._notify("on_status", wire)

    def summary(self) -> dict[str, Any]:
        """Counters, accounting check and whole-run latency percentiles (``--summary`` writes this)."""
        counters = self.accounting.counters()
        return {
            "counters": counters,
            "accounting_ok": counters["received"] == counters["processed"] + counters["dropped_total"]
            and counters["in_flight"] == 0,
            "latency_ms": self.accounting.latency_summary(),
            "source": self.source.describe(),
            "source_state": self.receiver.state,
            "source_crash": self.receiver.crash,
            "backend": self.backend.describe(),
            "duration_s": round(time.monotonic() - self._t_start, 3),
        }

    def _notify(self, hook: str, *args: Any) -> None:
        for obs in self.observers:
            try:
                getattr(obs, hook)(*args)
            except Exception:
                log.exception("observer %s.%s failed", type(obs).__name__, hook)


__all__ = ["Pipeline", "StreamOptions"]
