"""WebhookChannel against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from channels.signing import verify
from channels.webhook import WebhookChannel, WebhookConfig, default_body, parse_retry_after
from devstack.sinks import WebhookSink
from schemas import Delivery
from schemas.errors import (
    DeliveryError,
    InvalidAddressError,
    PermanentError,
    RateLimitedError,
    TransientError,
)

from .helpers import send_each

LOOPBACK = ("127.0.0.0/8",)  # the SSRF guard refuses loopback unless allow-listed


async def send_all(cfg: WebhookConfig, *deliveries: Delivery) -> list[Any]:
    return await send_each(WebhookChannel(cfg), deliveries, DeliveryError)


def send_one(cfg: WebhookConfig, delivery: Delivery) -> Any:
    return asyncio.run(send_all(cfg, delivery))[0]


@pytest.fixture
def signed(webhook_secret: str) -> WebhookConfig:
    return WebhookConfig(
        signing_secret=webhook_secret, timeout=2.0, connect_timeout=1.0, trust_env=False, allow_networks=LOOPBACK
    )


@pytest.fixture
def unsigned() -> WebhookConfig:
    return WebhookConfig(timeout=2.0, connect_timeout=1.0, trust_env=False, allow_networks=LOOPBACK)


def hook(make_delivery: Any, url: str, **fields: Any) -> Delivery:
    delivery: Delivery = make_delivery(channel="webhook", address=url, **fields)
    return delivery


# ------------------------------------------------------------------ success


def test_posts_the_payload_signed(
    webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any, webhook_secret: str
) -> None:
    payload = '{"order": 17, "status": "shipped", "note": "caf\\u00e9"}'
    delivery = hook(make_delivery, webhook_sink.url("/hooks/acme"), payload=payload)

    sent = send_one(signed, delivery)

    assert sent.provider_id == "wh_1"  # the "id" of the sink's JSON answer
    [record] = webhook_sink.wait_for(1)
    assert record["status"] == 200
    assert record["path"] == "/hooks/acme"
    assert record["raw"] == payload  # byte for byte, not re-serialised
    assert record["body"] == {"order": 17, "status": "shipped", "note": "café"}
    headers = record["headers"]
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "Tidings/0.1"
    assert headers["webhook-id"] == delivery.delivery_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    assert headers["webhook-signature"].startswith("v1,")
    verify(webhook_secret, headers, record["raw"].encode())  # independent check of what arrived
    with pytest.raises(ValueError, match="does not match"):
        verify(webhook_secret, headers, record["raw"].encode() + b" ")


def test_default_body_without_payload(webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any) -> None:
    delivery = hook(
        make_delivery,
        webhook_sink.url("/hooks/acme"),
        subject="Order shipped",
        text="On its way",
        metadata={"subject": "order-17"},
    )

    send_one(signed, delivery)

    [record] = webhook_sink.wait_for(1)
    assert record["body"] == {
        "id": delivery.delivery_id,
        "type": "orders.shipped",
        "source": "/tests/orders",
        "subject": "order-17",
        "time": "2025-03-01T12:00:00+00:00",
        "recipient": "user-42",
        "title": "Order shipped",
        "text": "On its way",
    }
    assert record["raw"].encode() == default_body(delivery)


def test_no_signature_without_a_secret(
    open_webhook_sink: WebhookSink, unsigned: WebhookConfig, make_delivery: Any
) -> None:
    send_one(unsigned, hook(make_delivery, open_webhook_sink.url("/x")))

    [record] = open_webhook_sink.wait_for(1)
    assert "webhook-signature" not in record["headers"]
    assert record["headers"]["webhook-id"]


def test_wrong_secret_is_refused_by_the_receiver(webhook_sink: WebhookSink, make_delivery: Any) -> None:
    cfg = WebhookConfig(signing_secret="whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==", trust_env=False, allow_networks=LOOPBACK)

    error = send_one(cfg, hook(make_delivery, webhook_sink.url("/x")))

    assert isinstance(error, PermanentError)
    assert "401" in str(error)
    [record] = webhook_sink.wait_for(1)
    assert record["status"] == 401
    assert "does not match" in record["error"]


def test_non_json_success_answer_is_still_success(
    webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any
) -> None:
    sent = send_one(signed, hook(make_delivery, webhook_sink.url("/plain")))

    assert sent.provider_id is None
    assert webhook_sink.wait_for(1)[0]["answer"] == "ok, thanks"


def test_one_connection_is_reused_across_sends(
    webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any
) -> None:
    deliveries = [hook(make_delivery, webhook_sink.url(f"/hooks/{i}")) for i in range(3)]

    results = asyncio.run(send_all(signed, *deliveries))

    assert [r.provider_id for r in results] == ["wh_1", "wh_2", "wh_3"]
    records = webhook_sink.wait_for(3)
    assert len({r["peer"] for r in records}) == 1


def test_retries_of_one_delivery_carry_the_same_id_and_a_fresh_signature(
    webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any, webhook_secret: str
) -> None:
    delivery = hook(make_delivery, webhook_sink.url("/x"), payload='{"n": 1}')

    asyncio.run(send_all(signed, delivery, delivery))

    first, second = webhook_sink.wait_for(2)
    assert first["delivery_id"] == second["delivery_id"] == delivery.delivery_id
    for record in (first, second):
        verify(webhook_secret, record["headers"], record["raw"].encode())


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("path", "error_class", "fragment"),
    [
        ("/gone", InvalidAddressError, "410"),
        ("/busy", TransientError, "503"),
        ("/moved", PermanentError, "redirect not followed"),
        ("/hooks/token-that-must-not-leak", InvalidAddressError, "404"),
    ],
)
def test_answers_map_to_error_classes(
    webhook_sink: WebhookSink,
    signed: WebhookConfig,
    make_delivery: Any,
    path: str,
    error_class: type[Exception],
    fragment: str,
) -> None:
    error = send_one(signed, hook(make_delivery, webhook_sink.url(path)))

    assert type(error) is error_class
    assert fragment in str(error)
    assert len(webhook_sink.wait_for(1)) == 1  # exactly one request: nothing followed or repeated


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, PermanentError),
        (401, PermanentError),
        (403, PermanentError),
        (404, InvalidAddressError),
        (410, InvalidAddressError),
        (408, TransientError),
        (409, PermanentError),
        (422, PermanentError),
        (425, TransientError),
        (500, TransientError),
        (502, TransientError),
        (504, TransientError),
        (301, PermanentError),
        (307, PermanentError),
    ],
)
def test_status_table(make_delivery: Any, unsigned: WebhookConfig, status: int, expected: type[Exception]) -> None:
    with WebhookSink(statuses={"/s": status}) as sink:
        error = send_one(unsigned, hook(make_delivery, sink.url("/s")))
        assert type(error) is expected
        assert str(status) in str(error)
        assert sink.wait_for(1)[0]["status"] == status


def test_410_error_carries_a_body_excerpt(webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any) -> None:
    error = send_one(signed, hook(make_delivery, webhook_sink.url("/gone")))

    assert "endpoint removed" in str(error)


def test_long_answer_excerpt_is_capped(webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any) -> None:
    error = send_one(signed, hook(make_delivery, webhook_sink.url("/teapot")))

    assert isinstance(error, PermanentError)
    assert "418" in str(error)
    excerpt = str(error).split(": ", 1)[1]
    assert len(excerpt) <= 200
    assert excerpt.startswith("xxxx")


def test_429_is_rate_limited_with_retry_after(
    webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any
) -> None:
    error = send_one(signed, hook(make_delivery, webhook_sink.url("/slow-down")))

    assert isinstance(error, RateLimitedError)
    assert isinstance(error, TransientError)
    assert error.retry_after == 2.0


def test_429_with_an_http_date(make_delivery: Any, unsigned: WebhookConfig) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    with WebhookSink(statuses={"/rl": (429, {"Retry-After": later})}) as sink:
        error = send_one(unsigned, hook(make_delivery, sink.url("/rl")))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after is not None
    assert 80 <= error.retry_after <= 91


def test_429_without_retry_after(make_delivery: Any, unsigned: WebhookConfig) -> None:
    with WebhookSink(statuses={"/rl": 429}) as sink:
        error = send_one(unsigned, hook(make_delivery, sink.url("/rl")))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after is None


def test_slow_receiver_times_out_as_transient(
    webhook_sink: WebhookSink, webhook_secret: str, make_delivery: Any
) -> None:
    cfg = WebhookConfig(
        signing_secret=webhook_secret, timeout=0.3, connect_timeout=0.3, trust_env=False, allow_networks=LOOPBACK
    )
    started = time.monotonic()

    error = send_one(cfg, hook(make_delivery, webhook_sink.url("/slow")))

    assert isinstance(error, TransientError)
    assert "timed out" in str(error)
    assert time.monotonic() - started < 2.0


def test_connection_closed_without_answer_is_transient(
    webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any
) -> None:
    error = send_one(signed, hook(make_delivery, webhook_sink.url("/drop")))

    assert isinstance(error, TransientError)
    assert webhook_sink.wait_for(1)[0]["status"] is None


def test_receiver_down_is_transient(closed_port: int, signed: WebhookConfig, make_delivery: Any) -> None:
    error = send_one(signed, hook(make_delivery, f"http://127.0.0.1:{closed_port}/hooks/x"))

    assert isinstance(error, TransientError)
    assert error.__cause__ is not None


def test_receiver_that_never_answers_times_out(silent_port: int, make_delivery: Any) -> None:
    cfg = WebhookConfig(timeout=0.3, connect_timeout=0.3, trust_env=False, allow_networks=LOOPBACK)
    started = time.monotonic()

    error = send_one(cfg, hook(make_delivery, f"http://127.0.0.1:{silent_port}/x"))

    assert isinstance(error, TransientError)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "example.com/hooks",
        "/relative/path",
        "ftp://example.com/hooks",
        "mailto:ops@example.com",
        "http://",
        "https:///no-host",
        "javascript:alert(1)",
    ],
)
def test_invalid_url_is_refused_before_sending(
    open_webhook_sink: WebhookSink, unsigned: WebhookConfig, make_delivery: Any, url: str
) -> None:
    error = send_one(unsigned, hook(make_delivery, url))

    assert isinstance(error, InvalidAddressError)
    assert open_webhook_sink.received() == []


def test_errors_mask_the_url(webhook_sink: WebhookSink, signed: WebhookConfig, make_delivery: Any) -> None:
    error = send_one(signed, hook(make_delivery, webhook_sink.url("/hooks/token-that-must-not-leak")))

    assert isinstance(error, PermanentError)
    assert "token-that-must-not-leak" not in str(error)
    assert "/hooks/***" in str(error)


def test_secret_is_hidden_in_config_repr(webhook_secret: str) -> None:
    cfg = WebhookConfig(signing_secret=webhook_secret, allow_networks=LOOPBACK)

    for text in (repr(cfg), str(cfg), cfg.model_dump_json()):
        assert webhook_secret not in text
        assert webhook_secret[6:] not in text


def test_malformed_secret_fails_at_start() -> None:
    with pytest.raises(ValueError, match="base64"):
        WebhookChannel(WebhookConfig(signing_secret="whsec_not*base64"))


def test_send_after_aclose_is_a_bug(make_delivery: Any, unsigned: WebhookConfig) -> None:
    async def scenario() -> None:
        channel = WebhookChannel(unsigned)
        await channel.aclose()
        await channel.send(hook(make_delivery, "http://127.0.0.1:9/x"))

    with pytest.raises(RuntimeError):
        asyncio.run(scenario())


# ------------------------------------------------------------------ Retry-After parsing


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_default_body_is_compact_json(make_delivery: Any) -> None:
    delivery = hook(make_delivery, "https://example.com/x", subject="Grüße")

    body = default_body(delivery)

    assert json.loads(body)["title"] == "Grüße"
    assert "Grüße".encode() in body


def test_in_flight_limit_follows_the_connection_limit() -> None:
    from channels.webhook import WebhookChannel, WebhookConfig

    channel = WebhookChannel(WebhookConfig(max_connections=5))
    try:
        assert channel.max_in_flight() == 5
    finally:
        asyncio.run(channel.aclose())


# ------------------------------------------------------------------ receiver rate


def test_a_429_pauses_that_receiver_only(make_delivery: Any) -> None:
    with WebhookSink(statuses={"/slow-down": (429, {"Retry-After": "30"})}) as sink, WebhookSink() as other:
        cfg = WebhookConfig(trust_env=False, allow_networks=LOOPBACK, max_queue_wait=0)
        limited, held, elsewhere = asyncio.run(send_all(
            cfg,
            hook(make_delivery, sink.url("/slow-down")),
            hook(make_delivery, sink.url("/hooks/fine")),
            hook(make_delivery, other.url("/hooks/fine")),
        ))
        assert isinstance(limited, RateLimitedError) and limited.retry_after == 30
        assert isinstance(held, RateLimitedError) and held.retry_after is not None and held.retry_after > 25
        assert elsewhere.provider_id == "wh_1"
        assert [r["path"] for r in sink.received()] == ["/slow-down"]  # the held one never left


def test_per_second_spaces_requests_to_one_receiver(make_delivery: Any) -> None:
    with WebhookSink() as sink:
        cfg = WebhookConfig(trust_env=False, allow_networks=LOOPBACK, per_second=20, burst=1)
        started = time.monotonic()
        results = asyncio.run(send_all(cfg, *(hook(make_delivery, sink.url(f"/h/{i}")) for i in range(4))))
        took = time.monotonic() - started
    assert all(r.provider_id for r in results)
    assert took >= 0.14  # three waits of 1/20 s after the first
