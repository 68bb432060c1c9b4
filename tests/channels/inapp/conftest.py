"""Inbox fixtures: a real Redis (the session's), flushed per test, used through the async store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from channels.inapp.items import InboxItem
from channels.inapp.store import InboxStore

T = TypeVar("T")
NOW = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
StoreRunner = Callable[..., Any]


def make_item(ident: str, *, title: str | None = None, now: datetime = NOW,
              lifetime: timedelta = timedelta(days=1), **fields: Any) -> InboxItem:
    values: dict[str, Any] = {
        "id": ident, "title": title or f"Title {ident}", "body": f"Body of {ident}", "event_type": "jobs.match.found",
        "event_id": f"evt-{ident}", "rule": "job-match", "priority": "normal", "category": "jobs.match.found",
        "created_at": now, "expires_at": now + lifetime,
    }
    values.update(fields)
    return InboxItem(**values)


@pytest.fixture
def with_store(redis_url: str, redis_client: Redis) -> StoreRunner:
    """``with_store(fn, **options)`` runs ``await fn(store)`` on a fresh event loop and returns its result."""

    def run(fn: Callable[[InboxStore], Awaitable[T]], **options: Any) -> T:
        async def main() -> T:
            client = AsyncRedis.from_url(redis_url)
            try:
                return await fn(InboxStore(client, **options))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return run
