"""The streaming pipeline: source -> preprocess -> infer -> postprocess -> publish, and its lifetime.

Two threads::

    receiver thread (stream/receiver.py): source.read() -> validate, count -> LatestMailbox.put()  (newest wins)
    worker (caller's thread, here):       mailbox.take() -> preprocess -> backend.infer -> postprocess -> publish

The receiver never waits on the worker, so a slow model cannot back-pressure the capture; the
mailbox of size one means the worker always takes the freshest frame and everything older is
counted as ``superseded``. The worker also publishes the ``status`` message at least once a second,
including while no frames arrive, so a consumer can tell a stalled source from a live one.

Several streams (config ``streams:``) share one model and one worker: each stream has its own receiver,
latest-frame slot, accounting, status and topic; the worker takes every waiting frame at once
(:class:`~medstream.runtime.mailbox.LatestSlots`, rotating so no stream starves) and, when the model has a
dynamic batch axis, runs them as one batch. One session instead of one per stream: two ONNX Runtime sessions
in two processes fought for the same two cores (2 streams at p50 130 ms, 4.6x the floor, 56 % of capacity).

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

import numpy as np

from medstream.runtime import accounting as acc
from medstream.runtime.accounting import FrameAccounting
from medstream.runtime.backends.base import Backend
from medstream.runtime.config import InjectConfig
from medstream.runtime.decoders import make_decoder, uses_argmax
from medstream.runtime.errors import BackendError, BackendUnavailable
from medstream.runtime.frame import Frame, Overlay, now_ns
from medstream.runtime.mailbox import LatestSlots
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.preprocess import FrameMismatch
from medstream.runtime.render import rgba_mask
from medstream.runtime.sinks import OverlaySinks
from medstream.runtime.sources.base import Source
from medstream.runtime.stream.heads import ModelHead
from medstream.runtime.stream.injection import InjectingBackend, delayed
from medstream.runtime.stream.receiver import Receiver
from medstream.runtime.stream.status import ENDED, STOPPED, RateMeter, StreamStatus
from medstream.runtime.stream.warmup import warm_up_and_refine

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
    max_batch: int = 0
    """Frames of different streams per inference: 0 = one per stream when the model's batch axis is dynamic."""
    batch_wait_ms: float = 0.0
    """Once one stream's frame waits, wait up to this long for the others to fill a batch (0: take what waits)."""
    stream_rois: tuple[tuple[int, int, int, int] | None, ...] = ()
    """Several streams: each stream's ROI (``roi`` is the first stream's when this is empty)."""
    low_confidence_below: float | None = 0.5
    """Overlays whose confidence is under this are flagged ``low_confidence`` and counted (None: never)."""


