"""The circuit breaker's state machine, driven by a clock made of plain numbers."""

from __future__ import annotations

from consumers.breaker import Breaker, Breakers, BreakerState


def test_opens_after_n_consecutive_failures_only() -> None:
    b = Breaker(threshold=3, cooldown=10)
    assert b.record_failure(0) is None
    assert b.record_failure(1) is None
    assert b.record_success() is None  # a success resets the count
    assert b.record_failure(2) is None and b.record_failure(3) is None
    assert b.record_failure(4) is BreakerState.open
    assert b.allow(5) == (False, None)


def test_half_opens_after_the_cooldown_with_one_probe() -> None:
    b = Breaker(threshold=1, cooldown=10)
    b.record_failure(0)
    assert b.allow(9.9) == (False, None)
    assert b.allow(10) == (True, BreakerState.half_open)
    assert b.allow(10.1) == (False, None)  # the probe is out; others wait
    assert b.record_success() is BreakerState.closed
    assert b.allow(10.2) == (True, None)


def test_a_failed_probe_opens_again_for_a_whole_cooldown() -> None:
    b = Breaker(threshold=1, cooldown=10)
    b.record_failure(0)
    b.allow(10)
    assert b.record_failure(11) is BreakerState.open
    assert b.allow(20) == (False, None)
    assert b.allow(21) == (True, BreakerState.half_open)


def test_one_breaker_per_endpoint() -> None:
    breakers = Breakers(threshold=1, cooldown=10)
    breakers.get("webhook:https://a.example").record_failure(0)
    assert breakers.get("webhook:https://b.example").allow(1) == (True, None)
    assert breakers.not_closed() == 1
