"""Latest-only delivery to one browser: a slow tablet never builds a queue on the server.

Each connected page has one :class:`ClientSlot`. The reader threads :meth:`~ClientSlot.put` every new
view into it; the page's sender coroutine :meth:`~ClientSlot.take` s the newest one and sends it. At
most ``window`` views are on the wire to a page at a time: the page acknowledges each view once it
has drawn it, and until then newer views only replace the one waiting in the slot. A view that is
replaced before it was sent is dropped and counted (``superseded``) for that client alone; the other
clients and the pipeline never notice. So the server holds at most one waiting view per client, and
the socket buffers at most ``window`` views, however slow the page is.

A page that stops acknowledging (a frozen tab) would hold its window forever; after ``ack_timeout_s``
the view in flight is written off (``ack_timeouts``) and sending resumes.

Accounting, at every moment: ``offered == sent + dropped_total + waiting`` (``waiting`` is 0 or 1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ClientSlot(Generic[T]):
    """One waiting item at most, ``window`` in flight at most; thread-safe.

    Parameters
    ----------
    window
        Views sent but not yet acknowledged by the page. 1 keeps the page's age the lowest (a new view
        waits for the previous draw); a larger window hides network round trips on a slow link.
    ack_timeout_s
        Seconds after which an unacknowledged view is written off.
    notify
        Called (outside the lock) after each :meth:`put`, e.g. to wake the sender coroutine
        with ``loop.call_soon_threadsafe``.
    clock
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, window: int = 1, ack_timeout_s: float = 2.0, notify: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self._notify = notify
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: T | None = None
        self._in_flight: list[float] = []  # send times of unacknowledged items, oldest first
        self.offered = 0
        self.sent = 0
        self.acked = 0
        self.ack_timeouts = 0
        self.dropped: dict[str, int] = {"superseded": 0}

    def put(self, item: T) -> None:
        """Offer the newest item; the one still waiting, if any, is dropped (``superseded``)."""
        with self._lock:
            self.offered += 1
            if self._waiting is not None:
                self.dropped["superseded"] += 1
            self._waiting = item
        if self._notify is not None:
            self._notify()

    def take(self) -> T | None:
        """The waiting item if the window has room (it then counts as sent), else ``None``."""
        with self._lock:
            self._expire_locked()
            if self._waiting is None or len(self._in_flight) >= self.window:
                return None
            item, self._waiting = self._waiting, None
            self._in_flight.append(self._clock())
            self.sent += 1
            return item

    def ack(self) -> None:
        """The page has drawn the oldest view in flight."""
        with self._lock:
            if self._in_flight:
                self._in_flight.pop(0)
                self.acked += 1

    def close(self) -> None:
        """The page went away: a view still waiting is dropped (``disconnected``)."""
        with self._lock:
            if self._waiting is not None:
                self._waiting = None
                self.dropped["disconnected"] = self.dropped.get("disconnected", 0) + 1

    def _expire_locked(self) -> None:
        now = self._clock()
        while self._in_flight and now - self._in_flight[0] > self.ack_timeout_s:
            self._in_flight.pop(0)
            self.ack_timeouts += 1

    @property
    def waiting(self) -> int:
        with self._lock:
            return 0 if self._waiting is None else 1

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def counters(self) -> dict[str, Any]:
        """``offered == sent + dropped_total + waiting``, the page's share of the accounting."""
        with self._lock:
            dropped = dict(self.dropped)
            return {
                "offered": self.offered, "sent": self.sent, "acked": self.acked, "ack_timeouts": self.ack_timeouts,
                "dropped": dropped, "dropped_total": sum(dropped.values()),
                "waiting": 0 if self._waiting is None else 1, "in_flight": len(self._in_flight),
            }
