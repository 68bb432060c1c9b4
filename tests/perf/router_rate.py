"""A first throughput probe of the router (the benchmark harness of `make bench` comes later).

Needs local Kafka and Redis (`make infra-up`). Pre-loads N demo events on 4
partitions, then measures in one run:

* a bare confluent-kafka consume-and-produce passthrough with the same batch
  size and producer settings (the baseline), and
* the router, from start (group join included) until every email delivery is
  on its topic.

Usage: .venv/bin/python tests/perf/router_rate.py [N]
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from redis import Redis

from consumers.kafka import producer_config
from consumers.publisher import Publisher
from consumers.router_consumer import RouterConsumer
from consumers.settings import Settings
from consumers.topics import create_topics
from router.recipients import Recipient, RecipientStore
from router.rules import RuleSet
from router.templates import Renderer
from schemas import Catalog

REPO = Path(__file__).resolve().parents[2]


def end_offsets(settings: Settings, topic: str) -> int:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(settings.partitions))
    finally:
        c.close()


def main(n: int) -> None:
    run = uuid.uuid4().hex[:6]
    settings = Settings(topic_prefix=f"perf{run}.", group_prefix=f"perf{run}-", partitions=4,
                        rules=REPO / "config" / "rules.yaml", metrics_port=-1)
    create_topics(settings, ["email", "webhook"])
    redis = Redis.from_url(settings.redis_url)
    users = 1000
    RecipientStore(redis).put_many([
        Recipient(id=f"u{i}", contacts={"email": f"u{i}@example.com", "webhook": "http://127.0.0.1:9/x"})
        for i in range(users)
    ])
    with Publisher(settings) as pub:
        for i in range(n):
            pub.publish("jobs.match.found",
                        {"user_id": f"u{i % users}", "match_id": str(i), "job_title": "Engineer",
                         "company": "Acme", "score": 90.0},
                        subject=f"u{i % users}", source="perf")

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"passthrough{run}",
                         "auto.offset.reset": "earliest", "enable.auto.offset.store": False})
    consumer.subscribe([settings.input_topic])
    producer = Producer(producer_config(settings))
    started, seen = time.perf_counter(), 0
    while seen < n:
        for m in consumer.consume(settings.batch_size, 0.5):
            if m.error() is None:
                # into a topic the measured router run does not count
                producer.produce(settings.deliver_topic("webhook"), m.value(), key=m.key(), headers=m.headers())
                seen += 1
        producer.flush()
    baseline = time.perf_counter() - started
    consumer.close()

    rules = RuleSet.load(settings.rules)
    router = RouterConsumer(settings, Catalog.load(), rules, Renderer(settings.template_dir), redis)
    started = time.perf_counter()
    thread = threading.Thread(target=router.run, kwargs={"health_port": -1}, daemon=True)
    thread.start()
    while end_offsets(settings, settings.deliver_topic("email")) < n:
        time.sleep(0.2)
    took = time.perf_counter() - started
    router.request_stop()
    thread.join()
    print(f"events={n} passthrough={n / baseline:,.0f}/s router={n / took:,.0f}/s "
          f"(2 deliveries and 2 status events per event) router/passthrough={baseline / took:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
