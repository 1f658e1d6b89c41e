"""`ambient.core.backoff.Backoff`: the exact delay sequence, the cap, reset, and jitter bounds."""

from __future__ import annotations

import random

import pytest

from ambient.core.backoff import Backoff


def test_doubles_from_initial_up_to_the_cap_then_stays() -> None:
    b = Backoff(0.1, 1.0)
    assert [b.next() for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_same_floats_as_the_inline_min_x_times_2_loops_it_replaces() -> None:
    for initial, cap in ((0.01, 15.0), (0.1, 5.0), (0.5, 10.0), (0.5, 150.0), (0.05, 0.3)):
        b, x = Backoff(initial, cap), initial
        for _ in range(40):
            assert b.next() == x  # bit-identical, not approximately equal
            x = min(x * 2, cap)


def test_reset_starts_over_from_initial() -> None:
    b = Backoff(0.5, 10.0)
    assert [b.next() for _ in range(3)] == [0.5, 1.0, 2.0]
    b.reset()
    assert [b.next() for _ in range(2)] == [0.5, 1.0]


def test_current_peeks_without_advancing() -> None:
    b = Backoff(0.1, 5.0)
    assert b.current == b.current == 0.1
    assert b.next() == 0.1
    assert b.current == 0.2
    b.reset()
    assert b.current == 0.1


def test_maximum_below_initial_caps_from_the_second_delay_on() -> None:
    b = Backoff(1.0, 0.5)
    assert [b.next() for _ in range(3)] == [1.0, 0.5, 0.5]


def test_never_overflows_however_many_failures() -> None:
    b = Backoff(0.5, 10.0)
    for _ in range(5000):
        delay = b.next()
    assert delay == 10.0


def test_no_jitter_draws_no_random_number() -> None:
    state = random.getstate()
    b = Backoff(0.01, 15.0)
    for _ in range(10):
        b.next()
    assert random.getstate() == state


def test_jitter_stays_within_bounds_and_does_not_feed_back() -> None:
    b = Backoff(1.0, 8.0, jitter=0.2)
    for base in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert b.current == base  # the sequence doubles from the un-jittered value
        assert base * 0.8 <= b.next() <= base * 1.2


def test_jitter_draws_the_same_number_as_uniform_around_one() -> None:
    # The loops this replaces slept `delay * random.uniform(0.8, 1.2)`: same draw, same product.
    random.seed(7)
    expected = [d * random.uniform(0.8, 1.2) for d in (0.01, 0.02, 0.04)]
    random.seed(7)
    b = Backoff(0.01, 15.0, jitter=0.2)
    assert [b.next() for _ in range(3)] == expected


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 1.5])
def test_jitter_out_of_range_is_rejected(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(0.1, 1.0, jitter=jitter)
