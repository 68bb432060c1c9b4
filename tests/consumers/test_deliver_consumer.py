"""Plain-value parts of the channel consumer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumers.deliver_consumer import endpoint_of
from schemas import Delivery


def _to(address: str, channel: str = "webhook") -> Delivery:
    now = datetime(2026, 11, 21, tzinfo=UTC)
    return Delivery(delivery_id="d-1", event_id="e-1", event_source="shop", event_type="orders.shipped",
                    event_time=now, tenant="default", rule="r", channel=channel, recipient_id="u-1",
                    address=address, subject="s", text="t\n", created_at=now)


@pytest.mark.parametrize(("address", "endpoint"), [
    ("https://hooks.example.com/a/b?token=secret", "webhook:https://hooks.example.com"),
    ("http://127.0.0.1:8080/hook", "webhook:http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/other", "webhook:http://127.0.0.1:8080"),  # one breaker per host, not per path
    ("http://host:99999/hook", "webhook"),  # a port out of range: no crash, the channel refuses the address
    ("http://host:port/hook", "webhook"),
    ("http:///no-host", "webhook"),
])
def test_a_url_address_names_its_scheme_and_host_and_anything_else_the_channel(address: str,
                                                                                endpoint: str) -> None:
    assert endpoint_of("webhook", _to(address)) == endpoint


def test_an_address_that_is_no_url_is_the_channels_one_endpoint() -> None:
    assert endpoint_of("email", _to("someone@example.com", channel="email")) == "email"
