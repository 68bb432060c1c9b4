"""Session fixtures: a real Kafka broker and a real Redis server on free ports.

They start once per test session (Kafka takes a few seconds) under a temporary
state directory and stop at the end. To use servers that are already running,
set ``TIDINGS_TEST_KAFKA=host:port`` and ``TIDINGS_TEST_REDIS=redis://host:port/db``.
Each test gets its own topic prefix and consumer groups, so tests never see
each other's records.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from devstack import infra

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def infra_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


def _given_or_started(variable: str, start: Callable[[int], infra.Service], address: str) -> Iterator[str]:
    """The server named by ``variable``, or one started on a free port and stopped afterwards."""
    given = os.environ.get(variable)
    if given:
        yield given
        return
    port = infra.free_port()
    service = start(port)
    try:
        yield address.format(port=port)
    finally:
        service.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(infra_state: Path) -> Iterator[str]:
    yield from _given_or_started(
        "TIDINGS_TEST_KAFKA", lambda port: infra.start_kafka(infra_state, port, infra.free_port()),
        "127.0.0.1:{port}")


@pytest.fixture(scope="session")
def redis_url(infra_state: Path) -> Iterator[str]:
    yield from _given_or_started(
        "TIDINGS_TEST_REDIS", lambda port: infra.start_redis(infra_state, port), "redis://127.0.0.1:{port}/0")


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]
