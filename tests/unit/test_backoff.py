"""``anchord.backoff.Backoff``, the one retry policy, and its DHCP preset."""

from __future__ import annotations

import random

from anchord.backoff import Backoff
from anchord.dhcp import timers


def test_doubles_from_initial_up_to_the_cap_and_resets() -> None:
    b = Backoff(initial=0.25, cap=5.0)
    assert [b.next() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next() == 0.25


def test_a_cap_below_initial_wins_and_a_long_outage_never_overflows() -> None:
    b = Backoff(initial=0.25, cap=0.1)
    assert {b.next() for _ in range(5000)} == {0.1}
    b = Backoff(initial=1e-300, cap=1e300)
    for _ in range(5000):
        assert b.next() <= 1e300


def test_jitter_spreads_each_delay_within_its_fraction_and_under_the_cap() -> None:
    b = Backoff(initial=4.0, cap=20.0, jitter=0.1, rng=random.Random(7))
    delays = [b.next() for _ in range(8)]
    for delay, base in zip(delays, [4.0, 8.0, 16.0, 20.0, 20.0, 20.0, 20.0, 20.0], strict=True):
        assert base * 0.9 <= delay <= min(base * 1.1, 20.0)
    assert len(set(delays)) > 1  # spread, not a fixed sequence
    assert delays[:3] != [4.0, 8.0, 16.0]


def test_the_dhcp_preset_is_the_shared_backoff_with_rfc_jitter() -> None:
    b = timers.Backoff(initial=1.0, cap=8.0, rng=random.Random(1))
    assert isinstance(b, Backoff)
    assert (b.jitter, timers.Backoff().initial, timers.Backoff().cap) == (0.1, 4.0, 300.0)
    first = b.next()
    assert 0.9 <= first <= 1.1
    assert first != 1.0
