"""Every topic Tidings uses, and ``tidings topics create``.

=====================================  =====================================================
topic (default prefix ``tidings.``)    holds
=====================================  =====================================================
``tidings.events``                     domain events (CloudEvents headers + Avro)
``tidings.deliver.<channel>``          Delivery records, keyed by ``<tenant>:<recipient>``
``tidings.deliver.<channel>.urgent``   urgent Delivery records: their own lane (router/lanes.py)
``tidings.deliver.<channel>.retry.<d>``  deliveries waiting for another attempt, one topic per
                                       delay tier ``<d>`` (``TIDINGS_RETRY_TIERS``), retry headers
``tidings.deliver.<channel>.dlq``      deliveries that failed for good, with DLQ headers
``tidings.router.dlq``                 events the router could not process, with DLQ headers
``tidings.status``                     every state change of every event and delivery
=====================================  =====================================================

Dead-letter topics keep records for 30 days, the rest for 7 days.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumers.kafka import client_config
from consumers.settings import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    retention_ms: int


def topic_specs(settings: Settings, channels: Iterable[str]) -> list[TopicSpec]:
    specs = [
        TopicSpec(settings.input_topic, 7 * DAY_MS),
        TopicSpec(settings.status_topic, 7 * DAY_MS),
        TopicSpec(settings.router_dlq_topic, 30 * DAY_MS),
    ]
    for channel in sorted(set(channels)):
        specs.append(TopicSpec(settings.deliver_topic(channel), 7 * DAY_MS))
        specs.append(TopicSpec(settings.deliver_topic(channel, "urgent"), 7 * DAY_MS))
        specs.extend(TopicSpec(t, 7 * DAY_MS) for t in settings.retry_topics(channel))
        specs.append(TopicSpec(settings.channel_dlq_topic(channel), 30 * DAY_MS))
    return specs


def create_topics(settings: Settings, channels: Iterable[str], *, partitions: int | None = None,
                  replication_factor: int | None = None, timeout: float = 30.0) -> dict[str, str]:
    """Create every missing topic; return ``{topic: "created" | "exists"}``. Idempotent."""
    admin = AdminClient(client_config(settings))
    specs = topic_specs(settings, channels)
    new = [
        NewTopic(
            s.name,
            num_partitions=partitions or settings.partitions,
            replication_factor=replication_factor or settings.replication_factor,
            config={"retention.ms": str(s.retention_ms)},
        )
        for s in specs
    ]
    result: dict[str, str] = {}
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result()
            result[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
            else:
                raise
    return result


def missing_topics(settings: Settings, topics: Iterable[str], timeout: float = 10.0) -> list[str]:
    meta = AdminClient(client_config(settings)).list_topics(timeout=timeout)
    return [t for t in topics if t not in meta.topics]
