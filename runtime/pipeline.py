"""The streaming pipeline: source -> preprocess -> infer -> postprocess -> publish.

Two threads::

    receiver thread: source.read() -> validate -> LatestMailbox.put()   (newest frame wins)
    worker (caller's thread): mailbox.take() -> preprocess -> backend.infer -> postprocess -> publish

The receiver never waits on the worker, so a slow model cannot back-pressure the capture; the
mailbox of size one means the worker always takes the freshest frame and everything older is
counted as ``superseded``. The worker also publishes the ``status`` message at least once a second,
including while no frames arrive, so a consumer can tell a stalled source from a live one.

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
from typing import Any

from medstream.runtime import accounting as acc
from medstream.runtime.accounting import FrameAccounting
from medstream.runtime.backends.base import Backend
from medstream.runtime.config import InjectConfig
from medstream.runtime.errors import BackendError, SourceEnded, SourceError
from medstream.runtime.frame import Frame, Overlay, now_ns
from medstream.runtime.mailbox import LatestMailbox
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.preprocess import FrameMismatch
from medstream.runtime.publisher import Publisher
from medstream.runtime.render import rgba_mask
from medstream.runtime.sources.backoff import Backoff
from medstream.runtime.sources.base import Source
from medstream.runtime.wire import WireError

log = logging.getLogger("medstream.pipeline")

# Source states reported in status messages.
STARTING, LIVE, STALLED, RECONNECTING, ENDED, STOPPED = "starting", "live", "stalled", "reconnecting", "ended", "stopped"


class Pipeline:
    """One source, one model, one publisher.

    Parameters
    ----------
    source
        Not yet opened; the receiver thread opens it (and reopens it after a failure, with backoff).
    backend
        Activated and warmed up by :meth:`prepare`.
    publisher
        Bound PUB socket for overlays and status.
    max_age_ms
        Frames older than this (capture to start of work) are dropped as ``stale`` instead of
        processed: a late overlay is worse than none.
    """

    def __init__(self, source: Source, backend: Backend, publisher: Publisher, *,
                 accounting: FrameAccounting | None = None, observers: list[PipelineObserver] | None = None,
                 max_age_ms: float | None = None, render_rgba: bool = False, roi: tuple[int, int, int, int] | None = None,
                 status_interval_s: float = 1.0, stall_timeout_s: float = 1.0, warmup_runs: int = 3,
                 inject: InjectConfig | None = None, telemetry: Callable[[], dict[str, Any]] | None = None) -> None:
        self.source = source
        self.backend = backend
        self.publisher = publisher
        self.accounting = accounting or FrameAccounting()
        self.observers = list(observers or [])
        self.max_age_ns = int(max_age_ms * 1e6) if max_age_ms else None
        self.render_rgba = render_rgba
        self.roi = roi
        self.status_interval_s = status_interval_s
        self.stall_timeout_s = stall_timeout_s
        self.warmup_runs = warmup_runs
        self.inject = inject or InjectConfig()
        self.telemetry = telemetry  # latest device telemetry sample (service layer), for status messages
        self.stop_event = threading.Event()
        self.source_state = STARTING
        self.source_error: str | None = None
        self._mailbox: LatestMailbox[Frame] = LatestMailbox(self._superseded)
        self._receiver_done = threading.Event()
        self._receiver: threading.Thread | None = None
        self._max_frames: int | None = None
        self._last_frame_mono = time.monotonic()
        self._status_seq = 0
        self._t_start = time.monotonic()
        self._rate_mark = (time.monotonic(), 0, 0)
        self._infer_calls = 0
        self.pre = None
        self.post = None
        self._input_name = backend.contract.input.name

    # ------------------------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        """Load and warm up the backend; then observers hear ``on_ready`` (systemd READY=1)."""
        self.backend.activate()
        self.pre = self.backend.make_preprocessor()
        if self.roi is not None:
            self.pre.roi = self.roi
        self.post = self.backend.make_postprocessor()
        if self.warmup_runs:
            self.backend.warm_up(self.warmup_runs)
        info = {**self.backend.describe(), "source": self.source.describe(), "publish": self.publisher.bound_endpoint}
        if self.inject.active:
            log.warning("fault/delay injection is ON (%s): test use only", self.inject.model_dump(exclude_defaults=True))
        self._notify("on_ready", info)

    def stop(self) -> None:
        """Ask the pipeline to stop: the frame in progress finishes, the rest is counted and dropped."""
        self.stop_event.set()
        self._mailbox.wake()

    def run(self, max_frames: int | None = None, duration_s: float | None = None) -> dict[str, Any]:
        """Run until the source ends, ``max_frames`` frames were received, ``duration_s`` passed or
        :meth:`stop` is called. Returns the summary (counters and latency percentiles)."""
        if self.pre is None:
            self.prepare()
        self._max_frames = max_frames
        self._t_start = time.monotonic()
        self._rate_mark = (self._t_start, 0, 0)
        deadline = self._t_start + duration_s if duration_s else None
        self._receiver = threading.Thread(target=self._receive_loop, name="medstream-receiver", daemon=True)
        self._receiver.start()
        next_status = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_status:
                    self._publish_status()
                    next_status = now + self.status_interval_s
                if deadline is not None and now >= deadline:
                    self.stop()
                wait = max(0.0, min(next_status - now, 0.1))
                frame = self._mailbox.take(timeout=wait)
                if frame is not None:
                    self._process(frame)
                    self._notify("on_progress")
                    continue
                if self.stop_event.is_set() or self._receiver_done.is_set():
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
            self._receiver.join(timeout=5)
            leftover = self._mailbox.drain()
            if leftover is not None:
                self._drop(leftover, acc.SHUTDOWN)
            if self.source_state not in (ENDED,):
                self.source_state = STOPPED
            self._publish_status(final=True)
            self.source.close()
        summary = self.summary()
        self._notify("on_stop", summary)
        return summary

    # ------------------------------------------------------------------------------- receiver
    def _receive_loop(self) -> None:
        backoff = Backoff()
        try:
            while not self.stop_event.is_set():
                if self._max_frames is not None and self.accounting.received >= self._max_frames:
                    return
                if not self.source.is_open:
                    try:
                        self.source.open()
                        self._last_frame_mono = time.monotonic()
                        if self.source_state == RECONNECTING:
                            log.info("source %s reopened", self.source.uri.raw)
                    except SourceError as exc:
                        self._source_failed(exc, backoff)
                        continue
                try:
                    frame = self.source.read(timeout=0.05)
                except SourceEnded:
                    self.source_state = ENDED
                    log.info("source %s ended", self.source.uri.raw)
                    return
                except SourceError as exc:
                    self.source.close()
                    self._source_failed(exc, backoff)
                    continue
                except WireError as exc:
                    self.accounting.on_received()
                    self.accounting.on_dropped(acc.INVALID, exc.reason)
                    log.debug("rejected a malformed frame (%s): %s", exc.reason, exc)
                    continue
                if frame is None:
                    if time.monotonic() - self._last_frame_mono > self.stall_timeout_s and self.source_state != STALLED:
                        self.source_state = STALLED
                        log.warning("source %s stalled: no frame for %.1f s", self.source.uri.raw, self.stall_timeout_s)
                    continue
                frame.t_receive_ns = time.perf_counter_ns()
                self._last_frame_mono = time.monotonic()
                if self.source_state != LIVE:
                    if self.source_state in (STALLED, RECONNECTING):
                        log.info("source %s live again", self.source.uri.raw)
                    self.source_state = LIVE
                    self.source_error = None
                    backoff.reset()
                self.accounting.on_received()
                self.accounting.on_sequence(frame.source_id, frame.seq)
                self._mailbox.put(frame)
        except Exception:  # a bug in a source must not leave the worker waiting forever
            log.exception("receiver thread failed on source %s", self.source.uri.raw)
            self.source_state = STOPPED
        finally:
            self._receiver_done.set()
            self._mailbox.wake()

    def _source_failed(self, exc: Exception, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        if self.source_state != RECONNECTING:
            log.error("source %s failed: %s; retrying with backoff", self.source.uri.raw, exc)
        self.source_state = RECONNECTING
        self.source_error = str(exc).splitlines()[0]
        self.stop_event.wait(delay)

    def _superseded(self, frame: Frame) -> None:
        self._drop(frame, acc.SUPERSEDED)

    # ------------------------------------------------------------------------------- worker
    def _drop(self, frame: Frame, reason: str, detail: str | None = None) -> None:
        self.accounting.on_dropped(reason, detail)
        self._notify("on_frame", reason, None, {})

    def _delay(self, stage: str) -> None:
        ms = self.inject.delay_ms.get(stage)
        if ms:
            time.sleep(ms / 1000.0)

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter_ns()
        if self.max_age_ns is not None and now_ns() - frame.t_capture_ns > self.max_age_ns:
            self._drop(frame, acc.STALE)
            return
        try:
            self._delay("preprocess")
            x = self.pre(frame.image, frame.color_order)
        except FrameMismatch as exc:
            log.warning("frame %d does not fit the model: %s", frame.seq, exc.what)
            self._drop(frame, acc.INVALID, "contract_mismatch")
            return
        t1 = time.perf_counter_ns()
        try:
            self._delay("infer")
            self._maybe_fail(frame)
            outputs = self.backend.infer({self._input_name: x})
        except BackendError as exc:
            log.error("inference failed on frame %d: %s", frame.seq, exc.what)
            self._drop(frame, acc.BACKEND_ERROR)
            return
        except Exception as exc:  # any engine failure costs one frame, never the stream
            log.error("inference failed on frame %d: %r", frame.seq, exc)
            self._drop(frame, acc.BACKEND_ERROR)
            return
        t2 = time.perf_counter_ns()
        try:
            self._delay("postprocess")
            mask = self.post.class_map(outputs)
            frame_size = self._frame_size(frame)
            contours = self.post.contours(mask, frame_size)
            areas = self.post.areas(mask)
        except Exception as exc:
            log.error("postprocessing failed on frame %d: %r", frame.seq, exc)
            self._drop(frame, acc.POSTPROCESS_ERROR)
            return
        t3 = time.perf_counter_ns()
        contract = self.backend.contract
        stages = {
            "queue": (t0 - frame.t_receive_ns) / 1e6 if frame.t_receive_ns else 0.0,
            "preprocess": (t1 - t0) / 1e6,
            "infer": (t2 - t1) / 1e6,
            "compute": self.backend.last_compute_ms,
            "postprocess": (t3 - t2) / 1e6,
        }
        overlay = Overlay(
            seq=frame.seq, t_capture_ns=frame.t_capture_ns, source_id=frame.source_id, model_id=contract.model_id,
            class_names=contract.class_names, class_colors=contract.class_colors, mask=mask, frame_size=frame_size,
            contours=contours, areas_px=areas, stages_ms=stages,
            rgba=rgba_mask(mask, contract.class_colors) if self.render_rgba else None,
        )
        self.accounting.on_processed()
        self._delay("publish")
        overlay.t_publish_ns = now_ns()
        stages["total"] = (overlay.t_publish_ns - frame.t_capture_ns) / 1e6
        try:
            ok = self.publisher.send_overlay(overlay)
        except Exception:  # an encoding bug must cost one overlay, not the stream
            log.exception("publishing the overlay of frame %d failed", frame.seq)
            ok = False
        self.accounting.on_published(ok)
        for stage, ms in stages.items():
            self.accounting.record_latency(stage, ms)
        self._notify("on_frame", "processed", overlay, stages)

    def _maybe_fail(self, frame: Frame) -> None:
        inj = self.inject
        if not inj.active:
            return
        self._infer_calls += 1
        if inj.hang_at_seq is not None and frame.seq == inj.hang_at_seq:
            time.sleep(inj.hang_s)
        if inj.error_every and self._infer_calls % inj.error_every == 0:
            raise BackendError(f"injected failure on frame {frame.seq}", "test injection (config 'inject')")

    def _frame_size(self, frame: Frame) -> tuple[int, int]:
        if self.roi is not None:
            return (self.roi[3], self.roi[2])
        return (int(frame.image.shape[0]), int(frame.image.shape[1]))

    # ------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """The live status (also what the ``status`` topic carries)."""
        counters = self.accounting.counters()
        now = time.monotonic()
        t_mark, rec_mark, proc_mark = self._rate_mark
        span = max(now - t_mark, 1e-6)
        fps_in = (counters["received"] - rec_mark) / span
        fps_out = (counters["processed"] - proc_mark) / span
        self._rate_mark = (now, counters["received"], counters["processed"])
        latency = self.accounting.latency_summary(recent=True)
        status = {
            "source_id": getattr(self.source, "source_id", "default"),
            "seq": self._status_seq,
            "t_capture_ns": now_ns(),
            "state": "running" if not self.stop_event.is_set() else "stopping",
            "source_state": self.source_state,
            "source_error": self.source_error,
            "seconds_since_frame": round(now - self._last_frame_mono, 3),
            "uptime_s": round(now - self._t_start, 3),
            "counters": counters,
            "fps_in": round(fps_in, 2),
            "fps_out": round(fps_out, 2),
            "latency_ms": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in latency.items()
                           if k in ("total", "infer", "compute", "queue")},
            "model_id": self.backend.contract.model_id,
            "backend": self.backend.name,
            "device": self.backend.device,
        }
        if self.telemetry is not None:
            try:
                status["device_telemetry"] = self.telemetry()
            except Exception:
                log.exception("reading device telemetry failed")
        return status

    def _publish_status(self, final: bool = False) -> None:
        status = self.status()
        if final:
            status["state"] = "stopped"
        self._status_seq += 1
        self.publisher.send_status(status)
        self._notify("on_status", status)

    def summary(self) -> dict[str, Any]:
        """Counters, accounting check and whole-run latency percentiles (``--summary`` writes this)."""
        counters = self.accounting.counters()
        return {
            "counters": counters,
            "accounting_ok": counters["received"] == counters["processed"] + counters["dropped_total"]
            and counters["in_flight"] == 0,
            "latency_ms": self.accounting.latency_summary(),
            "source": self.source.describe(),
            "source_state": self.source_state,
            "backend": self.backend.describe(),
            "duration_s": round(time.monotonic() - self._t_start, 3),
        }

    def _notify(self, hook: str, *args: Any) -> None:
        for obs in self.observers:
            try:
                getattr(obs, hook)(*args)
            except Exception:
                log.exception("observer %s.%s failed", type(obs).__name__, hook)
