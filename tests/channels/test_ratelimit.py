"""Token buckets and provider pauses, on a hand-driven clock (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from channels.ratelimit import EndpointLimiter, Rate, TokenBucket
from schemas.errors import RateLimitedError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_once_then_the_rate_applies() -> None:
    bucket = TokenBucket(Rate(per_second=2.0, burst=3.0), now=0.0)
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve(0.0) == pytest.approx(0.5)
    assert bucket.reserve(0.0) == pytest.approx(1.0)  # reservations queue in order


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    bucket = TokenBucket(Rate(per_second=1.0, burst=2.0), now=0.0)
    bucket.reserve(0.0)
    bucket.reserve(0.0)
    assert bucket.reserve(0.5) == pytest.approx(0.5)
    assert not bucket.idle(1.0)
    assert bucket.idle(60.0)
    assert [bucket.reserve(60.0), bucket.reserve(60.0)] == [0.0, 0.0]  # never more than the burst


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Rate(0)
    with pytest.raises(ValueError, match="at least one"):
        Rate(1.0, burst=0.5)


def test_each_endpoint_has_its_own_bucket() -> None:
    clock = Clock()
    limiter = EndpointLimiter(max_wait=10, clock=clock)
    rate = Rate(1.0, 1.0)
    assert limiter.delay({"a": rate}) == 0.0
    assert limiter.delay({"b": rate}) == 0.0
    assert limiter.delay({"a": rate}) == pytest.approx(1.0)


def test_several_buckets_wait_for_the_slowest() -> None:
    clock = Clock()
    limiter = EndpointLimiter(max_wait=10, clock=clock)
    bot, chat = Rate(30.0, 30.0), Rate(1.0, 1.0)
    assert limiter.delay({"bot": bot, "chat:1": chat}) == 0.0
    assert limiter.delay({"bot": bot, "chat:1": chat}) == pytest.approx(1.0)
    assert limiter.delay({"bot": bot, "chat:2": chat}) == 0.0


def test_a_wait_past_max_wait_is_rate_limited_and_takes_nothing() -> None:
    clock = Clock()
    limiter = EndpointLimiter(max_wait=1.5, clock=clock)
    rate = Rate(1.0, 1.0)
    limiter.delay({"a": rate})
    limiter.delay({"a": rate})  # waits 1 s
    with pytest.raises(RateLimitedError) as caught:
        limiter.delay({"a": rate})  # would wait 2 s
    assert caught.value.retry_after == pytest.approx(2.0)
    clock.now += 2.0
    assert limiter.delay({"a": rate}) == 0.0  # the refused attempt did not keep its token


def test_a_provider_pause_holds_every_send_to_that_endpoint() -> None:
    clock = Clock()
    limiter = EndpointLimiter(max_wait=5, clock=clock)
    rate = Rate(100.0, 100.0)
    limiter.block("hook", 3.0)
    assert limiter.blocked_for("hook") == pytest.approx(3.0)
    assert limiter.delay({"hook": rate}) == pytest.approx(3.0)
    assert limiter.delay({"other": rate}) == 0.0
    limiter.block("hook", 60.0)
    with pytest.raises(RateLimitedError) as caught:
        limiter.delay({"hook": rate})
    assert caught.value.retry_after == pytest.approx(60.0)
    clock.now += 61
    assert limiter.delay({"hook": rate}) == 0.0
    assert limiter.blocked_for("hook") == 0.0


def test_idle_buckets_are_forgotten_past_the_cap() -> None:
    clock = Clock()
    limiter = EndpointLimiter(max_endpoints=2, clock=clock)
    rate = Rate(1.0, 1.0)
    for key in ("a", "b", "c"):
        limiter.delay({key: rate})
        clock.now += 5
    limiter.delay({"d": rate})
    assert len(limiter._buckets) <= 2


def test_acquire_sleeps_for_the_reserved_wait() -> None:
    limiter = EndpointLimiter(max_wait=1.0)
    rate = Rate(20.0, 1.0)

    async def two() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await limiter.acquire({"x": rate})
        await limiter.acquire({"x": rate})
        return loop.time() - started

    assert asyncio.run(two()) >= 0.04
