"""A circuit breaker per provider endpoint, as a pure state machine.

::

    closed --(N consecutive transient failures)--> open
    open   --(cool-down elapsed)-----------------> half_open  (one probe call allowed)
    half_open --(probe succeeds)-----------------> closed
    half_open --(probe fails transiently)--------> open       (cool-down starts again)

While a breaker is open, the channel consumer does not call the provider: the
delivery goes straight to a retry tier (cause ``circuit_open``). A permanent
failure says nothing about the endpoint's health and counts as a success here.
The clock is passed in, so the machine is tested with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


@dataclass
class Breaker:
    """One endpoint's breaker. ``allow``/``record_*`` return the new state when it changed."""

    threshold: int = 5
    cooldown: float = 30.0
    state: BreakerState = BreakerState.closed
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def allow(self, now: float) -> tuple[bool, BreakerState | None]:
        """May a call go out now? The second value is a state change to report, if any."""
        if self.state is BreakerState.closed:
            return True, None
        if self.state is BreakerState.open:
            if now - self.opened_at < self.cooldown:
                return False, None
            self.state = BreakerState.half_open
            self.probing = True
            return True, BreakerState.half_open
        # half-open: one probe at a time
        if self.probing:
            return False, None
        self.probing = True
        return True, None

    def record_success(self) -> BreakerState | None:
        self.failures = 0
        self.probing = False
        if self.state is not BreakerState.closed:
            self.state = BreakerState.closed
            return BreakerState.closed
        return None

    def record_failure(self, now: float) -> BreakerState | None:
        self.failures += 1
        if self.state is BreakerState.half_open:
            self.probing = False
            return self._open(now)
        if self.state is BreakerState.closed and self.failures >= self.threshold:
            return self._open(now)
        return None

    def _open(self, now: float) -> BreakerState:
        self.state = BreakerState.open
        self.opened_at = now
        return BreakerState.open


@dataclass
class Breakers:
    """The breakers of one channel consumer, one per endpoint, created on first use."""

    threshold: int = 5
    cooldown: float = 30.0
    by_endpoint: dict[str, Breaker] = field(default_factory=dict)

    def get(self, endpoint: str) -> Breaker:
        breaker = self.by_endpoint.get(endpoint)
        if breaker is None:
            breaker = self.by_endpoint[endpoint] = Breaker(self.threshold, self.cooldown)
        return breaker

    def not_closed(self) -> int:
        """How many endpoints have an open or half-open breaker."""
        return sum(1 for b in self.by_endpoint.values() if b.state is not BreakerState.closed)
