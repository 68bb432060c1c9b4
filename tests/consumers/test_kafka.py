"""BatchProducer's commit point and close on a real broker, and against a port nobody listens on."""

from __future__ import annotations

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumers.kafka import BatchProducer, ProduceError
from consumers.settings import Settings
from consumers.topics import create_topics
from devstack.infra import free_port

pytestmark = pytest.mark.integration


def settings_for(bootstrap: str, unique: str) -> Settings:
    return Settings(kafka_bootstrap=bootstrap, topic_prefix=f"t{unique}.", group_prefix=f"g{unique}-",
                    partitions=1, metrics_port=-1, redis_url="redis://127.0.0.1:1/0")


def read_values(settings: Settings, topic: str, expect: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"probe-{topic}"})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: list[bytes] = []
        for _ in range(60):
            out += [m.value() or b"" for m in consumer.consume(10, 0.5) if m.error() is None]
            if len(out) >= expect:
                break
        return out
    finally:
        consumer.close()


def test_close_waits_for_what_was_queued_then_releases_the_client(kafka_bootstrap: str, unique: str) -> None:
    settings = settings_for(kafka_bootstrap, unique)
    create_topics(settings, [])
    producer = BatchProducer.create(settings)
    producer.send(settings.input_topic, b"last words", key="k")

    assert producer.close(30) == 0
    assert read_values(settings, settings.input_topic, 1) == [b"last words"]
    assert producer.close(30) == 0  # a second close is a no-op
    with pytest.raises(RuntimeError, match="closed"):
        producer.send(settings.input_topic, b"too late")


@pytest.mark.timeout(60)
def test_close_drops_what_no_broker_acknowledged_instead_of_waiting_for_ever(unique: str) -> None:
    settings = settings_for(f"127.0.0.1:{free_port()}", unique)
    producer = BatchProducer.create(settings)
    producer.flush_timeout = 0.5
    producer.send("nowhere", b"a")
    producer.send("nowhere", b"b")

    with pytest.raises(ProduceError, match="2 unacknowledged"):
        producer.commit_point()
    assert producer.close(0.5) == 2
