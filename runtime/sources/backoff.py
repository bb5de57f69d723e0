"""Exponential backoff for reopening a lost source.

A capture card that was unplugged, or a sender that is restarting, should be retried quickly at first
(most outages are short) and then less often, so a dead device does not spin a CPU core or flood the
log. The jitter spreads out reconnects of several pipelines that lost the same sender at once.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays of ``initial * factor**n`` seconds, capped at ``maximum``, each shortened by up to ``jitter``.

    Parameters
    ----------
    initial
        First delay in seconds.
    factor
        Growth per failed attempt (>= 1).
    maximum
        No delay is ever longer than this.
    jitter
        Fraction in ``[0, 1)``: each delay is drawn from ``[base * (1 - jitter), base]``. Jitter only
        shortens, so ``maximum`` stays a true upper bound.
    rng
        Random source (tests pass a seeded one).

    Examples
    --------
    >>> b = Backoff(initial=0.1, factor=2, maximum=2.0, jitter=0)
    >>> [b.next_delay() for _ in range(6)]
    [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    """

    def __init__(self, initial: float = 0.1, factor: float = 2.0, maximum: float = 2.0, jitter: float = 0.1,
                 rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"need 0 < initial <= maximum, got initial={initial}, maximum={maximum}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; each call counts one more failed attempt."""
        try:
            base = min(self.maximum, self.initial * self.factor ** self.attempts)
        except OverflowError:  # a source down for days: the exponent outgrew a float
            base = self.maximum
        self.attempts += 1
        if self.jitter:
            return base * (1.0 - self.jitter * self._rng.random())
        return base

    def reset(self) -> None:
        """Back to ``initial``: call after an attempt succeeded (e.g. the first frame arrived)."""
        self.attempts = 0


__all__ = ["Backoff"]
