"""The contract every channel keeps, asked of every channel against a real far end.

For each channel (:data:`cases.CASES`) and each scenario: success, a transient
failure, a rate-limited answer, a permanent refusal, an unusable address, a
timeout, a connection dropped without an answer, and an answer that is not
the provider's protocol (each case lists the scenarios its far end can
produce: the in-app inbox, kept in Redis, has no rate limits or addresses). The outcome must be the typed one from
``schemas.errors``, and no error message may carry a secret or a full contact
point.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Any

import pytest

from channels.base import Sent
from schemas import Delivery
from schemas.errors import DeliveryError, InvalidAddressError, PermanentError, RateLimitedError, TransientError

from .cases import CASES, Case, Harness

EXPECTED: dict[str, type[DeliveryError] | type[Sent]] = {
    "success": Sent,
    "transient": TransientError,
    "rate_limited": RateLimitedError,
    "permanent": PermanentError,
    "invalid_address": InvalidAddressError,
    "timeout": TransientError,
    "dropped": TransientError,
    "malformed": TransientError,
}


def answering(scenario: str) -> list[Case]:
    """The cases whose far end can produce ``scenario``."""
    return [case for case in CASES if scenario in case.scenarios]


@pytest.fixture
def case(request: pytest.FixtureRequest) -> Case:
    param: Case = request.param
    return param


@pytest.fixture
def harness(case: Case) -> Any:
    with ExitStack() as stack:
        yield case.start(stack)


def attempt(harness: Harness, scenario: str, delivery: Delivery) -> Sent | DeliveryError:
    async def run() -> Sent | DeliveryError:
        channel = harness.channel(scenario)
        try:
            return await channel.send(delivery)
        except DeliveryError as exc:
            return exc
        finally:
            await channel.aclose()

    return asyncio.run(run())


def delivery_for(case: Case, harness: Harness, scenario: str, make_delivery: Any) -> Delivery:
    delivery: Delivery = make_delivery(
        channel=case.name,
        address=harness.address(scenario),
        subject=f"Contract {scenario}",
        text=f"The {scenario} scenario for {case.name}.",
    )
    return delivery


@pytest.mark.parametrize(("case", "scenario"), [(c, s) for s in EXPECTED for c in answering(s)],
                         indirect=["case"], ids=str)
def test_outcome_is_typed(case: Case, harness: Harness, scenario: str, make_delivery: Any) -> None:
    delivery = delivery_for(case, harness, scenario, make_delivery)

    outcome = attempt(harness, scenario, delivery)

    expected = EXPECTED[scenario]
    assert type(outcome) is expected or (
        isinstance(outcome, expected) and expected is TransientError and not isinstance(outcome, RateLimitedError)
    ), f"{case.name}/{scenario}: got {type(outcome).__name__}: {outcome}"
    if isinstance(outcome, DeliveryError):
        text = str(outcome)
        assert text, "an error always says what happened"
        for secret in harness.secrets:
            assert secret not in text, f"{case.name}/{scenario}: {secret!r} leaked into {text!r}"


@pytest.mark.parametrize("case", answering("success"), indirect=True, ids=str)
def test_success_arrives_once_with_the_subject(case: Case, harness: Harness, make_delivery: Any) -> None:
    delivery = delivery_for(case, harness, "success", make_delivery)

    outcome = attempt(harness, "success", delivery)

    assert isinstance(outcome, Sent)
    if case.provider_id:
        assert outcome.provider_id
    records = harness.received(1)
    assert len(records) == 1
    assert "Contract success" in str(records[0])


@pytest.mark.parametrize("case", answering("rate_limited"), indirect=True, ids=str)
def test_rate_limited_carries_the_wait_asked_for(case: Case, harness: Harness, make_delivery: Any) -> None:
    delivery = delivery_for(case, harness, "rate_limited", make_delivery)

    outcome = attempt(harness, "rate_limited", delivery)

    assert isinstance(outcome, RateLimitedError)
    assert outcome.retry_after == case.retry_after


@pytest.mark.parametrize("case", answering("timeout"), indirect=True, ids=str)
def test_timeout_says_so(case: Case, harness: Harness, make_delivery: Any) -> None:
    outcome = attempt(harness, "timeout", delivery_for(case, harness, "timeout", make_delivery))

    assert isinstance(outcome, TransientError)
    assert "timed out" in str(outcome) or "Timeout" in str(outcome)
