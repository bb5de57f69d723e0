"""Frame accounting and latency statistics: the runtime's proof that no frame goes missing.

Invariant, at every moment: ``received == processed + sum(dropped.values()) + in_flight``, where
``in_flight`` is bounded by the pipeline's depth (the one-frame mailbox plus the frame being worked
on) and is zero once the pipeline has stopped. Every frame ends in exactly one of ``processed`` or
``dropped[reason]``; ``published`` counts overlays handed to the socket (at most ``processed``).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

# Drop reasons, stable strings: they are counter labels, metric labels and summary keys.
SUPERSEDED = "superseded"        # a newer frame arrived before the worker took this one
INVALID = "invalid"              # malformed message or frame that does not fit the model contract
BACKEND_ERROR = "backend_error"  # inference raised for this frame
STALE = "stale"                  # older than max_age_ms when the worker got to it, or when its overlay was ready
SHUTDOWN = "shutdown"            # waiting in the mailbox when the pipeline stopped
POSTPROCESS_ERROR = "postprocess_error"

_MAX_LATENCY_US = 60_000_000  # one minute: anything older is clamped, not lost

#: Source ids whose last ``seq`` is remembered (least recently seen evicted first). A real deployment has
#: one to a few senders; each entry costs ~250 bytes, so a sender cycling through 179,000 made-up ids
#: grew the process by 44 MB before this bound (issue 14). An evicted id that comes back starts afresh
#: (no gap counted for it), and evictions are counted (``source_ids_evicted``).
MAX_TRACKED_SOURCE_IDS = 64
#: The largest ``seq`` gap believed as frames lost upstream. ``seq`` is the sender's claim: a larger jump is
#: a sender restart or a lie (one sender claimed 5.5e19 lost frames), counted in ``seq_jumps``, never added.
#: 10,000 frames is about 2.8 minutes at 60 fps; an outage that long also shows as ``stalled``.
MAX_SEQ_GAP = 10_000


@dataclass
class LatencyStats:
    """Latency of one stage: a cumulative HdrHistogram (microseconds) and a recent window.

    The histogram gives exact-enough tail percentiles over a whole run (3 significant digits);
    the window (last ``window`` samples) gives live figures for the status message.
    """

    window: int = 600
    hist: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _MAX_LATENCY_US, 3))
    recent: deque = field(default_factory=deque)

    def record_ms(self, ms: float) -> None:
        us = int(min(max(ms * 1000.0, 1), _MAX_LATENCY_US))
        self.hist.record_value(us)
        self.recent.append(ms)
        if len(self.recent) > self.window:
            self.recent.popleft()

    def summary(self) -> dict[str, float]:
        """Whole-run percentiles in milliseconds (empty dict before the first sample)."""
        if self.hist.get_total_count() == 0:
            return {}
        pct = {f"p{p:g}": self.hist.get_value_at_percentile(p) / 1000.0 for p in (50, 90, 99, 99.9)}
        return {"count": self.hist.get_total_count(), "mean": self.hist.get_mean_value() / 1000.0,
                "min": self.hist.get_min_value() / 1000.0, **pct, "max": self.hist.get_max_value() / 1000.0}

    def recent_summary(self) -> dict[str, float]:
        if not self.recent:
            return {}
        arr = np.fromiter(self.recent, dtype=np.float64)
        p50, p90, p99 = np.percentile(arr, (50, 90, 99))
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(arr.max())}


class FrameAccounting:
    """Thread-safe counters for one pipeline (one source)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.published = 0
        self.publish_failed = 0
        self.lost_upstream = 0
        self.seq_jumps = 0
        self.source_ids_evicted = 0
        self._last_seq: OrderedDict[str, int] = OrderedDict()  # LRU, at most MAX_TRACKED_SOURCE_IDS ids
        self._invalid_since_accepted = 0
        self.dropped: Counter[str] = Counter()
        self.invalid_by_reason: Counter[str] = Counter()
        self.stale_at_publish = 0  # of dropped['stale']: fresh when work started, too old once the overlay was ready
        self.low_confidence = 0  # of processed: overlays flagged low_confidence (model.low_confidence_below)
        self.latency: dict[str, LatencyStats] = {}

    # ---- events, one call per frame outcome
    def on_received(self, n: int = 1) -> None:
        with self._lock:
            self.received += n

    def on_sequence(self, source_id: str, seq: int) -> None:
        """Count frames lost *before* this process saw them, from gaps in an accepted frame's ``seq``.

        Call it for accepted (decoded, valid) frames only. Such lost frames were never received, so they
        are outside the received = processed + dropped invariant; ``lost_upstream`` makes them visible (a
        sender or network dropping frames). Messages received but rejected as malformed since the last
        accepted frame (:meth:`on_invalid_message`) are taken off the gap: they were received, and are
        already counted in ``dropped{invalid}``. A seq that goes backwards means the sender restarted:
        counting starts again from it. A gap over :data:`MAX_SEQ_GAP` is counted in ``seq_jumps`` and
        not believed. At most :data:`MAX_TRACKED_SOURCE_IDS` ids are remembered (least recently seen
        evicted, counted in ``source_ids_evicted``).
        """
        with self._lock:
            invalid, self._invalid_since_accepted = self._invalid_since_accepted, 0
            table = self._last_seq
            last = table.pop(source_id, None)
            if last is not None and seq > last + 1:
                gap = seq - last - 1
                if gap > MAX_SEQ_GAP:
                    self.seq_jumps += 1
                else:
                    self.lost_upstream += max(0, gap - invalid)
            table[source_id] = seq  # (re)inserted last: the most recently seen
            if len(table) > MAX_TRACKED_SOURCE_IDS:
                table.popitem(last=False)
                self.source_ids_evicted += 1

    def on_invalid_message(self) -> None:
        """A message received and rejected as malformed: it may carry a ``seq`` the next gap would count."""
        with self._lock:
            self._invalid_since_accepted += 1

    def on_dropped(self, reason: str, detail: str | None = None, n: int = 1) -> None:
        with self._lock:
            self.dropped[reason] += n
            if detail is not None:
                self.invalid_by_reason[detail] += n

    def on_stale_at_publish(self) -> None:
        """A frame whose overlay was ready only after ``max_age_ms``: dropped as ``stale``, never published."""
        with self._lock:
            self.dropped[STALE] += 1
            self.stale_at_publish += 1

    def on_processed(self) -> None:
        with self._lock:
            self.processed += 1

    def on_low_confidence(self) -> None:
        """A processed frame whose overlay the model was unsure of (its ``low_confidence`` flag): counted, still
        published, so a viewer can show the warning."""
        with self._lock:
            self.low_confidence += 1

    def on_published(self, ok: bool = True) -> None:
        with self._lock:
            if ok:
                self.published += 1
            else:
                self.publish_failed += 1

    def record_latency(self, stage: str, ms: float) -> None:
        with self._lock:
            stats = self.latency.get(stage)
            if stats is None:
                stats = self.latency[stage] = LatencyStats()
            stats.record_ms(ms)

    # ---- views
    @property
    def in_flight(self) -> int:
        with self._lock:
            return self.received - self.processed - sum(self.dropped.values())

    def counters(self) -> dict[str, Any]:
        """A consistent snapshot of the counters (taken under the lock)."""
        with self._lock:
            dropped = dict(self.dropped)
            return {
                "received": self.received,
                "processed": self.processed,
                "published": self.published,
                "publish_failed": self.publish_failed,
                "lost_upstream": self.lost_upstream,
                "seq_jumps": self.seq_jumps,
                "source_ids_tracked": len(self._last_seq),
                "source_ids_evicted": self.source_ids_evicted,
                "dropped": dropped,
                "dropped_total": sum(dropped.values()),
                "invalid_by_reason": dict(self.invalid_by_reason),
                "stale_at_publish": self.stale_at_publish,
                "low_confidence": self.low_confidence,
                "in_flight": self.received - self.processed - sum(dropped.values()),
            }

    def latency_summary(self, recent: bool = False) -> dict[str, dict[str, float]]:
        with self._lock:
            return {k: (v.recent_summary() if recent else v.summary()) for k, v in self.latency.items()}
