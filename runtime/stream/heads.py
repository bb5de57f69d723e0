"""More models on the same frame (config ``models:``; Holoscan's multi-AI ultrasound pattern).

The first model in ``models:`` is the stream's primary model: the pipeline runs it as always (batching,
accounting: a frame the primary cannot process is dropped once, for all). Every further model is a
:class:`ModelHead` that runs on the same freshest frame right after the primary's overlay is out, and
publishes its own overlay with the frame's ``seq``, ``t_capture_ns`` and source id and its own
``model_id`` (one overlay per model per frame, on the same topic: a consumer groups them by
``(source_id, seq)``). Each head counts its own outcomes (published, dropped by reason) and latency,
reported in the status and the summary under ``models``, so a second model that fails or runs late is
visible without changing the frame accounting of the stream.

Why in series and not concurrently: on the CPU each ONNX Runtime session already uses every core; on a
GPU, concurrent execution on separate CUDA streams is the TensorRT backend's business (not run here).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from medstream.runtime.accounting import LatencyStats
from medstream.runtime.backends.base import Backend
from medstream.runtime.decoders import make_decoder, uses_argmax
from medstream.runtime.errors import MedstreamError
from medstream.runtime.frame import Frame, Overlay
from medstream.runtime.preprocess import FrameMismatch
from medstream.runtime.render import rgba_mask
from medstream.runtime.stream.warmup import warm_up_and_refine

log = logging.getLogger("medstream.pipeline")


@dataclass
class HeadCounts:
    """One additional model's outcomes on the frames the primary processed."""

    published: int = 0
    dropped: Counter = field(default_factory=Counter)
    latency: dict[str, LatencyStats] = field(default_factory=dict)

    def to_dict(self, model_id: str, recent: bool = False) -> dict[str, Any]:
        return {"model_id": model_id, "published": self.published, "dropped": dict(self.dropped),
                "latency_ms": {k: (v.recent_summary() if recent else v.summary()) for k, v in self.latency.items()}}


class ModelHead:
    """An additional model: its own backend, preprocessor per stream (its own input size and ROI), decoder."""

    def __init__(self, backend: Backend, low_confidence_below: float | None = None) -> None:
        self.backend = backend
        self.contract = backend.contract
        self.low_confidence_below = low_confidence_below
        self.pres: dict[int, Any] = {}
        self.decoder: Any = None
        self.counts = HeadCounts()

    @property
    def model_id(self) -> str:
        return self.contract.model_id

    def prepare(self, rois: list[tuple[int, int, int, int] | None], warmup_runs: int) -> None:
        """Activate, make one preprocessor per stream, pick the decoder and check it on a warm-up output."""
        self.backend.activate()
        for index, roi in enumerate(rois):
            pre = self.backend.make_preprocessor()
            if roi is not None:
                pre.roi = roi
            self.pres[index] = pre
        post = self.backend.make_postprocessor() if uses_argmax(self.contract) else None
        self.decoder = make_decoder(self.contract, postprocessor=post, low_confidence_below=self.low_confidence_below)
        self.decoder = warm_up_and_refine(self.backend, self.decoder, max(1, warmup_runs), what="additional model")

    def run(self, lane_index: int, roi: tuple[int, int, int, int] | None, frame: Frame, source_id: str,
            render_rgba: bool) -> tuple[Overlay | None, str | None]:
        """``(overlay, None)`` or ``(None, drop reason)`` for this model on ``frame``."""
        t0 = time.perf_counter_ns()
        try:
            x = self.pres[lane_index](frame.image, frame.color_order)
        except FrameMismatch:
            return None, "invalid"
        t1 = time.perf_counter_ns()
        try:
            outputs = self.backend.infer({self.contract.input.name: x})
        except Exception as exc:
            log.error("additional model %s failed on frame %d: %s", self.model_id, frame.seq,
                      exc.what if isinstance(exc, MedstreamError) else repr(exc))
            return None, "backend_error"
        t2 = time.perf_counter_ns()
        frame_size = (int(frame.image.shape[0]), int(frame.image.shape[1]))
        try:
            decoded = self.decoder(outputs, frame_size, roi)
        except Exception as exc:
            log.error("additional model %s: postprocessing failed on frame %d: %r", self.model_id, frame.seq, exc)
            return None, "postprocess_error"
        stages = {"preprocess": (t1 - t0) / 1e6, "infer": (t2 - t1) / 1e6, "compute": self.backend.last_compute_ms,
                  "postprocess": (time.perf_counter_ns() - t2) / 1e6}
        c = self.contract
        return Overlay(seq=frame.seq, t_capture_ns=frame.t_capture_ns, source_id=source_id, model_id=c.model_id,
                       class_names=c.class_names, class_colors=c.class_colors, mask=decoded.mask, frame_size=frame_size,
                       stages_ms=stages, geometry=frame.geometry,
                       rgba=rgba_mask(decoded.mask, c.class_colors) if render_rgba else None,
                       **decoded.overlay_fields()), None

    def count(self, overlay: Overlay | None, outcome: str) -> None:
        if outcome == "published" and overlay is not None:
            self.counts.published += 1
            for stage, ms in overlay.stages_ms.items():
                self.counts.latency.setdefault(stage, LatencyStats()).record_ms(ms)
        else:
            self.counts.dropped[outcome] += 1


__all__ = ["HeadCounts", "ModelHead"]
