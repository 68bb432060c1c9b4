"""Token buckets per provider endpoint, so a channel stays inside documented limits.

A :class:`TokenBucket` holds up to ``burst`` tokens and refills at ``rate``
tokens a second. Taking a token may leave the count negative: that is a
reservation, and the caller waits until the refill covers it. Concurrent
senders therefore queue in order instead of all waking at once.

An :class:`EndpointLimiter` keeps one bucket per endpoint key (a webhook URL,
a bot, a chat) and also remembers a provider's own "wait until" (a 429 with
``retry_after``): every send to that endpoint waits it out before calling the
provider again. A wait longer than ``max_wait`` is not slept through: the
limiter raises :class:`~schemas.errors.RateLimitedError` at once with the
wait as ``retry_after``, and the consumer reschedules the delivery.

Decisions (:meth:`TokenBucket.reserve`, :meth:`EndpointLimiter.delay`) are
plain arithmetic on a clock value and are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from schemas.errors import RateLimitedError

__all__ = ["EndpointLimiter", "Rate", "TokenBucket"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` sustained, with bursts of up to ``burst`` sends."""

    per_second: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ValueError("a rate must be positive")
        if self.burst < 1:
            raise ValueError("a burst must allow at least one send")


class TokenBucket:
    """A token bucket that hands out reservations."""

    __slots__ = ("_stamp", "_tokens", "rate")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self._tokens = rate.burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.rate.burst, self._tokens + (now - self._stamp) * self.rate.per_second)
            self._stamp = now

    def reserve(self, now: float) -> float:
        """Take one token; return how many seconds to wait before using it (0 if none)."""
        self._refill(now)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate.per_second

    def refund(self, now: float) -> None:
        """Give back a reservation that will not be used."""
        self._refill(now)
        self._tokens = min(self.rate.burst, self._tokens + 1.0)

    def idle(self, now: float) -> bool:
        """Full again: forgetting this bucket changes nothing."""
        self._refill(now)
        return self._tokens >= self.rate.burst


class EndpointLimiter:
    """Buckets keyed by endpoint, plus provider-imposed pauses."""

    def __init__(self, max_wait: float = 5.0, max_endpoints: int = 10_000, clock: Clock = time.monotonic) -> None:
        self.max_wait = max_wait
        self.max_endpoints = max_endpoints
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._blocked: dict[str, float] = {}

    def delay(self, limits: dict[str, Rate]) -> float:
        """Reserve a token from every bucket in ``limits`` (key -> rate); return the wait.

        Raises :class:`RateLimitedError` (and takes nothing) when the wait exceeds ``max_wait``.
        """
        now = self._clock()
        taken: list[TokenBucket] = []
        wait = 0.0
        for key in limits:
            until = self._blocked.get(key)
            if until is not None:
                if until > now:
                    wait = max(wait, until - now)
                else:
                    del self._blocked[key]
        for key, rate in limits.items():
            bucket = self._bucket(key, rate, now)
            taken.append(bucket)
            wait = max(wait, bucket.reserve(now))
        if wait > self.max_wait:
            for bucket in taken:
                bucket.refund(now)
            raise RateLimitedError(f"provider limit reached: next send possible in {wait:.2f} s", retry_after=wait)
        return wait

    async def acquire(self, limits: dict[str, Rate]) -> None:
        """Wait until every bucket in ``limits`` allows one more send."""
        wait = self.delay(limits)
        if wait > 0:
            await asyncio.sleep(wait)

    def block(self, key: str, seconds: float) -> None:
        """The provider asked for a pause on ``key``: no send to it for ``seconds``."""
        if seconds <= 0:
            return
        until = self._clock() + seconds
        self._blocked[key] = max(until, self._blocked.get(key, 0.0))

    def blocked_for(self, key: str) -> float:
        """Seconds left of a provider-imposed pause on ``key`` (0 if none)."""
        until = self._blocked.get(key)
        return max(0.0, until - self._clock()) if until is not None else 0.0

    def _bucket(self, key: str, rate: Rate, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = TokenBucket(rate, now)
            self._buckets[key] = bucket
            self._trim(now)
        self._buckets.move_to_end(key)
        return bucket

    def _trim(self, now: float) -> None:
        """Forget the least recently used buckets that are full again (an idle bucket holds no state)."""
        while len(self._buckets) > self.max_endpoints:
            key, oldest = next(iter(self._buckets.items()))
            if not oldest.idle(now):
                break
            del self._buckets[key]
