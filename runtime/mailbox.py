"""A mailbox of size one: the latest-frame policy that bounds latency.

The receiver thread puts every frame it gets; a frame still waiting when a newer one arrives is
replaced and reported to ``on_superseded`` (counted as dropped, reason ``superseded``). The worker
always takes the newest frame. Unlike a queue, nothing old can pile up, so the age of what the
worker processes is bounded by one inference time plus one source period (Holoscan's ``kPop``
policy, GStreamer's ``leaky=downstream max-size-buffers=1``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestMailbox(Generic[T]):
    """Single-slot, thread-safe; ``put`` never blocks, ``take`` waits up to a timeout."""

    def __init__(self, on_superseded: Callable[[T], None]) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._on_superseded = on_superseded

    def put(self, item: T) -> None:
        with self._cond:
            old, self._item = self._item, item
            self._cond.notify()
        if old is not None:
            self._on_superseded(old)

    def take(self, timeout: float) -> T | None:
        """The newest item, or ``None`` after ``timeout`` seconds with nothing new."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def drain(self) -> T | None:
        """Remove and return whatever waits (used at shutdown so it can be counted)."""
        with self._cond:
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        """Wake a waiting ``take`` (shutdown)."""
        with self._cond:
            self._cond.notify_all()
