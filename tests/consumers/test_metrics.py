"""Metrics: bounded labels, buckets that fit the figures, and consumer lag per partition
(from librdkafka statistics; revoked partitions' label sets removed), unit and on real Kafka."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from consumers import metrics
from consumers.kafka import consumer_config, next_offsets
from consumers.loop import ConsumerLoop
from consumers.metrics import PartitionLag, partition_lag
from consumers.settings import Settings
from consumers.topics import create_topics
from schemas import Catalog

REPO = Path(__file__).resolve().parents[2]
# Every label a Tidings metric may carry: each takes values from a set fixed by the code
# or the deployment (topics, groups, channels, error classes, fixed reasons), never ids.
BOUNDED_LABELS = {"topic", "partition", "group", "channel", "outcome", "reason", "role", "cause", "tier",
                  "state", "kind", "to", "trigger"}  # to: a channel name; trigger: failed or unread


def all_metrics() -> list[object]:
    return [m for m in vars(metrics).values() if hasattr(m, "_labelnames") and hasattr(m, "_name")]


def test_every_metric_is_named_tidings_and_has_only_bounded_labels() -> None:
    found = all_metrics()
    assert len(found) >= 14
    for m in found:
        assert m._name.startswith("tidings_"), m._name  # type: ignore[attr-defined]
        assert set(m._labelnames) <= BOUNDED_LABELS, (m._name, m._labelnames)  # type: ignore[attr-defined]


def _buckets(histogram: object) -> list[float]:
    return list(histogram._upper_bounds)  # type: ignore[attr-defined]


def test_latency_buckets_fit_the_figures() -> None:
    settings = Settings()
    send = _buckets(metrics.SEND_LATENCY)
    # provider timeouts (10 s by default) fall inside the finite buckets; a loopback call is ms
    assert send[0] <= 0.005 and max(b for b in send if b != float("inf")) >= 3 * settings.webhook_timeout
    e2e = [b for b in _buckets(metrics.END_TO_END_LATENCY) if b != float("inf")]
    # the whole retry ladder (10s, 1m, 10m, 1h) and the delivery deadline fit
    assert max(e2e) >= settings.delivery_deadline_seconds
    assert {10, 60, 600, 3600} <= set(e2e)
    # the alert's objective is a bucket boundary, so histogram_quantile is exact there
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r["alert"] == "TidingsEndToEndLatencyHigh")
    objective = float(expr.rsplit(">", 1)[1])
    assert objective in e2e


# -- partition_lag --------------------------------------------------------------


@pytest.mark.parametrize(("stats", "lag"), [
    ({"consumer_lag_stored": 7, "consumer_lag": 9, "hi_offset": 20}, 7),     # what the next commit says
    ({"consumer_lag_stored": -1, "consumer_lag": 9, "hi_offset": 20}, 9),    # restarted: the commit
    ({"consumer_lag_stored": -1, "consumer_lag": -1, "hi_offset": 20, "lo_offset": 5, "app_offset": 20}, 15),
    ({"consumer_lag_stored": -1, "consumer_lag": -1, "ls_offset": 18, "hi_offset": 20, "lo_offset": 0}, 18),
    ({"consumer_lag_stored": -1, "consumer_lag": -1, "hi_offset": -1, "lo_offset": -1}, None),
    ({}, None),
])
def test_partition_lag_from_statistics(stats: dict[str, int], lag: int | None) -> None:
    assert partition_lag(stats) == lag


def stats_of(topic: str, lags: dict[int, int]) -> dict[str, object]:
    parts: dict[str, object] = {str(p): {"consumer_lag_stored": lag, "hi_offset": 100} for p, lag in lags.items()}
    parts["-1"] = {"consumer_lag": -1}  # librdkafka's internal unassigned partition
    return {"topics": {topic: {"partitions": parts}}}


@pytest.fixture
def gauge() -> Gauge:
    return Gauge("lag_test", "test", ["group", "topic", "partition"], registry=CollectorRegistry())


def samples(g: Gauge) -> dict[tuple[str, str, str], float]:
    return {(s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value
            for m in g.collect() for s in m.samples}


def test_only_assigned_partitions_are_reported_and_revoked_ones_disappear(gauge: Gauge) -> None:
    lag = PartitionLag("g", gauge)
    lag.assign([("t", 0), ("t", 1)])
    lag.update(stats_of("t", {0: 5, 1: 3, 2: 99}))  # 2 is not ours
    assert samples(gauge) == {("g", "t", "0"): 5, ("g", "t", "1"): 3}
    lag.revoke([("t", 1)])
    assert samples(gauge) == {("g", "t", "0"): 5}
    # a snapshot taken before the revocation, delivered after it, does not bring it back
    lag.update(stats_of("t", {0: 4, 1: 3}))
    assert samples(gauge) == {("g", "t", "0"): 4}
    assert lag.reported() == {("t", 0): 4}
    lag.clear()
    assert samples(gauge) == {}


def test_groups_keep_their_own_label_sets(gauge: Gauge) -> None:
    a, b = PartitionLag("a", gauge), PartitionLag("b", gauge)
    a.assign([("t", 0)])
    b.assign([("u", 0)])
    a.update(stats_of("t", {0: 1}))
    b.update(stats_of("u", {0: 2}))
    a.revoke([("t", 0)])
    assert samples(gauge) == {("b", "u", "0"): 2}


# -- on real Kafka ------------------------------------------------------------


class Gate(ConsumerLoop):
    """Stores no offsets while ``closed`` is set (as a handler that keeps failing would)."""

    role = "test"

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(settings, Catalog.load(), settings.group("lag"), [topic],
                         consumer_overrides={"statistics.interval.ms": 200})
        self.closed = threading.Event()
        self.closed.set()

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        return [] if self.closed.is_set() else next_offsets(messages)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def gauge_partitions(group: str) -> dict[tuple[str, int], float]:
    return {(s.labels["topic"], int(s.labels["partition"])): s.value
            for m in metrics.CONSUMER_LAG.collect() for s in m.samples if s.labels["group"] == group}


@pytest.fixture
def lag_loop(kafka_bootstrap: str, unique: str) -> Iterator[tuple[Gate, Settings]]:
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"t{unique}.", group_prefix=f"g{unique}-",
                        partitions=2, poll_timeout=0.2, metrics_port=-1, redis_url="redis://127.0.0.1:1/0")
    create_topics(settings, [])
    loop = Gate(settings, settings.input_topic)
    thread = threading.Thread(target=loop.run, kwargs={"health_port": -1}, daemon=True)
    thread.start()
    try:
        yield loop, settings
    finally:
        loop.request_stop()
        thread.join(60)
        assert not thread.is_alive()


@pytest.mark.integration
def test_lag_per_partition_follows_the_stored_position_and_leaves_with_the_partition(
        lag_loop: tuple[Gate, Settings]) -> None:
    loop, settings = lag_loop
    topic, group = settings.input_topic, settings.group("lag")
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})

    def produce(n: int) -> None:
        for i in range(n):
            for p in (0, 1):
                producer.produce(topic, value=b"x%d" % i, partition=p)
        assert producer.flush(30) == 0

    produce(10)
    # consumed but not stored: the whole backlog is lag
    wait_for(lambda: gauge_partitions(group) == {(topic, 0): 10, (topic, 1): 10}, "lag of 10 per partition")
    loop.closed.clear()
    produce(1)
    wait_for(lambda: gauge_partitions(group) == {(topic, 0): 0, (topic, 1): 0}, "lag back to zero")

    # a second member joins: one partition moves to it and its label set leaves this process
    other = Consumer(consumer_config(settings, group))
    other.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not other.assignment():
            other.poll(0.2)
        assert len(other.assignment()) == 1
        moved = other.assignment()[0].partition
        wait_for(lambda: set(gauge_partitions(group)) == {(topic, 1 - moved)}, "the revoked partition removed")
        assert set(loop.lag.reported()) == {(topic, 1 - moved)}
    finally:
        other.close()
    loop.request_stop()
    wait_for(lambda: gauge_partitions(group) == {}, "no label sets after shutdown")
