"""Priority lanes: an urgent alert overtakes a 50,000-delivery backlog on the same channel."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from schemas import Delivery, Priority, delivery_id

from .conftest import Pipeline, wait_until

pytestmark = pytest.mark.integration
BACKLOG = 50_000


def _backlog(pipeline: Pipeline) -> None:
    now = datetime.now(UTC)
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka_bootstrap, "linger.ms": 50,
                         "enable.idempotence": True, "acks": "all"})
    topic = pipeline.settings.deliver_topic("email")
    for i in range(BACKLOG):
        user = f"bulk-{i}"
        d = Delivery(delivery_id=delivery_id("/bulk", f"b-{i}", "newsletter", user, "email"), event_id=f"b-{i}",
                     event_source="/bulk", event_type="newsletter", event_time=now, tenant="default",
                     rule="newsletter", channel="email", recipient_id=user, address=f"{user}@example.com",
                     priority=Priority.low, subject=f"Newsletter {i}", text="News.\n", created_at=now)
        while True:
            try:
                producer.produce(topic, d.encode(pipeline.catalog), key=f"default:{user}")
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0


def test_an_urgent_alert_is_not_delayed_by_a_bulk_backlog(pipeline: Pipeline) -> None:
    pipeline.recipients({"id": "oncall", "contacts": {"email": "oncall@example.com"}})
    _backlog(pipeline)
    pipeline.start_router()
    bulk = pipeline.start_channel_lane("email", "normal")
    pipeline.start_channel_lane("email", "urgent")
    # The bulk lane is busy with the backlog before the alert is published.
    wait_until(lambda: len(pipeline.smtp.received()) >= 200, timeout=120, what="the backlog to be draining")
    pipeline.pub().publish("system.alert", {"severity": "critical", "component": "db", "message": "disk full"},
                           subject="oncall", source="tests/e2e/lanes", id="urgent-1")
    pipeline.pub().flush()

    def urgent_arrived() -> bool:
        return any(r["to"] == ["oncall@example.com"] for r in pipeline.smtp.received())

    wait_until(urgent_arrived, timeout=120, what="the urgent alert")
    received = pipeline.smtp.received()
    position = next(i for i, r in enumerate(received) if r["to"] == ["oncall@example.com"])
    print(f"urgent alert delivered after {position} of {BACKLOG} backlog emails")
    # Had it queued behind the backlog, all 50,000 would have gone first.
    assert position < BACKLOG // 2
    assert bulk.group == pipeline.settings.group("deliver-email")
