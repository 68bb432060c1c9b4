"""The inbox store on a real Redis: order, cap, expiry, counts, read state, idempotence, live events."""

from __future__ import annotations

from datetime import timedelta

import pytest
from redis import Redis

from channels.inapp.store import InboxStore, inbox_keys

from .conftest import NOW, StoreRunner, make_item

pytestmark = pytest.mark.integration
T, U = "acme", "u-ada"


async def add_many(store: InboxStore, n: int, user: str = U, start: int = 0) -> None:
    for i in range(start, start + n):
        result = await store.add(T, user, make_item(f"d-{i}"), NOW + timedelta(seconds=i))
        assert result.outcome == "added"


def test_newest_first_with_unread_count(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        await add_many(store, 3)
        page = await store.page(T, U, NOW)
        assert [e.item.id for e in page.entries] == ["d-2", "d-1", "d-0"]
        assert all(not e.read for e in page.entries)
        assert (page.unread, page.total, page.next_cursor) == (3, 3, None)
        assert page.entries[0].item == make_item("d-2")
        assert (await store.counts(T, U, NOW)).unread == 3

    with_store(go)


def test_a_redelivered_item_is_not_added_twice_and_announces_nothing(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        first = await store.add(T, U, make_item("d-1"), NOW)
        before = await store.last_event_id(T, U)
        again = await store.add(T, U, make_item("d-1", title="changed"), NOW + timedelta(seconds=5))
        assert (first.outcome, again.outcome) == ("added", "duplicate")
        page = await store.page(T, U, NOW)
        assert [e.item.title for e in page.entries] == ["Title d-1"]
        assert page.unread == 1
        assert await store.last_event_id(T, U) == before

    with_store(go)


def test_cursor_paging_walks_every_item_once(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        await add_many(store, 7)
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await store.page(T, U, NOW, cursor=cursor, limit=3)
            seen += [e.item.id for e in page.entries]
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [f"d-{i}" for i in range(6, -1, -1)]
        assert pages == 3
        # an item that arrives while paging does not shift the later pages
        first = await store.page(T, U, NOW, limit=3)
        await add_many(store, 1, start=100)
        second = await store.page(T, U, NOW, cursor=first.next_cursor, limit=3)
        assert [e.item.id for e in second.entries] == ["d-3", "d-2", "d-1"]

    with_store(go)


def test_the_cap_drops_the_oldest(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        await add_many(store, 5)
        result = await store.add(T, U, make_item("d-5"), NOW)
        assert (result.outcome, result.evicted, result.unread) == ("added", 1, 4)
        page = await store.page(T, U, NOW)
        assert [e.item.id for e in page.entries] == ["d-5", "d-4", "d-3", "d-2"]
        assert await store.is_unread(T, U, "d-0", NOW) is None
        assert await store.is_unread(T, U, "d-1", NOW) is None
        assert (await store.add(T, U, make_item("d-0"), NOW)).outcome == "added"  # evicted ones are forgotten

    with_store(go, max_items=4)


def test_expired_items_disappear_and_the_change_is_announced(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        await store.add(T, U, make_item("short", lifetime=timedelta(minutes=5)), NOW)
        await store.add(T, U, make_item("long", lifetime=timedelta(days=2)), NOW)
        assert (await store.counts(T, U, NOW + timedelta(minutes=4))).unread == 2
        mark = await store.last_event_id(T, U)
        later = NOW + timedelta(minutes=6)
        counts = await store.counts(T, U, later)
        assert (counts.unread, counts.total) == (1, 1)
        replay = await store.replay(T, U, mark)
        assert [(e.type, e.data) for e in replay.events] == [("expired", {"ids": ["short"], "unread": 1})]
        assert [e.item.id for e in (await store.page(T, U, later)).entries] == ["long"]
        late = await store.add(T, U, make_item("late", now=NOW, lifetime=timedelta(minutes=1)), later)
        assert late.outcome == "expired"

    with_store(go)


def test_mark_read_mark_all_and_dismiss(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        await add_many(store, 4)
        assert await store.mark_read(T, U, "d-1", NOW) == ("read", 3)
        assert await store.mark_read(T, U, "d-1", NOW) == ("already_read", 3)
        assert await store.mark_read(T, U, "nope", NOW) == ("missing", 3)
        page = await store.page(T, U, NOW)
        assert {e.item.id: e.read for e in page.entries} == {"d-3": False, "d-2": False, "d-1": True, "d-0": False}
        assert await store.dismiss(T, U, "d-3", NOW) == (True, 2)
        assert await store.dismiss(T, U, "d-3", NOW) == (False, 2)
        assert await store.is_unread(T, U, "d-2", NOW) is True
        assert await store.is_unread(T, U, "d-1", NOW) is False
        assert await store.mark_all_read(T, U, NOW) == 2
        assert await store.mark_all_read(T, U, NOW) == 0
        counts = await store.counts(T, U, NOW)
        assert (counts.unread, counts.total) == (0, 3)
        # a dismissed item stays gone when its delivery is redelivered
        assert (await store.add(T, U, make_item("d-3"), NOW)).outcome == "duplicate"
        assert [e.item.id for e in (await store.page(T, U, NOW)).entries] == ["d-2", "d-1", "d-0"]

    with_store(go)


def test_users_and_tenants_are_separate(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        await add_many(store, 2, user="u-ada")
        await store.add(T, "u-grace", make_item("g-1"), NOW)
        await store.add("other", "u-ada", make_item("o-1"), NOW)
        assert [e.item.id for e in (await store.page(T, "u-grace", NOW)).entries] == ["g-1"]
        assert [e.item.id for e in (await store.page("other", "u-ada", NOW)).entries] == ["o-1"]
        assert await store.mark_read(T, "u-grace", "d-0", NOW) == ("missing", 1)
        assert (await store.counts(T, "u-ada", NOW)).unread == 2

    with_store(go)


def test_every_change_is_an_event_in_order_and_replays_after_an_id(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        assert await store.last_event_id(T, U) == "0-0"
        await store.add(T, U, make_item("a", action_url="/jobs/1", action_label="Open"), NOW)
        mark = await store.last_event_id(T, U)
        await store.add(T, U, make_item("b"), NOW)
        await store.mark_read(T, U, "a", NOW)
        await store.dismiss(T, U, "b", NOW)
        await store.add(T, U, make_item("c"), NOW)
        await store.mark_all_read(T, U, NOW)
        replay = await store.replay(T, U, mark)
        assert replay.complete
        kinds = [(e.type, e.data.get("id"), e.data["unread"]) for e in replay.events]
        assert kinds == [("new", "b", 2), ("read", "a", 1), ("dismissed", "b", 0), ("new", "c", 1),
                         ("read_all", None, 0)]
        new = replay.events[0].data["item"]
        assert new["id"] == "b" and new["read"] is False and new["title"] == "Title b"
        assert replay.events[-1].data["count"] == 1
        everything = await store.replay(T, U, "0-0")
        assert everything.complete and len(everything.events) == 6
        assert await store.replay(T, U, replay.events[-1].id) == type(replay)([], True)

    with_store(go)


def test_a_replay_past_the_trimmed_part_of_the_stream_is_incomplete(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        await add_many(store, 1)
        first = await store.last_event_id(T, U)
        await add_many(store, 400, start=1)  # MAXLEN ~ 10 trims whole nodes of entries away
        replay = await store.replay(T, U, first)
        assert not replay.complete
        latest = await store.last_event_id(T, U)
        assert await store.replay(T, U, latest) == type(replay)([], True)
        ms = latest.partition("-")[0]
        assert not (await store.replay(T, U, f"{int(ms) + 60_000}-0")).complete  # never given out
        missing = await store.replay("acme", "nobody", "1-0")
        assert not missing.complete and missing.events == []
        assert (await store.replay("acme", "nobody", "0-0")).complete

    with_store(go, stream_length=10, max_items=1000)


def test_wait_returns_new_events_and_times_out_empty(with_store: StoreRunner) -> None:
    async def go(store: InboxStore) -> None:
        import asyncio

        mark = await store.last_event_id(T, U)
        assert await store.wait(T, U, mark, block_ms=50) == []

        async def later() -> None:
            await asyncio.sleep(0.2)
            await store.add(T, U, make_item("live"), NOW)

        task = asyncio.create_task(later())
        events = await store.wait(T, U, mark, block_ms=10_000)
        await task
        assert [(e.type, e.data["id"]) for e in events] == [("new", "live")]

    with_store(go)


def test_keys_share_one_hash_tag_and_expire_with_their_items(with_store: StoreRunner,
                                                              redis_client: Redis) -> None:
    async def go(store: InboxStore) -> None:
        await store.add(T, U, make_item("a", lifetime=timedelta(days=2)), NOW)

    keys = inbox_keys(T, U)
    assert {k.split("}")[0] for k in keys} == {"tidings:{acme:u-ada"}
    with_store(go)
    for key in keys:
        ttl = redis_client.pttl(key)
        assert 2 * 86400_000 - 60_000 < ttl <= 2 * 86400_000, key
