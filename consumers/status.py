"""``tidings status ID``: what happened to an event or a delivery.

Reads ``tidings.status`` from the beginning to its current end (without a
consumer group, so nothing is committed) and returns the status events whose
delivery id or event id is ``ID``, oldest first.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumers.kafka import client_config, coordinates
from consumers.settings import Settings
from schemas import Catalog, Status
from schemas.errors import DecodeError


def describe(s: Status) -> str:
    """One line per status event: time, state, type, then whichever details it has."""
    parts = [s.at.isoformat(timespec="milliseconds"), f"{s.state.value:13}", s.event_type]
    if s.channel:
        parts.append(f"{s.channel}->{s.recipient_id}")
    elif s.recipient_id:
        parts.append(f"recipient={s.recipient_id}")
    optional = (("delivery", s.delivery_id), ("reason", s.reason), ("attempt", s.attempt or None))
    parts.extend(f"{name}={value}" for name, value in optional if value)
    if s.detail:
        parts.append(f"({s.detail})")
    return "  ".join(parts)


def find_status(settings: Settings, ident: str, catalog: Catalog | None = None,
                timeout: float = 30.0) -> list[Status]:
    catalog = catalog or Catalog.load()
    consumer = Consumer({**client_config(settings), "group.id": f"tidings-status-cli-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(settings.status_topic, timeout=10)
        topic = meta.topics.get(settings.status_topic)
        if topic is None or topic.error is not None:
            return []
        ends: dict[int, int] = {}
        for pid in topic.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(settings.status_topic, pid), timeout=10)
            if high > low:
                ends[pid] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(settings.status_topic, p, OFFSET_BEGINNING) for p in ends])
        found: list[Status] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                _, partition, offset = coordinates(msg)
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                try:
                    status = Status.decode(catalog, msg.value())
                except DecodeError:
                    continue
                if ident in (status.delivery_id, status.event_id):
                    found.append(status)
        found.sort(key=lambda s: s.at)
        return found
    finally:
        consumer.close()
