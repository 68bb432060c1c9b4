from __future__ import annotations

import pytest
from redis import Redis

from router.subscriptions import SubscriptionError, SubscriptionStore


def test_subscribe_list_and_unsubscribe(redis_client: Redis) -> None:
    store = SubscriptionStore(redis_client)
    assert store.subscribe("acme", "u-1", ["jobs.match.found", "project:42"]) == 2
    assert store.subscribe("acme", "u-1", ["project:42"]) == 0
    assert store.topics("acme", "u-1") == ["jobs.match.found", "project:42"]
    assert store.count("acme", "project:42") == 1
    assert store.count("other", "project:42") == 0
    assert store.unsubscribe("acme", "u-1", ["project:42"]) == 1
    assert store.topics("acme", "u-1") == ["jobs.match.found"]
    assert store.count("acme", "project:42") == 0


def test_pages_follow_id_order_from_a_cursor(redis_client: Redis) -> None:
    store = SubscriptionStore(redis_client)
    users = [f"u-{i:04d}" for i in range(25)]
    assert store.subscribe_many("acme", "news", reversed(users), chunk=7) == 25
    seen: list[str] = []
    cursor = None
    while page := store.page("acme", "news", cursor, 10):
        seen += page
        cursor = page[-1]
    assert seen == users
    assert store.page("acme", "news", "u-0019", 3) == ["u-0020", "u-0021", "u-0022"]


def test_bad_input_writes_nothing(redis_client: Redis) -> None:
    store = SubscriptionStore(redis_client)
    with pytest.raises(SubscriptionError, match="topic 'bad topic'"):
        store.subscribe("acme", "u-1", ["good", "bad topic"])
    with pytest.raises(SubscriptionError, match="user id"):
        store.subscribe_many("acme", "news", ["u-1", "-bad"])
    with pytest.raises(SubscriptionError, match="no topic"):
        store.subscribe("acme", "u-1", [])
    assert redis_client.dbsize() == 0
