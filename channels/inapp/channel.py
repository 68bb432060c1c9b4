"""The in-app channel: a Delivery becomes an entry in the recipient's inbox.

The inbox is keyed by the delivery's tenant and recipient id; the recipient's
``contacts.inapp`` value only switches the channel on for them (the router
sends a channel only to recipients with a contact point for it). Live clients
learn of the new entry from the inbox's event stream (see
:mod:`channels.inapp.store`), so this channel never talks to a browser.

Outcomes: :class:`Sent` with ``detail`` ``added``, ``duplicate`` (the same
delivery id is already in the inbox, or was dismissed: nothing changes) or
``expired`` (its ``expires_at`` had passed: nothing is shown), plus any
notes on fields that were left out. Redis errors and timeouts are
:class:`~schemas.errors.TransientError`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar

from pydantic import Field, SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from channels.base import Channel, ChannelConfig, Limits, Sent
from channels.inapp.items import item_from_delivery
from channels.inapp.store import InboxStore
from schemas import Delivery
from schemas.errors import TransientError

__all__ = ["InAppChannel", "InAppConfig"]


class InAppConfig(ChannelConfig):
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    """Where the inboxes live (a SecretStr: the URL may hold a password)."""
    max_items: int = Field(default=200, ge=1)
    """Entries kept per inbox; the oldest are dropped beyond it."""
    max_age_seconds: int = Field(default=30 * 86400, ge=60)
    """Default and longest lifetime of an entry."""
    stream_length: int = Field(default=1000, ge=10)
    """Change events kept per inbox for clients that reconnect."""


class InAppChannel(Channel):
    name: ClassVar[str] = "inapp"
    config_model: ClassVar[type[ChannelConfig]] = InAppConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=64)

    def __init__(self, config: InAppConfig) -> None:
        self.config = config
        self._redis: Redis | None = None
        self._store: InboxStore | None = None

    @property
    def store(self) -> InboxStore:
        if self._store is None:
            self._redis = Redis.from_url(self.config.redis_url.get_secret_value(),
                                         socket_timeout=5, socket_connect_timeout=5)
            self._store = InboxStore(self._redis, max_items=self.config.max_items,
                                     stream_length=self.config.stream_length)
        return self._store

    async def send(self, delivery: Delivery) -> Sent:
        now = datetime.now(UTC)
        conversion = item_from_delivery(delivery, now, timedelta(seconds=self.config.max_age_seconds))
        try:
            result = await self.store.add(delivery.tenant, delivery.recipient_id, conversion.item, now)
        except (RedisError, OSError) as exc:
            raise TransientError(f"inbox store unavailable: {type(exc).__name__}") from exc
        detail = "; ".join([result.outcome, *conversion.notes])
        return Sent(provider_id=delivery.delivery_id, detail=detail)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self._store = None
