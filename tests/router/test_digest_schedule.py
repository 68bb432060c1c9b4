from __future__ import annotations

import threading
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from redis import Redis

from router import keys
from router.digest import Cadence, bucket_id, build_digest, due_at, next_flush, parse_bucket
from router.schedule import DigestAdd, HeldStore, Hold, ScheduleError, ms, requested_time, scheduled_due
from router.templates import Renderer
from schemas import Delivery, delivery_id

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 17, 10, 30, tzinfo=UTC)  # a Friday


def _delivery(n: int, when: datetime = NOW, rule: str = "r", channel: str = "email") -> Delivery:
    return Delivery(delivery_id=delivery_id("/s", f"e{n}", rule, "u-1", channel), event_id=f"e{n}",
                    event_source="/s", event_type="t", event_time=when + timedelta(seconds=n), tenant="acme",
                    rule=rule, channel=channel, recipient_id="u-1", address="u1@example.com",
                    subject=f"item {n}", text=f"text {n}\n", created_at=when)


# -- cadences -------------------------------------------------------------------------------


def test_hourly_daily_weekly_boundaries_in_local_time() -> None:
    hourly = Cadence(channel="inapp", every="hourly")
    assert next_flush(NOW, "UTC", hourly) == datetime(2024, 5, 17, 11, 0, tzinfo=UTC)
    # India is UTC+5:30: the next local full hour is 16:00 IST = 10:30 UTC... strictly after now: 17:00 IST.
    assert next_flush(NOW, "Asia/Kolkata", hourly).astimezone(UTC) == datetime(2024, 5, 17, 11, 30, tzinfo=UTC)
    daily = Cadence(channel="email", every="daily", at=time(8, 0))
    # 12:30 in Berlin: 08:00 has passed, so tomorrow 08:00 CEST = 06:00 UTC.
    assert next_flush(NOW, "Europe/Berlin", daily).astimezone(UTC) == datetime(2024, 5, 18, 6, 0, tzinfo=UTC)
    # 06:30 in New York: today 08:00 EDT = 12:00 UTC.
    assert next_flush(NOW, "America/New_York", daily).astimezone(UTC) == datetime(2024, 5, 17, 12, 0,
                                                                                   tzinfo=UTC)
    weekly = Cadence(channel="email", every="weekly", day="mon", at=time(9, 0))
    assert next_flush(NOW, "UTC", weekly) == datetime(2024, 5, 20, 9, 0, tzinfo=UTC)
    friday = Cadence(channel="email", every="weekly", day="fri", at=time(9, 0))
    assert next_flush(NOW, "UTC", friday) == datetime(2024, 5, 24, 9, 0, tzinfo=UTC)
    later = Cadence(channel="email", every="weekly", day="fri", at=time(11, 0))
    assert next_flush(NOW, "UTC", later) == datetime(2024, 5, 17, 11, 0, tzinfo=UTC)


def test_max_wait_brings_the_due_time_forward() -> None:
    daily = Cadence(channel="email", every="daily", at=time(8, 0), max_wait="2h")  # type: ignore[arg-type]
    assert due_at(NOW, "UTC", daily) == NOW + timedelta(hours=2)
    assert due_at(NOW, "UTC", Cadence(channel="email", every="hourly", max_wait="2h")) == NOW.replace(  # type: ignore[arg-type]
        hour=11, minute=0)


def test_buckets_round_trip() -> None:
    assert parse_bucket(bucket_id("acme", "u-1", "r", "email", "daily")) == ("acme", "u-1", "r", "email", "daily")


def test_digest_lists_items_in_event_order_with_a_deterministic_id() -> None:
    renderer = Renderer(REPO / "config" / "templates")
    bucket = bucket_id("acme", "u-1", "r", "email", "daily")
    items = [_delivery(2), _delivery(1), _delivery(3)]
    one = build_digest(bucket, items, renderer, "digest", NOW, timedelta(hours=1))
    again = build_digest(bucket, list(reversed(items)), renderer, "digest", NOW + timedelta(minutes=5),
                         timedelta(hours=1))
    assert one.delivery_id == again.delivery_id
    assert one.subject == "3 new notifications (daily digest)"
    assert one.text.index("item 1") < one.text.index("item 2") < one.text.index("item 3")
    assert (one.channel, one.recipient_id, one.address, one.tenant) == ("email", "u-1", "u1@example.com", "acme")
    assert one.metadata == {"digest_items": "3", "digest_cadence": "daily"}
    fewer = build_digest(bucket, items[:2], renderer, "digest", NOW, timedelta(hours=1))
    assert fewer.delivery_id != one.delivery_id


# -- schedule -------------------------------------------------------------------------------


def test_requested_time_from_the_extensions() -> None:
    assert requested_time("2024-05-17T12:00:00Z", None, NOW) == datetime(2024, 5, 17, 12, 0, tzinfo=UTC)
    assert requested_time(None, "90", NOW) == NOW + timedelta(seconds=90)
    assert requested_time(None, None, NOW) is None
    with pytest.raises(ScheduleError, match="ce_deliverat 'soon'"):
        requested_time("soon", None, NOW)
    with pytest.raises(ScheduleError, match="not a number"):
        requested_time(None, "ten", NOW)
    with pytest.raises(ScheduleError, match="between 0 and"):
        requested_time(None, "-5", NOW)


def test_scheduled_due() -> None:
    assert scheduled_due(NOW, None, None) is None
    assert scheduled_due(NOW, NOW - timedelta(minutes=1), None) is None  # past: send now
    assert scheduled_due(NOW, NOW + timedelta(hours=2), None) == NOW + timedelta(hours=2)
    assert scheduled_due(NOW, None, timedelta(minutes=15)) == NOW + timedelta(minutes=15)
    assert scheduled_due(NOW, NOW + timedelta(minutes=5), timedelta(minutes=15)) == NOW + timedelta(minutes=15)


