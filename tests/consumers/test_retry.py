"""Retry tiers as plain values: the ladder, the plan for each failure, the headers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from consumers.retry import (
    ATTEMPTS,
    DUE,
    FIRST_FAILURE,
    LAST_ERROR,
    GiveUp,
    RetryPlan,
    RetryState,
    Tier,
    parse_ladder,
    plan_retry,
    retry_headers,
    strip_retry_headers,
)
from schemas.errors import RateLimitedError, TransientError

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
LADDER = parse_ladder("10s,1m,10m,1h")


def test_the_ladder_is_parsed_and_sorted() -> None:
    assert parse_ladder("1h, 10s,500ms") == (Tier(0.5, "500ms"), Tier(10, "10s"), Tier(3600, "1h"))
    assert [t.label for t in LADDER] == ["10s", "1m", "10m", "1h"]


@pytest.mark.parametrize("text", ["", "10", "0s", "10x", "1m,60s", "-5s"])
def test_a_bad_ladder_names_the_problem(text: str) -> None:
    with pytest.raises(ValueError, match=r"tier|delay|ladder"):
        parse_ladder(text)


def test_each_failure_waits_in_the_next_tier_then_gives_up() -> None:
    waits = []
    attempts = 0
    while True:
        plan = plan_retry(TransientError("503"), attempts, LADDER, 5, NOW, jitter=0)
        if isinstance(plan, GiveUp):
            break
        waits.append((plan.tier.label, (plan.due - NOW).total_seconds()))
        attempts = plan.attempts
    assert waits == [("10s", 10), ("1m", 60), ("10m", 600), ("1h", 3600)]
    assert plan == GiveUp("attempts", 5)


def test_the_last_tier_repeats_when_attempts_outnumber_tiers() -> None:
    plan = plan_retry(TransientError("x"), 7, LADDER, 20, NOW, jitter=0)
    assert isinstance(plan, RetryPlan) and plan.tier.label == "1h" and plan.attempts == 8


def test_retry_after_picks_the_first_tier_long_enough_and_is_never_shortened() -> None:
    plan = plan_retry(RateLimitedError("429", retry_after=45), 0, LADDER, 5, NOW, jitter=0)
    assert isinstance(plan, RetryPlan) and plan.tier.label == "1m" and plan.due == NOW + timedelta(seconds=60)
    # Longer than every tier: the longest tier, due exactly when asked.
    plan = plan_retry(RateLimitedError("429", retry_after=7200), 0, LADDER, 5, NOW, jitter=0)
    assert isinstance(plan, RetryPlan) and plan.tier.label == "1h" and plan.due == NOW + timedelta(hours=2)
    # Shorter than the tier the attempt count gives: that tier.
    plan = plan_retry(RateLimitedError("429", retry_after=5), 1, LADDER, 5, NOW, jitter=0)
    assert isinstance(plan, RetryPlan) and plan.tier.label == "1m"


def test_jitter_only_lengthens_and_spreads() -> None:
    rng = random.Random(7)
    dues = {plan_retry(RateLimitedError("429", retry_after=10), 0, LADDER, 5, NOW, jitter=0.2, rng=rng).due
            for _ in range(50)}  # type: ignore[union-attr]
    seconds = sorted((d - NOW).total_seconds() for d in dues)
    assert len(seconds) > 40
    assert seconds[0] >= 10 and seconds[-1] <= 12


def test_a_retry_that_would_land_after_the_deadline_gives_up_as_stale() -> None:
    plan = plan_retry(TransientError("x"), 1, LADDER, 5, NOW, deadline=NOW + timedelta(seconds=30), jitter=0)
    assert plan == GiveUp("deadline", 2)


def test_an_open_circuit_does_not_use_up_attempts() -> None:
    plan = plan_retry(RuntimeError("circuit open"), 4, LADDER, 5, NOW, jitter=0, count_attempt=False)
    assert isinstance(plan, RetryPlan) and plan.attempts == 4


def test_headers_round_trip_and_replace_earlier_ones() -> None:
    plan = RetryPlan(LADDER[1], NOW + timedelta(seconds=60), 2)
    original = [("tidings_delivery_id", b"d-1"), (ATTEMPTS, b"1"), (DUE, b"0")]
    headers = retry_headers(original, plan, "2026-01-05T11:59:00.000Z", TransientError("HTTP 503"))
    names = [k for k, _ in headers]
    assert names.count(ATTEMPTS) == 1 and names[0] == "tidings_delivery_id"
    state = RetryState.from_headers(headers)
    assert state == RetryState(2, int((NOW + timedelta(seconds=60)).timestamp() * 1000), "2026-01-05T11:59:00.000Z")
    assert state.seconds_until_due(NOW) == 60
    assert dict(headers)[LAST_ERROR] == b"TransientError: HTTP 503"
    assert strip_retry_headers(headers) == [("tidings_delivery_id", b"d-1")]
    assert FIRST_FAILURE not in dict(strip_retry_headers(headers))


def test_missing_or_garbled_headers_mean_a_fresh_record() -> None:
    assert RetryState.from_headers([]) == RetryState()
    assert RetryState.from_headers([(ATTEMPTS, b"x"), (DUE, b"soon")]) == RetryState()
    assert RetryState().seconds_until_due(NOW) == 0
