"""How a Delivery becomes an inbox item: plain values in, plain values out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from channels.inapp.items import InboxItem, item_from_delivery, parse_time, safe_action_url

from ..conftest import DeliveryFactory

NOW = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
MONTH = timedelta(days=30)


def payload(**data: object) -> str:
    return json.dumps({"id": "x", "data": data})


def test_fields_come_from_the_delivery(make_delivery: DeliveryFactory) -> None:
    d = make_delivery(channel="inapp", address="on", subject="Interview on Monday", text="Room 4, 10:00",
                      priority="high", rule="interview")
    conv = item_from_delivery(d, NOW, MONTH)
    item = conv.item
    assert item.id == d.delivery_id and item.event_id == d.event_id
    assert (item.title, item.body) == ("Interview on Monday", "Room 4, 10:00")
    assert (item.event_type, item.rule, item.priority) == ("orders.shipped", "interview", "high")
    assert item.category == "orders.shipped"  # no category given: the event type
    assert item.created_at == NOW and item.expires_at == NOW + MONTH
    assert item.action_url is None and item.action_label is None
    assert conv.notes == []


def test_action_and_expiry_from_event_data(make_delivery: DeliveryFactory) -> None:
    d = make_delivery(payload=payload(action_url="https://jobs.example.com/m/7", action_label="View match",
                                      expires_at="2026-05-03T00:00:00Z", category="job_alert"))
    item = item_from_delivery(d, NOW, MONTH).item
    assert item.action_url == "https://jobs.example.com/m/7"
    assert item.action_label == "View match"
    assert item.category == "job_alert"
    assert item.expires_at == datetime(2026, 5, 3, tzinfo=UTC)


def test_metadata_wins_over_event_data(make_delivery: DeliveryFactory) -> None:
    d = make_delivery(payload=payload(action_url="/from-data", action_label="Data"),
                      metadata={"action_url": "/from-metadata", "action_label": "Meta"})
    item = item_from_delivery(d, NOW, MONTH).item
    assert (item.action_url, item.action_label) == ("/from-metadata", "Meta")


def test_expiry_is_capped_by_the_maximum_age_and_naive_times_are_utc(make_delivery: DeliveryFactory) -> None:
    far = item_from_delivery(make_delivery(metadata={"expires_at": "2030-01-01T00:00:00+00:00"}), NOW, MONTH)
    assert far.item.expires_at == NOW + MONTH
    naive = item_from_delivery(make_delivery(metadata={"expires_at": "2026-05-02T12:00:00"}), NOW, MONTH)
    assert naive.item.expires_at == datetime(2026, 5, 2, 12, tzinfo=UTC)
    offset = item_from_delivery(make_delivery(metadata={"expires_at": "2026-05-02T14:00:00+02:00"}), NOW, MONTH)
    assert offset.item.expires_at == datetime(2026, 5, 2, 12, tzinfo=UTC)


def test_unparseable_expiry_uses_the_default_and_says_so(make_delivery: DeliveryFactory) -> None:
    conv = item_from_delivery(make_delivery(metadata={"expires_at": "next tuesday"}), NOW, MONTH)
    assert conv.item.expires_at == NOW + MONTH
    assert conv.notes == ["expires_at 'next tuesday' is not an ISO 8601 time; using the default"]


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,hi", "//evil.example.com/x",
                                 "ftp://files.example.com/a", "https://", "/path with space", "vbscript:x"])
def test_unsafe_action_urls_are_left_out_with_their_label(make_delivery: DeliveryFactory, url: str) -> None:
    conv = item_from_delivery(make_delivery(metadata={"action_url": url, "action_label": "Click"}), NOW, MONTH)
    assert conv.item.action_url is None and conv.item.action_label is None
    assert conv.notes == ["action_url left out: only http(s) URLs and paths starting with '/' are linked"]


@pytest.mark.parametrize(("url", "safe"), [("/jobs/7", "/jobs/7"), ("https://a.example/x?y=1", "https://a.example/x?y=1"),
                                           ("  http://a.example/  ", "http://a.example/"), ("", None),
                                           ("https://a.example/" + "x" * 2001, None)])
def test_safe_action_url(url: str, safe: str | None) -> None:
    assert safe_action_url(url) == safe


def test_long_text_is_clipped_and_payload_that_is_not_json_is_ignored(make_delivery: DeliveryFactory) -> None:
    d = make_delivery(subject="s" * 400, text="t" * 5000, payload="{not json")
    item = item_from_delivery(d, NOW, MONTH).item
    assert len(item.title) == 300 and item.title.endswith("…")
    assert len(item.body) == 4000
    assert item.action_url is None


def test_item_json_round_trip(make_delivery: DeliveryFactory) -> None:
    item = item_from_delivery(make_delivery(metadata={"action_url": "/x"}), NOW, MONTH).item
    assert InboxItem.from_json(item.to_json()) == item


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-05-01T10:00:00Z", datetime(2026, 5, 1, 10, tzinfo=UTC)),
    ("2026-05-01T10:00:00", datetime(2026, 5, 1, 10, tzinfo=UTC)),
    ("2026-05-01", datetime(2026, 5, 1, tzinfo=UTC)),
    ("yesterday", None),
])
def test_parse_time(text: str, expected: datetime | None) -> None:
    assert parse_time(text) == expected
