#!/usr/bin/env python3
"""How long a producer's flush waits, by the number of partitions the flushed records touch.

librdkafka sends one ProduceRequest per partition, and a Kafka broker handles the requests of
one connection one at a time, so a batch's flush waits for one request after another. This
produces 3 records of 400 bytes to each of 1, 4 and 12 partitions (three topics of four),
with the producer settings of ``consumers/kafka.py``, flushes, sleeps 5 ms, and repeats;
it prints the flush's wall time. Two rounds. Topics ``perf-flush-{a,b,c}-<id>`` are created
and deleted.

Usage: .venv/bin/python tests/perf/flush_partitions.py [--kafka HOST:PORT] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from consumers.kafka import producer_config
from consumers.settings import Settings


def flush_ms(producer: Producer, targets: list[tuple[str, int]], rounds: int) -> list[float]:
    walls = []
    for _ in range(rounds):
        for topic, partition in targets:
            for _ in range(3):
                producer.produce(topic, b"x" * 400, partition=partition)
        started = time.perf_counter()
        producer.flush(30)
        walls.append((time.perf_counter() - started) * 1000)
        time.sleep(0.005)
    return sorted(walls)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kafka", default="127.0.0.1:9092")
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args()
    tag = uuid.uuid4().hex[:6]
    topics = [f"perf-flush-{name}-{tag}" for name in "abc"]
    admin = AdminClient({"bootstrap.servers": args.kafka})
    for future in admin.create_topics([NewTopic(t, 4, 1) for t in topics]).values():
        future.result(30)
    conf = producer_config(Settings(kafka_bootstrap=args.kafka), **{"delivery.report.only.error": True})
    producer = Producer(conf)
    try:
        for t in topics:
            producer.produce(t, b"warm-up")
        producer.flush(30)
        shapes = {"1 partition": [(topics[0], 0)],
                  "4 partitions": [(topics[0], i) for i in range(4)],
                  "12 partitions": [(t, i) for t in topics for i in range(4)]}
        for _ in range(2):
            for label, targets in shapes.items():
                walls = flush_ms(producer, targets, args.rounds)
                n = len(walls)
                print(f"{label:14s} flush p50 {walls[n // 2]:6.2f} ms  p90 {walls[int(n * 0.9)]:6.2f} ms", flush=True)
    finally:
        producer.flush(30)
        for future in admin.delete_topics(topics).values():
            future.result(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
