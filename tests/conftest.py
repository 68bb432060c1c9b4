"""Session fixtures: a real Kafka broker and a real Redis server on free ports.

They start once per test session (Kafka takes a few seconds) under a temporary
state directory and stop at the end. To use servers that are already running,
set ``TIDINGS_TEST_KAFKA=host:port`` and ``TIDINGS_TEST_REDIS=redis://host:port/db``.
Each test gets its own topic prefix and consumer groups, so tests never see
each other's records.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
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
def unique(request: pytest.FixtureRequest) -> Iterator[str]:
    """An id for this test's topics and groups; the topics that carry it are deleted afterwards.

    Without the clean-up a whole session leaves tens of thousands of partition
    directories behind, and the broker runs out of file descriptors.
    """
    tag = uuid.uuid4().hex[:10]
    yield tag
    if "kafka_bootstrap" in request.fixturenames:
        _delete_topics_containing(request.getfixturevalue("kafka_bootstrap"), tag)


def _delete_topics_containing(bootstrap: str, tag: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = [name for name in admin.list_topics(timeout=10).topics if tag in name]
    except KafkaException:
        return  # a test that stopped its broker leaves nothing to clean here
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=30, request_timeout=30).values():
        with contextlib.suppress(KafkaException):  # already gone, or the broker is restarting
            future.result()
