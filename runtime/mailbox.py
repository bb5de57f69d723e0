"""A mailbox of size one: the latest-frame policy that bounds latency.

The receiver thread puts every frame it gets; a frame still waiting when a newer one arrives is
replaced and reported to ``on_superseded`` (counted as dropped, reason ``superseded``). The worker
always takes the newest frame. Unlike a queue, nothing old can pile up, so the age of what the
worker processes is bounded by one inference time plus one source period (Holoscan's ``kPop``
policy, GStreamer's ``leaky=downstream max-size-buffers=1``).
"""

from __future__ import annotations

import threading
import time
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


class LatestSlots(Generic[T]):
    """One latest-item slot per stream under one lock: the multi-stream form of :class:`LatestMailbox`.

    Each stream's receiver puts into its own slot (a newer item replaces and reports the older one, as
    in :class:`LatestMailbox`); the single worker takes *every* waiting item at once, so frames of
    different streams can share one inference. ``take_ready`` rotates where it starts, so when the
    worker can serve only some streams, none is starved.
    """

    def __init__(self, n: int, on_superseded: Callable[[int, T], None]) -> None:
        if n < 1:
            raise ValueError("at least one slot")
        self._cond = threading.Condition()
        self._items: list[T | None] = [None] * n
        self._on_superseded = on_superseded
        self._start = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, index: int, item: T) -> None:
        with self._cond:
            old, self._items[index] = self._items[index], item
            self._cond.notify()
        if old is not None:
            self._on_superseded(index, old)

    def take_ready(self, timeout: float, limit: int | None = None, gather_s: float = 0.0) -> list[tuple[int, T]]:
        """Every waiting ``(index, item)`` (at most ``limit``), oldest stream turn first; ``[]`` after ``timeout``.

        ``gather_s`` > 0: once one item is waiting, wait up to that long for more streams to fill (a bounded
        wait that lets a batch form); it never delays a lone stream by more than ``gather_s``.
        """
        n = len(self._items)
        limit = n if limit is None else max(1, min(limit, n))
        with self._cond:
            if not any(i is not None for i in self._items):
                self._cond.wait(timeout)
            if gather_s > 0 and limit > 1 and any(i is not None for i in self._items):
                end = _monotonic() + gather_s
                while sum(i is not None for i in self._items) < limit:
                    left = end - _monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        break
            taken: list[tuple[int, T]] = []
            for k in range(n):
                idx = (self._start + k) % n
                item = self._items[idx]
                if item is not None and len(taken) < limit:
                    taken.append((idx, item))
                    self._items[idx] = None
            if taken:
                self._start = (taken[-1][0] + 1) % n
            return taken

    def drain(self) -> list[tuple[int, T]]:
        """Remove and return whatever waits in every slot (shutdown, so it can be counted)."""
        with self._cond:
            taken = [(i, item) for i, item in enumerate(self._items) if item is not None]
            self._items = [None] * len(self._items)
            return taken

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def slot(self, index: int) -> _Slot[T]:
        """The put/wake view one stream's receiver uses."""
        return _Slot(self, index)


class _Slot(Generic[T]):
    def __init__(self, slots: LatestSlots[T], index: int) -> None:
        self._slots, self._index = slots, index

    def put(self, item: T) -> None:
        self._slots.put(self._index, item)

    def wake(self) -> None:
        self._slots.wake()


def _monotonic() -> float:
    return time.monotonic()