@dataclass
class Lane:
    """One stream inside a pipeline: its source, receiver thread, accounting and status sequence."""

    index: int
    source: Source
    receiver: Receiver
    accounting: FrameAccounting
    rates: RateMeter = field(default_factory=RateMeter)
    status_seq: int = 0
    roi: tuple[int, int, int, int] | None = None
    pre: Any = None  # this stream's preprocessor (its own ROI), made by prepare()
    stream_id: str | None = None
    """Several streams: the configured id, carried by this stream's overlays (senders may share an id)."""


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

    def __init__(self, source: Source | list[Source], backend: Backend, publisher: OverlaySinks, *,
                 security: Closeable | None = None, options: StreamOptions | None = None,
                 accounting: FrameAccounting | None = None, observers: list[PipelineObserver] | None = None,
                 telemetry: Callable[[], dict[str, Any]] | None = None, heads: list[ModelHead] | None = None) -> None:
        self.options = options or StreamOptions()
        opts = self.options
        sources = list(source) if isinstance(source, list | tuple) else [source]
        self.backend: Backend = InjectingBackend(backend, opts.inject) if opts.inject.active else backend
        self.heads = list(heads or [])  # further models on the same frame (stream/heads.py)
        self.publisher = publisher
        self.security = security
        self.observers = list(observers or [])
        self.max_age_ns = int(opts.max_age_ms * 1e6) if opts.max_age_ms else None
        self.telemetry = telemetry
        self.stop_event = threading.Event()
        self._slots: LatestSlots[Frame] = LatestSlots(len(sources), self._superseded)
        self.lanes: list[Lane] = []
        for i, src in enumerate(sources):
            lane_acc = accounting if (accounting is not None and i == 0) else FrameAccounting()
            roi = opts.stream_rois[i] if i < len(opts.stream_rois) else (opts.roi if i == 0 else None)
            self.lanes.append(Lane(i, src, Receiver(src, self._slots.slot(i), lane_acc, self.stop_event,
                                                    opts.stall_timeout_s), lane_acc, roi=roi,
                                   stream_id=src.source_id if len(sources) > 1 else None))
        dynamic = backend.contract.input.dynamic_batch
        want = opts.max_batch or len(sources)
        self.max_batch = max(1, min(want, len(sources))) if dynamic else 1
        self._t_start = time.monotonic()
        self._closed = False
        self.backend_state = "ready"
        self.backend_error: str | None = None
        self.pre = None
        self.post = None
        self._input_name = backend.contract.input.name

    # The first stream's parts, by their single-stream names.
    @property
    def source(self) -> Source:
        return self.lanes[0].source

    @source.setter
    def source(self, value: Source) -> None:
        self.lanes[0].source = value

    @property
    def receiver(self) -> Receiver:
        return self.lanes[0].receiver

    @property
    def accounting(self) -> FrameAccounting:
        return self.lanes[0].accounting

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
        closers = [("source", lane.source.close) for lane in self.lanes]
        closers += [(f"model {h.model_id}", h.backend.deactivate) for h in self.heads]
        for what, close in (*closers, ("backend", self.backend.deactivate), ("publisher", self.publisher.close),
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
        delay = opts.inject.delay_ms
        for lane in self.lanes:
            pre = self.backend.make_preprocessor()
            if lane.roi is not None:
                pre.roi = lane.roi
            lane.pre = delayed(pre, delay.get("preprocess"))
        # The contract's task picks the output decoder (runtime/decoders); segmentation keeps the backend's argmax.
        post = self.backend.make_postprocessor() if uses_argmax(self.backend.contract) else None
        self.decoder = make_decoder(self.backend.contract, postprocessor=post,
                                    low_confidence_below=opts.low_confidence_below)
        if opts.warmup_runs:
            self._warm_up(opts.warmup_runs)
        for head in self.heads:
            head.prepare([lane.roi for lane in self.lanes], opts.warmup_runs)
        self.pre = self.lanes[0].pre
        self.post = post
        self._decode = delayed(self.decoder, delay.get("postprocess"))
        self._publish = delayed(self._stamp_and_send, delay.get("publish"))
        info = {**self.backend.describe(), "source": self.source.describe(), "publish": self.publisher.bound_endpoint,
                "streams": len(self.lanes), "max_batch": self.max_batch}
        if opts.inject.active:
            log.warning("fault/delay injection is ON (%s): test use only", opts.inject.model_dump(exclude_defaults=True))
        self._notify("on_ready", info)

    def stop(self) -> None:
        """Ask the pipeline to stop: the frame in progress finishes, the rest is counted and dropped."""
        self.stop_event.set()
        self._slots.wake()

    @property
    def source_state(self) -> str:
        return self.receiver.state

    def run(self, max_frames: int | None = None, duration_s: float | None = None) -> dict[str, Any]:
        """Run until every source ends, ``max_frames`` frames were received (per stream), ``duration_s``
        passed or :meth:`stop` is called. Returns the summary (counters and latency percentiles)."""
        if self.pre is None:
            self.prepare()
        self._t_start = time.monotonic()
        for lane in self.lanes:
            lane.rates.reset()
        deadline = self._t_start + duration_s if duration_s else None
        for lane in self.lanes:
            lane.receiver.start(max_frames)
        next_status = time.monotonic()
        announced = [lane.receiver.state for lane in self.lanes]
        gather_s = self.options.batch_wait_ms / 1000.0
        try:
            while True:
                now = time.monotonic()
                # A change of source state (stalled, live, reconnecting) is published at once, not at the next
                # period: a stall shows within stall_timeout_s (+ at most 0.1 s, the longest wait below).
                states = [lane.receiver.state for lane in self.lanes]
                if now >= next_status or states != announced:
                    announced = states
                    for lane in self.lanes:
                        self._publish_status(lane)
                    next_status = now + self.options.status_interval_s
                if deadline is not None and now >= deadline:
                    self.stop()
                ready = self._slots.take_ready(max(0.0, min(next_status - now, 0.1)), self.max_batch, gather_s)
                if ready:
                    self._work(ready)
                    self._notify("on_progress")
                    continue
                if self.stop_event.is_set() or all(lane.receiver.done.is_set() for lane in self.lanes):
                    # A receiver may have put one last frame just before finishing.
                    last = self._slots.drain()
                    if not last:
                        break
                    if self.stop_event.is_set():
                        for index, frame in last:
                            self._drop(self.lanes[index], frame, acc.SHUTDOWN)
                    else:
                        self._work(last)
                    continue
                self._notify("on_progress")
        finally:
            self.stop_event.set()
            for lane in self.lanes:
                lane.receiver.join(timeout=5)
            for index, frame in self._slots.drain():
                self._drop(self.lanes[index], frame, acc.SHUTDOWN)
            for lane in self.lanes:
                if lane.receiver.state != ENDED:
                    lane.receiver.state = STOPPED
                self._publish_status(lane, final=True)
                lane.source.close()
        summary = self.summary()
        self._notify("on_stop", summary)
        return summary

    # ------------------------------------------------------------------------------- worker
    def _superseded(self, index: int, frame: Frame) -> None:
        self._drop(self.lanes[index], frame, acc.SUPERSEDED)

    def _drop(self, lane: Lane, frame: Frame, reason: str, detail: str | None = None) -> None:
        lane.accounting.on_dropped(reason, detail)
        self._notify("on_frame", reason, None, {})

    def _work(self, ready: list[tuple[int, Frame]]) -> None:
        """Process what the slots gave: one inference per frame, or one for all when batching."""
        if len(ready) == 1 or self.max_batch == 1:
            for index, frame in ready:
                self._process(self.lanes[index], frame)
            return
        self._process_batch(ready)

    def _prepare_input(self, lane: Lane, frame: Frame) -> Any | None:
        """The model input for ``frame``, or ``None`` when it was dropped (stale, does not fit the model)."""
        if self.max_age_ns is not None and now_ns() - frame.t_capture_ns > self.max_age_ns:
            self._drop(lane, frame, acc.STALE)
            return None
        try:
            return lane.pre(frame.image, frame.color_order)
        except FrameMismatch as exc:
            log.warning("frame %d of %s does not fit the model: %s", frame.seq, frame.source_id, exc.what)
            self._drop(lane, frame, acc.INVALID, "contract_mismatch")
            return None

    def _infer(self, x: Any, frames: list[tuple[Lane, Frame]]) -> dict[str, Any] | None:
        backend = self.backend
        if isinstance(backend, InjectingBackend):
            backend.at_frame(frames[0][1].seq)
        try:
            outputs = backend.infer({self._input_name: x})
        except Exception as exc:  # any engine failure costs these frames, never the stream
            for lane, frame in frames:
                self._backend_failed(lane, frame, exc)
            return None
        if self.backend_state != "ready":
            log.info("backend %s is working again", backend.name)
            self.backend_state, self.backend_error = "ready", None
        return outputs

    def _process(self, lane: Lane, frame: Frame) -> None:
        t0 = time.perf_counter_ns()
        x = self._prepare_input(lane, frame)
        if x is None:
            return
        t1 = time.perf_counter_ns()
        outputs = self._infer(x, [(lane, frame)])
        if outputs is None:
            return
        t2 = time.perf_counter_ns()
        self._finish(lane, frame, outputs, {
            "queue": (t0 - frame.t_receive_ns) / 1e6 if frame.t_receive_ns else 0.0,
            "preprocess": (t1 - t0) / 1e6, "infer": (t2 - t1) / 1e6, "compute": self.backend.last_compute_ms,
            **self._backend_stages()})

    def _process_batch(self, ready: list[tuple[int, Frame]]) -> None:
        """Frames of several streams through one inference (the model's batch axis is dynamic)."""
        t0 = time.perf_counter_ns()
        items, inputs = [], []
        for index, frame in ready:
            lane = self.lanes[index]
            x = self._prepare_input(lane, frame)
            if x is not None:
                items.append((lane, frame))
                inputs.append(np.array(x, copy=True))  # a preprocessor may reuse its output buffer
        if not items:
            return
        t1 = time.perf_counter_ns()
        outputs = self._infer(np.concatenate(inputs, axis=0), items)
        if outputs is None:
            return
        t2 = time.perf_counter_ns()
        per_frame_pre = (t1 - t0) / 1e6 / len(items)
        for k, (lane, frame) in enumerate(items):
            mine = {name: value[k:k + 1] for name, value in outputs.items()}
            self._finish(lane, frame, mine, {
                "queue": (t0 - frame.t_receive_ns) / 1e6 if frame.t_receive_ns else 0.0,
                "preprocess": per_frame_pre, "infer": (t2 - t1) / 1e6, "compute": self.backend.last_compute_ms,
                "batch": float(len(items)), **self._backend_stages()})

    def _backend_stages(self) -> dict[str, float]:
        """Extra stage times the backend reports for its last call (Triton: network, server_queue, server_compute)."""
        inner = getattr(self.backend, "inner", self.backend)  # through the fault-injection wrapper
        return dict(getattr(inner, "last_stages_ms", None) or {})

    def _finish(self, lane: Lane, frame: Frame, outputs: dict[str, Any], stages: dict[str, float]) -> None:
        """Decode the model's outputs for ``frame``, publish the overlay, count the outcome."""
        t2 = time.perf_counter_ns()
        try:
            overlay = self._make_overlay(lane, frame, outputs, stages)
        except Exception as exc:
            log.error("postprocessing failed on frame %d of %s: %r", frame.seq, frame.source_id, exc)
            self._drop(lane, frame, acc.POSTPROCESS_ERROR)
            return
        stages["postprocess"] = (time.perf_counter_ns() - t2) / 1e6
        try:
            ok = self._publish(overlay)
        except Exception:  # an encoding bug must cost one overlay, not the stream
            log.exception("publishing the overlay of frame %d failed", frame.seq)
            ok = False
        if ok is None:  # too old by the time it was ready (a paused or swapping machine): never shown
            lane.accounting.on_stale_at_publish()
            self._notify("on_frame", acc.STALE, None, {})
            return
        lane.accounting.on_processed()
        if overlay.low_confidence:
            lane.accounting.on_low_confidence()
        lane.accounting.on_published(ok)
        for stage, ms in stages.items():
            lane.accounting.record_latency(stage, ms)
        self._notify("on_frame", "processed", overlay, stages)
        for head in self.heads:  # further models, on the same frame, each with its own overlay and counts
            self._run_head(head, lane, frame)

    def _run_head(self, head: ModelHead, lane: Lane, frame: Frame) -> None:
        extra, reason = head.run(lane.index, lane.roi, frame, lane.stream_id or frame.source_id,
                                 self.options.render_rgba)
        if extra is None:
            head.count(None, reason or "invalid")
            return
        try:
            ok = self._stamp_and_send(extra)
        except Exception:
            log.exception("publishing the overlay of model %s for frame %d failed", head.model_id, frame.seq)
            ok = False
        head.count(extra, "published" if ok else ("stale" if ok is None else "publish_failed"))

    def _make_overlay(self, lane: Lane, frame: Frame, outputs: dict[str, Any], stages: dict[str, float]) -> Overlay:
        """The overlay of one frame from the model's outputs for it (batch of one), in source-frame coordinates."""
        frame_size = (int(frame.image.shape[0]), int(frame.image.shape[1]))
        decoded = self._decode(outputs, frame_size, lane.roi)
        contract = self.backend.contract
        return Overlay(
            seq=frame.seq, t_capture_ns=frame.t_capture_ns, source_id=lane.stream_id or frame.source_id,
            model_id=contract.model_id, class_names=contract.class_names, class_colors=contract.class_colors,
            mask=decoded.mask, frame_size=frame_size, stages_ms=stages, geometry=frame.geometry,
            rgba=rgba_mask(decoded.mask, contract.class_colors) if self.options.render_rgba else None,
            **decoded.overlay_fields(),
        )

    def _warm_up(self, runs: int) -> None:
        """Warm up on zeros (bypassing fault injection) and pick the decoder the real outputs call for."""
        inner = getattr(self.backend, "inner", self.backend)
        self.decoder = warm_up_and_refine(inner, self.decoder, runs)

    def _backend_failed(self, lane: Lane, frame: Frame, exc: Exception) -> None:
        state = "unreachable" if isinstance(exc, BackendUnavailable) else "failing"
        reason = exc.what if isinstance(exc, BackendError) else repr(exc)
        if (state, reason) != (self.backend_state, self.backend_error):
            log.error("inference failed on frame %d (%s): %s", frame.seq, state, reason)
        self.backend_state, self.backend_error = state, reason
        self._drop(lane, frame, acc.BACKEND_ERROR)

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
    def stream_status(self, lane: Lane | None = None) -> StreamStatus:
        """The live status of one stream (the first by default), typed."""
        lane = lane or self.lanes[0]
        counters = lane.accounting.counters()
        fps_in, fps_out = lane.rates.rates(counters["received"], counters["processed"])
        latency = lane.accounting.latency_summary(recent=True)
        telemetry = None
        if self.telemetry is not None:
            try:
                telemetry = self.telemetry()
            except Exception:
                log.exception("reading device telemetry failed")
        receiver = lane.receiver
        return StreamStatus(
            source_id=lane.source.source_id, seq=lane.status_seq, t_capture_ns=now_ns(),
            state="running" if not self.stop_event.is_set() else "stopping",
            source_state=receiver.state, source_error=receiver.error,  # type: ignore[arg-type]
            seconds_since_frame=round(receiver.seconds_since_frame(), 3),
            uptime_s=round(time.monotonic() - self._t_start, 3), counters=counters, fps_in=fps_in, fps_out=fps_out,
            latency_ms={k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in latency.items()
                        if k in ("total", "infer", "compute", "queue")},
            model_id=self.backend.contract.model_id, backend=self.backend.name, device=self.backend.device,
            backend_state=self.backend_state, backend_error=self.backend_error,
            peers_refused=receiver.peers_refused,
            subscribers_refused=int(getattr(self.security, "refused", 0) or 0),
            low_confidence_below=self.options.low_confidence_below,
            device_telemetry=telemetry, extra={**self._sink_counts(), **self._head_counts(recent=True)},
        )

    def _head_counts(self, recent: bool = False) -> dict[str, Any]:
        """Each further model's outcomes and latency (``models:``); empty with one model."""
        if not self.heads:
            return {}
        return {"models": [h.counts.to_dict(h.model_id, recent=recent) for h in self.heads]}

    def _sink_counts(self) -> dict[str, Any]:
        """Per-output counts when there are several outputs (one slow consumer shows, the others do not hide it)."""
        sinks = self.publisher.sinks
        if len(sinks) < 2:
            return {}
        return {"sinks": [{"endpoint": s.bound_endpoint, "sent": s.sent, "failed": s.failed} for s in sinks]}

    def status(self) -> dict[str, Any]:
        """The live status as the ``status`` topic carries it."""
        return self.stream_status().to_wire()

    def _publish_status(self, lane: Lane | None = None, final: bool = False) -> None:
        lane = lane or self.lanes[0]
        status = self.stream_status(lane)
        if final:
            status.state = "stopped"
            status.end_of_stream = lane.receiver.state == ENDED
        wire = status.to_wire()
        lane.status_seq += 1
        self.publisher.send_status(wire)
        self._notify("on_status", wire)

    def summary(self) -> dict[str, Any]:
        """Counters, accounting check and whole-run latency percentiles (``--summary`` writes this).

        With several streams: ``streams`` holds each stream's own summary; ``counters`` and
        ``accounting_ok`` at the top are over all of them, ``latency_ms`` is the worst stream's.
        """
        per_lane = [self._lane_summary(lane) for lane in self.lanes]
        if len(per_lane) == 1:
            return {**per_lane[0], **self._head_counts()}
        counters = _sum_counters([p["counters"] for p in per_lane])
        return {
            "counters": counters,
            "accounting_ok": all(p["accounting_ok"] for p in per_lane),
            # the worst stream's figures (by p99 of capture to publish): what the slowest probe sees
            "latency_ms": max((p["latency_ms"] for p in per_lane),
                              key=lambda lat: lat.get("total", {}).get("p99", -1.0)),
            "streams": per_lane,
            "source_state": "ended" if all(p["source_state"] == "ended" for p in per_lane) else "stopped",
            "source_crash": next((p["source_crash"] for p in per_lane if p["source_crash"]), None),
            "backend": self.backend.describe(),
            "max_batch": self.max_batch,
            **self._head_counts(),
            "duration_s": round(time.monotonic() - self._t_start, 3),
        }

    def _lane_summary(self, lane: Lane) -> dict[str, Any]:
        counters = lane.accounting.counters()
        return {
            "counters": counters,
            "accounting_ok": counters["received"] == counters["processed"] + counters["dropped_total"]
            and counters["in_flight"] == 0,
            "latency_ms": lane.accounting.latency_summary(),
            "source": lane.source.describe(),
            "source_state": lane.receiver.state,
            "source_crash": lane.receiver.crash,
            "backend": self.backend.describe(),
            "duration_s": round(time.monotonic() - self._t_start, 3),
        }

    def _notify(self, hook: str, *args: Any) -> None:
        for obs in self.observers:
            try:
                getattr(obs, hook)(*args)
            except Exception:
                log.exception("observer %s.%s failed", type(obs).__name__, hook)


def _sum_counters(all_counters: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several streams added up (numbers add, per-reason maps add by key)."""
    total: dict[str, Any] = {}
    for counters in all_counters:
        for key, value in counters.items():
            if isinstance(value, dict):
                merged = total.setdefault(key, {})
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


__all__ = ["Lane", "Pipeline", "StreamOptions"]