# -- the held store on real Redis -----------------------------------------------------------------


def test_held_items_are_released_when_due_and_removed_on_ack(redis_client: Redis) -> None:
    store = HeldStore(redis_client)
    a, b = _delivery(1), _delivery(2)
    store.hold([Hold("scheduled", NOW + timedelta(minutes=5), a), Hold("quiet_hours", NOW + timedelta(hours=8), b)],
               [], NOW)
    assert store.pending() == {"scheduled": 1, "quiet_hours": 1, "digest": 0}
    assert store.claim(NOW).released == []
    got = store.claim(NOW + timedelta(minutes=5))
    assert [(r.kind, r.member, r.deliveries) for r in got.released] == [("scheduled", a.delivery_id, [a])]
    assert got.counts == {"scheduled": 1, "quiet_hours": 1, "digest": 0}
    # While the lease runs nobody else gets it.
    assert store.claim(NOW + timedelta(minutes=5, seconds=30)).released == []
    assert store.ack(got.released) == 1
    assert store.pending()["scheduled"] == 0
    assert not redis_client.exists(keys.held_item(a.delivery_id))


def test_an_unacknowledged_release_comes_back_after_its_lease(redis_client: Redis) -> None:
    store = HeldStore(redis_client)
    a = _delivery(1)
    store.hold([Hold("scheduled", NOW, a)], [], NOW)
    first = store.claim(NOW, lease=timedelta(seconds=30))
    assert len(first.released) == 1
    assert store.claim(NOW + timedelta(seconds=29), lease=timedelta(seconds=30)).released == []
    second = store.claim(NOW + timedelta(seconds=31), lease=timedelta(seconds=30))
    assert [r.deliveries for r in second.released] == [[a]]
    # The first claimer's late ack does nothing: the lease is no longer its own.
    assert store.ack(first.released) == 0
    assert store.ack(second.released) == 1


def test_holding_the_same_delivery_twice_keeps_one_entry_and_the_first_due_time(redis_client: Redis) -> None:
    store = HeldStore(redis_client)
    a = _delivery(1)
    store.hold([Hold("scheduled", NOW + timedelta(minutes=5), a)], [], NOW)
    store.hold([Hold("scheduled", NOW + timedelta(minutes=9), a)], [], NOW)
    assert redis_client.zrange(keys.held_due("scheduled"), 0, -1, withscores=True) == [
        (a.delivery_id.encode(), float(ms(NOW + timedelta(minutes=5))))]


def test_digest_bucket_collects_once_per_delivery_and_flushes_at_max_items(redis_client: Redis) -> None:
    store = HeldStore(redis_client)
    bucket = bucket_id("acme", "u-1", "r", "email", "daily")
    later = NOW + timedelta(hours=20)
    store.hold([], [DigestAdd(bucket, later, 3, _delivery(1)), DigestAdd(bucket, later, 3, _delivery(1)),
                    DigestAdd(bucket, later, 3, _delivery(2))], NOW)
    assert redis_client.hlen(keys.digest_items(bucket)) == 2
    assert store.claim(NOW).released == []
    store.hold([], [DigestAdd(bucket, later, 3, _delivery(3))], NOW)  # the third item: due now
    got = store.claim(NOW)
    assert [sorted(d.event_id for d in r.deliveries) for r in got.released] == [["e1", "e2", "e3"]]
    # An item that arrives while the digest is being sent waits for the next one.
    store.hold([], [DigestAdd(bucket, later, 3, _delivery(4))], NOW)
    assert store.ack(got.released, {bucket: later}) == 1
    assert redis_client.hkeys(keys.digest_items(bucket)) == [_delivery(4).delivery_id.encode()]
    assert redis_client.zscore(keys.held_due("digest"), bucket) == float(ms(later))


def test_several_replicas_release_each_item_once(redis_client: Redis, redis_url: str) -> None:
    items = [_delivery(n) for n in range(300)]
    HeldStore(redis_client).hold([Hold("scheduled", NOW, d) for d in items], [], NOW)
    seen: list[str] = []
    lock = threading.Lock()

    def replica() -> None:
        client = Redis.from_url(redis_url)
        store = HeldStore(client)
        while True:
            got = store.claim(NOW + timedelta(seconds=1), limit=7)
            if not got.released:
                break
            with lock:
                seen.extend(d.delivery_id for r in got.released for d in r.deliveries)
            store.ack(got.released)
        client.close()

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == sorted(d.delivery_id for d in items)
    assert HeldStore(redis_client).pending()["scheduled"] == 0


def test_a_digest_for_a_chat_or_webhook_channel_carries_the_items_as_json() -> None:
    import json

    renderer = Renderer(REPO / "config" / "templates")
    bucket = bucket_id("acme", "u-1", "r", "webhook", "hourly")
    items = [_delivery(1, channel="webhook"), _delivery(2, channel="webhook")]
    digest = build_digest(bucket, items, renderer, "digest", NOW, timedelta(hours=1))
    assert digest.html is None and digest.payload is not None
    body = json.loads(digest.payload)
    assert (body["type"], body["id"], body["count"], body["cadence"]) == ("tidings.digest", digest.delivery_id, 2,
                                                                           "hourly")
    assert [i["title"] for i in body["items"]] == ["item 1", "item 2"]
    assert build_digest(bucket_id("acme", "u-1", "r", "email", "hourly"), [_delivery(1)], renderer, "digest", NOW,
                        timedelta(hours=1)).payload is None
