"""Backoff: growth, cap, reset, jitter bounds."""

from __future__ import annotations

import random

import pytest

from medstream.runtime.sources.backoff import Backoff


def test_doubles_up_to_the_maximum_without_jitter():
    b = Backoff(initial=0.1, factor=2, maximum=2.0, jitter=0)
    delays = [b.next_delay() for _ in range(8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
    assert b.attempts == 8


def test_reset_starts_over():
    b = Backoff(jitter=0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.attempts == 0
    assert b.next_delay() == pytest.approx(0.1)


def test_jitter_only_shortens_and_varies():
    b = Backoff(initial=0.1, factor=2, maximum=2.0, jitter=0.1, rng=random.Random(7))
    for _ in range(200):
        base = min(2.0, 0.1 * 2 ** b.attempts)
        d = b.next_delay()
        assert base * 0.9 <= d <= base
        if b.attempts > 20:
            b.reset()
    at_max = [Backoff(initial=2.0, maximum=2.0, rng=random.Random(s)).next_delay() for s in range(20)]
    assert len(set(at_max)) > 10 and max(at_max) <= 2.0


def test_defaults_and_a_source_down_for_days():
    b = Backoff()
    assert (b.initial, b.factor, b.maximum, b.jitter) == (0.1, 2, 2.0, 0.1)
    b.attempts = 10_000  # would overflow a float exponent
    assert 1.8 <= b.next_delay() <= 2.0


@pytest.mark.parametrize("kwargs", [
    {"initial": 0}, {"initial": 3.0, "maximum": 2.0}, {"factor": 0.5}, {"jitter": 1.0}, {"jitter": -0.1},
])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)
