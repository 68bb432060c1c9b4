"""Routing features end to end on real Kafka, Redis and SMTP, with an injected router clock.

The clock starts at the real time (channel consumers check deadlines against
the real time) and the tests move it forward to make held deliveries due.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from confluent_kafka import OFFSET_INVALID, Consumer, Message, TopicPartition
from redis import Connection, ConnectionPool, Redis

from consumers.kafka import next_offsets
from consumers.loop import RetryBatch
from consumers.metrics import REGISTRY
from consumers.router_consumer import RouterConsumer
from router import keys
from router.preferences import PreferenceStore, Switch
from router.rules import RuleSet
from router.subscriptions import SubscriptionStore
from router.templates import Renderer
from router.wire import WireConnection
from schemas import CloudEvent, Delivery, State, Status

from .conftest import Pipeline, wait_until

pytestmark = pytest.mark.integration
SOURCE = "tests/e2e/routing"


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self.offset += delta


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def add_rules(pipeline: Pipeline, *rules: dict[str, Any], caps: list[dict[str, Any]] | None = None) -> None:
    path = pipeline.settings.rules
    raw = yaml.safe_load(path.read_text())
    raw["rules"] += list(rules)
    if caps:
        raw["caps"] = caps
    path.write_text(yaml.safe_dump(raw))


def start_router(pipeline: Pipeline, clock: Clock, name: str = "router", redis: Redis | None = None,
                 **overrides: Any) -> RouterConsumer:
    settings = pipeline.settings.model_copy(update={"release_interval": 0.1, **overrides})
    rules = RuleSet.load(settings.rules)
    renderer = Renderer(settings.template_dir)
    renderer.check(rules.templates)
    loop = RouterConsumer(settings, pipeline.catalog, rules, renderer, redis or Redis.from_url(settings.redis_url),
                          clock=clock)
    pipeline._run(name, loop)
    return loop


def statuses(pipeline: Pipeline, expect: int, timeout: float = 30.0) -> list[Status]:
    msgs = pipeline.read_topic(pipeline.settings.status_topic, expect=expect, timeout=timeout)
    return [Status.decode(pipeline.catalog, m.value()) for m in msgs]


def deliveries(pipeline: Pipeline, channel: str, expect: int, lane: str = "normal") -> list[Delivery]:
    msgs = pipeline.read_topic(pipeline.settings.deliver_topic(channel, lane), expect=expect)
    return [Delivery.decode(pipeline.catalog, m.value()) for m in msgs]


def match(user: str, **extra: object) -> dict[str, object]:
    return {"user_id": user, "match_id": f"m-{user}", "job_title": "Kernel Hacker", "company": "Acme",
            "score": 90.0, **extra}


def person(ident: str, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "contacts": {"email": f"{ident}@example.com"}, **extra}


EMAIL_RULE = {"name": "match-mail", "event_type": "jobs.match.found", "when": "score >= 75",
              "channels": ["email"], "template": "job_match"}


def only_email_rules(pipeline: Pipeline, **rule: Any) -> None:
    """Replace the demo rules with one email rule for job matches (plus ``rule``'s fields)."""
    pipeline.settings.rules.write_text(yaml.safe_dump({"rules": [{**EMAIL_RULE, **rule}]}))


# -- quiet hours -----------------------------------------------------------------------------


def test_quiet_hours_hold_until_the_window_ends_then_release_once(pipeline: Pipeline) -> None:
    clock = Clock()
    local = clock()
    window = {"start": (local - timedelta(hours=1)).strftime("%H:%M"),
              "end": (local + timedelta(hours=1)).strftime("%H:%M")}
    pipeline.recipients(person("u-night", timezone="UTC", quiet_hours=window), person("u-day"))
    only_email_rules(pipeline)
    start_router(pipeline, clock)
    pipeline.start_channel("email")
    suppressed = sample("tidings_suppressions_total", channel="email", reason="quiet_hours")
    pipeline.pub().publish("jobs.match.found", match("u-night"), subject="u-night", source=SOURCE, id="q-1")
    pipeline.pub().publish("jobs.match.found", match("u-day"), subject="u-day", source=SOURCE, id="q-2")
    pipeline.pub().flush()
    pipeline.smtp.wait_for(1, timeout=30)
    held = [s for s in statuses(pipeline, expect=2) if s.state is State.held]
    assert [(s.recipient_id, s.reason) for s in held] == [("u-night", "quiet_hours")]
    assert [r["to"] for r in pipeline.smtp.received()] == [["u-day@example.com"]]
    # The hold is written with the router's next round trip: here the flush after an empty poll.
    wait_until(lambda: pipeline.redis.zcard(keys.held_due("quiet_hours")) == 1, what="the hold written")
    wait_until(lambda: sample("tidings_held_deliveries", kind="quiet_hours") == 1, what="the held gauge")
    wait_until(lambda: sample("tidings_suppressions_total", channel="email", reason="quiet_hours") == suppressed + 1,
               what="the suppression counter")

    clock.advance(timedelta(hours=1, minutes=1))
    pipeline.smtp.wait_for(2, timeout=30)
    assert pipeline.smtp.received()[1]["to"] == ["u-night@example.com"]
    wait_until(lambda: pipeline.redis.zcard(keys.held_due("quiet_hours")) == 0, what="held set emptied")
    wait_until(lambda: sample("tidings_held_deliveries", kind="quiet_hours") == 0, what="the held gauge")
    released = [s for s in statuses(pipeline, expect=4) if s.state is State.routed and s.reason == "quiet_hours"]
    assert len(released) == 1


# -- scheduled sends ---------------------------------------------------------------------------


def publish_scheduled(pipeline: Pipeline, ident: str, user: str, after: int) -> None:
    topic = pipeline.settings.input_topic
    value = pipeline.pub().encode("jobs.match.found", match(user), topic)
    ce = CloudEvent.new("jobs.match.found", source=SOURCE, subject=user, id=ident)
    pipeline.pub().send_raw(topic, value, [*ce.to_headers(), ("ce_deliverafter", str(after).encode())],
                            key=f"default:{user}")
    pipeline.pub().flush()


def test_a_scheduled_send_survives_router_restarts_and_is_released_once_by_two_replicas(
        pipeline: Pipeline) -> None:
    clock = Clock()
    pipeline.recipients(person("u-later"))
    only_email_rules(pipeline)
    start_router(pipeline, clock, "router-a")
    start_router(pipeline, clock, "router-b")
    pipeline.start_channel("email")
    publish_scheduled(pipeline, "s-1", "u-later", after=3600)
    [held] = [s for s in statuses(pipeline, expect=1) if s.state is State.held]
    assert held.reason == "scheduled"
    # Both routers go away and come back: the held delivery is in Redis, not in a process.
    pipeline.stop("router-a")
    pipeline.stop("router-b")
    start_router(pipeline, clock, "router-c")
    start_router(pipeline, clock, "router-d")
    clock.advance(timedelta(minutes=59))
    assert pipeline.redis.zcard(keys.held_due("scheduled")) == 1  # not due yet
    clock.advance(timedelta(minutes=2))
    [mail] = pipeline.smtp.wait_for(1, timeout=30)
    assert mail["delivery_id"] == held.delivery_id
    wait_until(lambda: pipeline.redis.zcard(keys.held_due("scheduled")) == 0, what="held set emptied")
    records = deliveries(pipeline, "email", expect=1)
    assert [d.delivery_id for d in records] == [held.delivery_id]  # produced once, by one replica


def test_a_malformed_schedule_is_dead_lettered(pipeline: Pipeline) -> None:
    clock = Clock()
    pipeline.recipients(person("u-later"))
    only_email_rules(pipeline)
    start_router(pipeline, clock)
    topic = pipeline.settings.input_topic
    value = pipeline.pub().encode("jobs.match.found", match("u-later"), topic)
    ce = CloudEvent.new("jobs.match.found", source=SOURCE, subject="u-later", id="bad-schedule")
    pipeline.pub().send_raw(topic, value, [*ce.to_headers(), ("ce_deliverat", b"tomorrow-ish")])
    pipeline.pub().flush()
    [dead] = pipeline.read_topic(pipeline.settings.router_dlq_topic, expect=1)
    headers = {k: v.decode() for k, v in dead.headers() or []}
    assert "ce_deliverat 'tomorrow-ish'" in headers["tidings_dlq_message"]


# -- digests -----------------------------------------------------------------------------------


def test_an_hourly_digest_collects_events_and_goes_out_as_one_email(pipeline: Pipeline) -> None:
    clock = Clock()
    pipeline.recipients(person("u-digest"))
    only_email_rules(pipeline, digests=[{"channel": "email", "every": "hourly"}])
    router = start_router(pipeline, clock)
    pipeline.start_channel("email")
    for i in range(3):
        pipeline.pub().publish("jobs.match.found", match("u-digest", job_title=f"Job {i}"), subject="u-digest",
                               source=SOURCE, id=f"d-{i}")
    pipeline.pub().flush()
    held = [s for s in statuses(pipeline, expect=3) if s.state is State.held]
    assert [s.reason for s in held] == ["digest"] * 3
    # A router restart in between loses nothing.
    pipeline.stop("router")
    router = start_router(pipeline, clock)
    clock.advance(timedelta(hours=1, minutes=1))
    [mail] = pipeline.smtp.wait_for(1, timeout=30)
    assert mail["subject"] == "3 new notifications (hourly digest)"
    for i in range(3):
        assert f"Job {i}" in mail["text"]
    wait_until(lambda: pipeline.redis.zcard(keys.held_due("digest")) == 0, what="digest bucket emptied")
    assert router.release_due() == 0


# -- preferences and subscribers ------------------------------------------------------------------


def test_subscribers_get_it_unless_a_preference_says_no(pipeline: Pipeline) -> None:
    clock = Clock()
    users = [f"u-{i:02d}" for i in range(30)]
    pipeline.recipients(*(person(u, tenant="acme") for u in users))
    SubscriptionStore(pipeline.redis).subscribe_many("acme", "company:Acme", [*users, "u-ghost"])
    prefs = PreferenceStore(pipeline.redis)
    prefs.set("user", "acme", "u-05", [Switch("email", "category:jobs", False)])
    prefs.set("tenant", "acme", None, [Switch("email", "*", True)])
    prefs.set("global", "", None, [Switch("*", "type:jobs.match.found", False)])  # the tenant overrides it
    only_email_rules(pipeline, audience="subscribers", topic="company:{{ data.company }}")
    start_router(pipeline, clock, fanout_page_size=7)
    pipeline.start_channel("email")
    pipeline.pub().publish("jobs.match.found", match("nobody"), source=SOURCE, id="fan-1", tenant="acme")
    pipeline.pub().flush()
    pipeline.smtp.wait_for(29, timeout=60)
    got = statuses(pipeline, expect=31)
    by_reason = {(s.state.value, s.reason) for s in got if s.recipient_id in ("u-05", "u-ghost")}
    assert by_reason == {("skipped", "preference"), ("skipped", "unknown_recipient")}
    assert sorted(r["to"][0] for r in pipeline.smtp.received()) == sorted(
        f"{u}@example.com" for u in users if u != "u-05")
    key = next(iter(pipeline.redis.scan_iter(match="tidings:{ev:*}:fanout:match-mail")))
    assert pipeline.redis.get(key) == b"~done"


# -- one Redis round trip per batch --------------------------------------------------------------


class CountingConnection(Connection):
    """A real connection that counts how often it sends (one send per command or pipeline)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def _consume(pipeline: Pipeline, expect: int) -> list[Message]:
    topic = pipeline.settings.input_topic
    consumer = Consumer({"bootstrap.servers": pipeline.settings.kafka_bootstrap, "group.id": "probe-batch",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Message] = []
        while len(out) < expect:
            out += [m for m in consumer.consume(expect, 1.0) if m.error() is None]
        return out
    finally:
        consumer.close()


def _router(pipeline: Pipeline, redis: Redis) -> RouterConsumer:
    return RouterConsumer(pipeline.settings, pipeline.catalog, RuleSet.load(pipeline.settings.rules),
                          Renderer(pipeline.settings.template_dir), redis, clock=Clock())


def _close(*routers: RouterConsumer) -> None:
    for router in routers:
        router.producer.close(5)
        router.consumer.close()


def _publish_matches(pipeline: Pipeline, users: list[str], prefix: str) -> None:
    for i, user in enumerate(users):
        pipeline.pub().publish("jobs.match.found", match(user, match_id=f"{prefix}-{i}"), subject=user,
                               source=SOURCE, id=f"{prefix}-{i}")
    pipeline.pub().flush()


def _batch(pipeline: Pipeline, prefix: str, total: int) -> list[Message]:
    """The records whose event id starts with ``prefix`` among the ``total`` on the input topic."""
    return [m for m in _consume(pipeline, total) if dict(m.headers() or [])["ce_id"].startswith(prefix.encode())]


def _positions(offsets: list[TopicPartition]) -> set[tuple[str, int, int]]:
    return {(tp.topic, tp.partition, tp.offset) for tp in offsets}


def _cap_counts(pipeline: Pipeline, users: list[str]) -> dict[str, int]:
    """The hourly email cap counter of each user that has one."""
    out = {}
    for user in users:
        found = list(pipeline.redis.scan_iter(match=keys.cap("default", user, "email", "*", "h*")))
        assert len(found) <= 1, found
        if found:
            out[user] = int(pipeline.redis.get(found[0]) or 0)
    return out


CAPPED = {"rules": [EMAIL_RULE], "caps": [{"channel": "email", "per_hour": 1}]}


def test_a_batch_costs_one_redis_round_trip_even_when_it_changes_state(pipeline: Pipeline) -> None:
    users = [f"u-{i}" for i in range(20)]
    pipeline.recipients(*(person(u) for u in users))
    PreferenceStore(pipeline.redis).set("user", "default", "u-3", [Switch("email", "*", False)])
    rules = {"rules": [{**EMAIL_RULE, "dedup": {"strategy": "key_window", "key": "{{ data.match_id }}",
                                                "window": "1h"}}]}
    pipeline.settings.rules.write_text(yaml.safe_dump(rules))
    for i, user in enumerate(users * 2):  # every user twice: the second copy is a dedup_window duplicate
        pipeline.pub().publish("jobs.match.found", match(user), subject=user, source=SOURCE, id=f"b-{i}")
    pipeline.pub().flush()
    batch = _consume(pipeline, 40)
    pool = ConnectionPool.from_url(pipeline.settings.redis_url, connection_class=CountingConnection)
    redis = Redis(connection_pool=pool)
    router = _router(pipeline, redis)
    try:
        router.state.load([], [("default", "nobody")])  # open the router's connection first: its handshake
        # (HELLO, SELECT, CLIENT SETINFO) is not a batch's
        before_cmds = _commands(pipeline.redis)
        CountingConnection.sends = 0
        offsets = router.handle(batch)
        assert CountingConnection.sends == 1  # claims, recipients, preferences and dedup keys together
        assert _positions(offsets) == _positions(next_offsets(batch))  # it changed nothing: stored at once
        commands = _commands(pipeline.redis) - before_cmds
        # 40 event claims + 40 dedup claims (SET), 20 recipients (GET), 20 users' + tenant + global prefs.
        assert commands >= 40 + 40 + 20 + 22
        suppressed = [s for s in statuses(pipeline, expect=40) if s.state is State.deduplicated]
        assert len(suppressed) == 20 and {s.reason for s in suppressed} == {"dedup_window"}

        # With a frequency cap of one an hour, the first capped batch's counts are not written
        # at once: they wait for the next batch, and so do its offsets.
        pipeline.settings.rules.write_text(yaml.safe_dump(CAPPED))
        capped = _router(pipeline, redis)
        _publish_matches(pipeline, users, "c")
        second = _batch(pipeline, "c-", 60)
        assert len(second) == 20
        capped.state.load([], [("default", "nobody")])  # this router's own connection, opened first
        CountingConnection.sends = 0
        try:
            assert capped.handle(second) == []  # Kafka has its output, Redis not yet its counts
            assert CountingConnection.sends == 1
            assert _cap_counts(pipeline, users) == {}
            routed = [s for s in statuses(pipeline, expect=60) if s.event_id.startswith("c-")]
            assert {s.state for s in routed if s.recipient_id != "u-3"} == {State.routed}

            # The next batch (the same users again) carries those counts at the front of its one
            # round trip and reads counters that already include them: all over the cap.
            _publish_matches(pipeline, users, "d")
            third = _batch(pipeline, "d-", 80)
            assert len(third) == 20
            CountingConnection.sends = 0
            offsets = capped.handle(third)
            assert CountingConnection.sends == 1
            assert _cap_counts(pipeline, users) == {u: 1 for u in users if u != "u-3"}
            capped_now = [s for s in statuses(pipeline, expect=80) if s.event_id.startswith("d-")]
            assert {(s.state, s.reason) for s in capped_now if s.recipient_id != "u-3"} == {
                (State.skipped, "frequency_cap")}
            # Dropped over the cap, the third batch changed nothing: both batches' offsets are stored now.
            assert _positions(offsets) == _positions(next_offsets(second + third))
        finally:
            _close(capped)
    finally:
        _close(router)
        redis.close()


def _capped_matches(pipeline: Pipeline, n: int, tag: str) -> list[str]:
    """``n`` recipients under the one-an-hour cap, and one match event each (ids ``<tag>-<i>``)."""
    users = [f"u-{i}" for i in range(n)]
    pipeline.recipients(*(person(u) for u in users))
    pipeline.settings.rules.write_text(yaml.safe_dump(CAPPED))
    _publish_matches(pipeline, users, tag)
    return users


def test_pending_writes_go_out_alone_when_no_batch_follows(pipeline: Pipeline) -> None:
    users = _capped_matches(pipeline, 5, "i")
    batch = _consume(pipeline, 5)
    router = _router(pipeline, Redis.from_url(pipeline.settings.redis_url))
    try:
        assert router.handle(batch) == []
        assert _cap_counts(pipeline, users) == {}
        assert _positions(router.flush_pending()) == _positions(next_offsets(batch))
        assert _cap_counts(pipeline, users) == {u: 1 for u in users}
        assert router.flush_pending() == []  # sent once: nothing left, nothing counted again
        assert _cap_counts(pipeline, users) == {u: 1 for u in users}
    finally:
        _close(router)


def _nowhere() -> Redis:
    """A real client for a loopback port nobody listens on: every command fails to connect."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)


def test_a_failed_round_trip_keeps_the_writes_pending_and_stores_nothing(pipeline: Pipeline) -> None:
    users = _capped_matches(pipeline, 5, "f")
    first = _batch(pipeline, "f-", 5)
    _publish_matches(pipeline, users, "g")
    second = _batch(pipeline, "g-", 10)
    router = _router(pipeline, Redis.from_url(pipeline.settings.redis_url))
    good = router.state.wire
    try:
        assert router.handle(first) == []
        router.state.wire = WireConnection(_nowhere())  # Redis goes away before the next batch
        with pytest.raises(RetryBatch):
            router.handle(second)
        assert router.flush_pending() == []  # an idle flush cannot send them either: nothing to store
        assert _cap_counts(pipeline, users) == {}
        router.state.wire = good  # back: the retried batch carries the first one's writes, once
        assert _positions(router.handle(second)) == _positions(next_offsets(first + second))
        assert _cap_counts(pipeline, users) == {u: 1 for u in users}
        assert router.flush_pending() == []
    finally:
        _close(router)


def _committed(pipeline: Pipeline, group: str) -> dict[int, int]:
    topic = pipeline.settings.input_topic
    probe = Consumer({"bootstrap.servers": pipeline.settings.kafka_bootstrap, "group.id": group})
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return {tp.partition: tp.offset for tp in probe.committed([TopicPartition(topic, p) for p in parts],
                                                                   timeout=10)}
    finally:
        probe.close()


def _ends(pipeline: Pipeline) -> dict[int, int]:
    """The end offset of each input partition that has records."""
    topic = pipeline.settings.input_topic
    probe = Consumer({"bootstrap.servers": pipeline.settings.kafka_bootstrap, "group.id": "probe-ends"})
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        marks = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        return {p: end for p, end in marks.items() if end > 0}
    finally:
        probe.close()


def test_a_router_gone_before_its_writes_went_out_is_replaced_and_counts_once(pipeline: Pipeline) -> None:
    users = _capped_matches(pipeline, 6, "r")
    ends = _ends(pipeline)
    # The first router reads the batch in the router group, routes it (Kafka acknowledged its
    # output) and is gone before a flush: no offsets stored, no counts written.
    first = _router(pipeline, Redis.from_url(pipeline.settings.redis_url))
    first.consumer.subscribe(first.topics)
    got: list[Message] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < len(users) and time.monotonic() < deadline:
            got += [m for m in first.consumer.consume(len(users), 0.5) if m.error() is None]
        assert len(got) == len(users)
        assert first.handle(got) == []
    finally:
        _close(first)
    assert _cap_counts(pipeline, users) == {}
    assert set(_committed(pipeline, first.group).values()) == {OFFSET_INVALID}
    before = [s for s in statuses(pipeline, expect=len(users)) if s.state is State.routed]
    assert len(before) == len(users)

    # Its successor in the same group routes the same records again with the same delivery ids,
    # counts each once (the cap of one an hour lets every one through: nothing was counted
    # before) and stores the offsets after its idle flush.
    start_router(pipeline, Clock())
    wait_until(lambda: _cap_counts(pipeline, users) == {u: 1 for u in users}, what="the counts")
    wait_until(lambda: {p: o for p, o in _committed(pipeline, first.group).items() if p in ends} == ends,
               what="the successor's offsets committed")
    after = [s for s in statuses(pipeline, expect=2 * len(users)) if s.state is State.routed]
    assert sorted(str(s.delivery_id) for s in after) == sorted(2 * [str(s.delivery_id) for s in before])
    assert _cap_counts(pipeline, users) == {u: 1 for u in users}


def _commands(redis: Redis) -> int:
    info: dict[str, Any] = redis.info("stats")
    return int(info["total_commands_processed"])


def test_a_subscribers_topic_that_cannot_be_rendered_dead_letters_the_event(pipeline: Pipeline) -> None:
    only_email_rules(pipeline, audience="subscribers", topic="company:{{ data.no_such_field }}")
    start_router(pipeline, Clock())
    pipeline.pub().publish("jobs.match.found", match("nobody"), source=SOURCE, id="bad-topic")
    pipeline.pub().publish("jobs.match.found", match("nobody"), source=SOURCE, id="also-bad")
    pipeline.pub().flush()
    dead = pipeline.read_topic(pipeline.settings.router_dlq_topic, expect=2)
    reasons = {dict(m.headers() or [])["tidings_dlq_reason"] for m in dead}
    assert reasons == {b"TopicError"}
    assert len(dead) == 2
