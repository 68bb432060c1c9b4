"""Retry tiers: which topic a failed delivery waits in, until when, and what it carries.

A delivery that fails transiently is produced, unchanged, to
``tidings.deliver.<channel>.retry.<delay>`` with text headers that say how many
attempts were made, when the next one is due and when the first failure
happened. The channel consumer reads its retry topics like its main topic; when
the head record of a retry partition is not yet due it holds (pauses) that
partition until it is, so a long tier never delays a short one and fresh
deliveries are never behind a retry.

The decision is a pure function (:func:`plan_retry`) of the failure, the
attempts made, the ladder and the clock, tested on plain values.

============================  ==========================================================
header                        value (UTF-8 text)
============================  ==========================================================
``tidings_retry_attempts``    attempts made so far (1 after the first failure)
``tidings_retry_due``         when the next attempt is due, ms since the epoch
``tidings_retry_first_failure``  RFC 3339 UTC time of the first failure
``tidings_retry_last_error``  error class and message of the last failure
============================  ==========================================================
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.errors import RateLimitedError

ATTEMPTS = "tidings_retry_attempts"
DUE = "tidings_retry_due"
FIRST_FAILURE = "tidings_retry_first_failure"
LAST_ERROR = "tidings_retry_last_error"
RETRY_HEADERS = (ATTEMPTS, DUE, FIRST_FAILURE, LAST_ERROR)

_DELAY = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, order=True)
class Tier:
    """One retry topic: its delay in seconds and its name suffix (``10s``, ``1m``...)."""

    seconds: float
    label: str


def parse_ladder(text: str) -> tuple[Tier, ...]:
    """``"10s,1m,10m,1h"`` -> tiers, shortest first. Raises ValueError naming a bad entry."""
    tiers: list[Tier] = []
    for raw in text.split(","):
        item = raw.strip()
        m = _DELAY.match(item)
        if not m or int(m.group(1)) == 0:
            raise ValueError(f"retry tier {item!r} is not a positive delay such as 10s, 1m, 10m or 1h")
        tiers.append(Tier(int(m.group(1)) * _UNIT[m.group(2)], item))
    if not tiers:
        raise ValueError("the retry ladder needs at least one tier")
    ordered = sorted(tiers)
    if [t.seconds for t in ordered] != sorted({t.seconds for t in ordered}):
        raise ValueError(f"retry tiers {text!r} repeat a delay")
    return tuple(ordered)


@dataclass(frozen=True)
class RetryPlan:
    """Where a failed delivery goes next."""

    tier: Tier
    due: datetime
    attempts: int
    """Attempts made, including the one that just failed."""


@dataclass(frozen=True)
class GiveUp:
    """No further attempt: ``reason`` is ``attempts`` (ladder used up) or ``deadline``."""

    reason: str
    attempts: int


def plan_retry(
    error: Exception,
    attempts: int,
    ladder: Sequence[Tier],
    max_attempts: int,
    now: datetime,
    deadline: datetime | None = None,
    jitter: float = 0.1,
    rng: random.Random | None = None,
    count_attempt: bool = True,
) -> RetryPlan | GiveUp:
    """Decide the next step after a transient failure.

    ``attempts`` is how many attempts were made before this one. The n-th failure
    waits in the n-th tier (the last tier repeats). A rate-limited failure waits at
    least its ``retry_after``: the first tier at least that long is chosen and the
    due time is never earlier than asked. Jitter adds up to ``jitter`` of the delay,
    never subtracts. ``count_attempt=False`` (an open circuit: the provider was not
    called) keeps the attempt count, and never gives up for attempts.
    """
    made = attempts + 1 if count_attempt else attempts
    if count_attempt and made >= max_attempts:
        return GiveUp("attempts", made)
    index = min(max(made - 1, 0), len(ladder) - 1)
    tier = ladder[index]
    wait = tier.seconds
    retry_after = error.retry_after if isinstance(error, RateLimitedError) else None
    if retry_after is not None and retry_after > tier.seconds:
        tier = next((t for t in ladder if t.seconds >= retry_after), ladder[-1])
        wait = max(tier.seconds, retry_after)
    wait *= 1.0 + (rng or random).uniform(0.0, max(jitter, 0.0))
    due = datetime.fromtimestamp(now.timestamp() + wait, UTC)
    if deadline is not None and due > deadline:
        return GiveUp("deadline", made)
    return RetryPlan(tier, due, made)


@dataclass(frozen=True)
class RetryState:
    """What a record's retry headers say (all defaults for a record from the main topic)."""

    attempts: int = 0
    due_ms: int | None = None
    first_failure: str | None = None

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]]) -> RetryState:
        values = {k: v.decode("utf-8", "replace") for k, v in headers if k in RETRY_HEADERS}
        try:
            attempts = int(values.get(ATTEMPTS, "0"))
        except ValueError:
            attempts = 0
        try:
            due = int(values[DUE]) if DUE in values else None
        except ValueError:
            due = None
        return cls(max(attempts, 0), due, values.get(FIRST_FAILURE) or None)

    def seconds_until_due(self, now: datetime) -> float:
        if self.due_ms is None:
            return 0.0
        return self.due_ms / 1000.0 - now.timestamp()


def retry_headers(original: Sequence[tuple[str, bytes]], plan: RetryPlan, first_failure: str,
                  error: Exception) -> list[tuple[str, bytes]]:
    """The record's own headers (earlier retry headers replaced) plus the new ones."""
    kept = [(k, v) for k, v in original if k not in RETRY_HEADERS]
    last = f"{type(error).__name__}: {error}"[:500]
    ours = [
        (ATTEMPTS, str(plan.attempts)),
        (DUE, str(int(plan.due.timestamp() * 1000))),
        (FIRST_FAILURE, first_failure),
        (LAST_ERROR, last),
    ]
    return [*kept, *((k, v.encode()) for k, v in ours)]


def strip_retry_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Headers without retry state: a replayed record starts again at attempt one."""
    return [(k, v) for k, v in headers if k not in RETRY_HEADERS]
