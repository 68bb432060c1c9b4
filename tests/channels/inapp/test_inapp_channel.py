"""The in-app channel on a real Redis: a Delivery lands in the recipient's inbox, once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from channels import load_channel_class
from channels.inapp import InAppChannel, InAppConfig, InboxStore
from consumers.settings import Settings
from schemas import Delivery
from schemas.errors import TransientError

from ..conftest import DeliveryFactory

pytestmark = pytest.mark.integration


def channel_for(redis_url: str, **options: object) -> InAppChannel:
    channel = load_channel_class("inapp").from_config({"redis_url": SecretStr(redis_url), **options})
    assert isinstance(channel, InAppChannel)
    return channel


async def send_all(channel: InAppChannel, *deliveries: Delivery) -> list[str]:
    try:
        return [(await channel.send(d)).detail or "" for d in deliveries]
    finally:
        await channel.aclose()


async def first_page(redis_url: str, tenant: str, user: str) -> list[dict[str, object]]:
    client = AsyncRedis.from_url(redis_url)
    try:
        page = await InboxStore(client).page(tenant, user, datetime.now(UTC))
        return [e.to_api() for e in page.entries]
    finally:
        await client.aclose()


def test_a_delivery_becomes_an_unread_inbox_entry(redis_url: str, redis_client: Redis,
                                                  make_delivery: DeliveryFactory) -> None:
    d = make_delivery(channel="inapp", address="on", subject="Interview on Monday", text="Room 4",
                      metadata={"action_url": "/applications/7", "action_label": "Open application"})
    assert asyncio.run(send_all(channel_for(redis_url), d)) == ["added"]
    entries = asyncio.run(first_page(redis_url, "acme", "user-42"))
    assert len(entries) == 1
    entry = entries[0]
    assert entry["id"] == d.delivery_id and entry["title"] == "Interview on Monday" and entry["body"] == "Room 4"
    assert entry["action_url"] == "/applications/7" and entry["action_label"] == "Open application"
    assert entry["read"] is False


def test_a_redelivery_does_not_duplicate_the_entry(redis_url: str, redis_client: Redis,
                                                   make_delivery: DeliveryFactory) -> None:
    d = make_delivery(channel="inapp", address="on")
    again = d.model_copy(update={"attempt": 1})
    assert asyncio.run(send_all(channel_for(redis_url), d, again)) == ["added", "duplicate"]
    assert len(asyncio.run(first_page(redis_url, "acme", "user-42"))) == 1


def test_notes_and_expired_deliveries_are_reported(redis_url: str, redis_client: Redis,
                                                   make_delivery: DeliveryFactory) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    stale = make_delivery(channel="inapp", address="on", metadata={"expires_at": past})
    link = make_delivery(channel="inapp", address="on", metadata={"action_url": "javascript:alert(1)"})
    details = asyncio.run(send_all(channel_for(redis_url), stale, link))
    assert details == ["expired",
                       "added; action_url left out: only http(s) URLs and paths starting with '/' are linked"]
    assert [e["id"] for e in asyncio.run(first_page(redis_url, "acme", "user-42"))] == [link.delivery_id]


def test_the_cap_from_configuration_applies(redis_url: str, redis_client: Redis,
                                            make_delivery: DeliveryFactory) -> None:
    deliveries = [make_delivery(channel="inapp", address="on") for _ in range(4)]
    asyncio.run(send_all(channel_for(redis_url, max_items=2), *deliveries))
    assert [e["id"] for e in asyncio.run(first_page(redis_url, "acme", "user-42"))] == [
        deliveries[3].delivery_id, deliveries[2].delivery_id]


def test_redis_down_is_a_transient_error_without_the_url(closed_port: int, make_delivery: DeliveryFactory) -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{closed_port}/0"
    channel = channel_for(url)
    with pytest.raises(TransientError, match="inbox store unavailable") as info:
        asyncio.run(send_all(channel, make_delivery(channel="inapp", address="on")))
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(channel.config)


def test_settings_configure_the_channel(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, inbox_max_items=7, inbox_max_age_seconds=3600,
                        inbox_stream_length=50)
    config = InAppConfig.model_validate(settings.channel_config("inapp"))
    assert config.redis_url.get_secret_value() == redis_url
    assert (config.max_items, config.max_age_seconds, config.stream_length) == (7, 3600, 50)


def test_the_token_secret_is_masked_in_settings() -> None:
    settings = Settings(inbox_secret="a-very-secret-inbox-key-123")
    assert settings.describe()["inbox_secret"] == "***"
    assert "a-very-secret-inbox-key-123" not in repr(settings) + str(settings)
