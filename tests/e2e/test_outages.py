"""Redis going away under the router and the channel consumers, deadlines, and the metrics they leave."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from consumers import metrics
from devstack import infra
from schemas import State, Status

from .conftest import Pipeline
from .test_pipeline import SOURCE, ada, match

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[infra.Service]:
    """A Redis server of this test's own (with AOF), so stopping it disturbs no other test."""
    service = infra.start_redis(tmp_path / "redis-state", infra.free_port())
    try:
        yield service
    finally:
        service.stop()


def committed_total(pipeline: Pipeline, topic: str, group: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": pipeline.settings.kafka_bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(pipeline.settings.partitions)]
        return sum(max(tp.offset, 0) for tp in probe.committed(parts, timeout=10))
    finally:
        probe.close()


def test_redis_outage_holds_routing_and_loses_nothing(pipeline: Pipeline, own_redis: infra.Service,
                                                      tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    pipeline.settings = pipeline.settings.model_copy(update={"redis_url": url})
    pipeline.redis = Redis.from_url(url)
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_all()
    pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="before")
    pipeline.pub().flush()
    pipeline.smtp.wait_for(1, timeout=30)

    retries_before = metrics.BATCH_RETRIES.labels("router", "redis")._value.get()
    own_redis.stop()
    for i in range(10):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id=f"during-{i}")
    pipeline.pub().flush()
    time.sleep(4.0)
    # Without its dedup check the router routes nothing, and says so in its metrics.
    assert len(pipeline.smtp.received()) == 1
    assert metrics.BATCH_RETRIES.labels("router", "redis")._value.get() > retries_before
    # It paused its partitions but kept polling (so the group keeps it), and committed
    # nothing past the one event it routed before the outage.
    router = pipeline.loops["router"][0]
    assert time.monotonic() - router.health.last_loop < 2.0
    # Between two attempts the partitions are paused; during an attempt they are not, so look for a while.
    paused_deadline = time.monotonic() + 15.0
    while not router.held() and time.monotonic() < paused_deadline:
        time.sleep(0.05)
    assert router.held(), "the router's partitions should be paused while Redis is down"
    assert committed_total(pipeline, pipeline.settings.input_topic, router.group) == 1

    infra.start_redis(tmp_path / "redis-state", own_redis.port)  # same data directory: AOF brings state back
    mails = pipeline.smtp.wait_for(11, timeout=90)
    hooks = pipeline.web.wait_for(11, timeout=90)
    time.sleep(2.0)
    assert len(pipeline.smtp.received()) == 11 and len(pipeline.web.received()) == 11
    assert len({m["delivery_id"] for m in mails}) == 11
    assert len({h["delivery_id"] for h in hooks}) == 11


def test_a_delivery_past_its_deadline_is_dropped_as_stale(pipeline: Pipeline) -> None:
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_router(delivery_deadline_seconds=1)
    pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="late")
    pipeline.pub().flush()
    pipeline.read_topic(pipeline.settings.deliver_topic("email"), expect=1)
    time.sleep(1.5)
    pipeline.start_channel("email")
    statuses = pipeline.read_topic(pipeline.settings.status_topic, expect=3)
    stale = [s for s in (Status.decode(pipeline.catalog, m.value()) for m in statuses)
             if s.state is State.failed]
    assert [(s.channel, s.reason) for s in stale] == [("email", "stale")]
    assert pipeline.smtp.received() == []


def test_metrics_count_what_happened(pipeline: Pipeline) -> None:
    def value(metric: object, *labels: str) -> float:
        return float(metric.labels(*labels)._value.get())  # type: ignore[attr-defined]

    delivered_before = value(metrics.DELIVERIES, "email", "delivered")
    routed_before = value(metrics.ROUTER_DECISIONS, "routed", "")
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_all()
    for i in range(3):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id=f"m-{i}")
    pipeline.pub().flush()
    pipeline.smtp.wait_for(3, timeout=30)
    pipeline.web.wait_for(3, timeout=30)
    time.sleep(0.5)
    assert value(metrics.DELIVERIES, "email", "delivered") - delivered_before == 3
    assert value(metrics.ROUTER_DECISIONS, "routed", "") - routed_before == 6
    # Lag comes from librdkafka statistics (every 5 s) for the partitions this group owns.
    group = pipeline.settings.group("router")
    deadline = time.monotonic() + 15
    samples: list[object] = []
    while time.monotonic() < deadline and not samples:
        samples = [s for m in metrics.REGISTRY.collect() if m.name == "tidings_consumer_lag"
                   for s in m.samples if s.labels.get("group") == group]
        time.sleep(0.5)
    assert {s.labels["topic"] for s in samples} == {pipeline.settings.input_topic}  # type: ignore[attr-defined]
    assert all(s.value == 0 for s in samples)  # type: ignore[attr-defined]
    # Stopping the router revokes its partitions, and their label sets go away.
    pipeline.stop("router")
    left = [s for m in metrics.REGISTRY.collect() if m.name == "tidings_consumer_lag"
            for s in m.samples if s.labels.get("group") == group]
    assert left == []


def test_a_failed_produce_stores_no_offset_and_the_batch_is_retried(pipeline: Pipeline) -> None:
    """Kafka refusing the router's output (its webhook topic is gone) holds the input, loses nothing."""
    from confluent_kafka.admin import AdminClient

    from consumers.topics import create_topics

    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    webhook_topic = pipeline.settings.deliver_topic("webhook")
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka_bootstrap})
    admin.delete_topics([webhook_topic])[webhook_topic].result()
    deadline = time.monotonic() + 30
    while webhook_topic in admin.list_topics(timeout=5).topics and time.monotonic() < deadline:
        time.sleep(0.2)

    retries_before = metrics.BATCH_RETRIES.labels("router", "produce")._value.get()
    pipeline.start_channel("email")
    pipeline.start_router(kafka_options={"message.timeout.ms": "2000"})  # fail fast, not after a minute
    for i in range(5):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id=f"p-{i}")
    pipeline.pub().flush()
    deadline = time.monotonic() + 60
    while metrics.BATCH_RETRIES.labels("router", "produce")._value.get() == retries_before:
        assert time.monotonic() < deadline, "the router never reported a failed produce"
        time.sleep(0.2)

    create_topics(pipeline.settings, ["webhook"])
    pipeline.start_channel("webhook")
    mails = pipeline.smtp.wait_for(5, timeout=90)
    hooks = pipeline.web.wait_for(5, timeout=90)
    time.sleep(2.0)
    # The batch was routed more than once; the same delivery ids and the sent marks keep it to one each.
    mails, hooks = pipeline.smtp.received(), pipeline.web.received()
    assert len(mails) == 5 and len({m["delivery_id"] for m in mails}) == 5
    assert len(hooks) == 5 and len({h["delivery_id"] for h in hooks}) == 5
