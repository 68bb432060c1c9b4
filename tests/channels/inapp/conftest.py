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


SECRET = "inbox-api-test-secret-0123456789"


class Clock:
    """Unix seconds that a test can move; the API reads it for tokens and expiry."""

    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


class Server:
    """The inbox app served by a real uvicorn on a loopback port, in a thread."""

    def __init__(self, redis_url: str, clock: Clock, **options: Any) -> None:
        import threading

        import uvicorn

        from channels.inapp.api import create_app
        from devstack import infra

        store_options = {k: options.pop(k) for k in ("max_items", "stream_length") if k in options}
        self.redis = AsyncRedis.from_url(redis_url)
        app = create_app(InboxStore(self.redis, **store_options), SECRET, clock=clock, **options)
        self.app = app
        self.port = infra.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, access_log=False, log_level="warning",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="inbox-api", daemon=True)

    def start(self) -> Server:
        import time

        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "inbox API did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "inbox API did not stop"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api_server(redis_url: str, redis_client: Redis, clock: Clock) -> Any:
    """``api_server(**create_app options)`` starts a server; all are stopped after the test."""
    servers: list[Server] = []

    def start(**options: Any) -> Server:
        server = Server(redis_url, clock, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
