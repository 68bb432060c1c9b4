#!/usr/bin/env python3
"""Microseconds per ``Catalog.decode``: fastavro against the compiled body reader, same run.

Decodes a webhook Delivery as bench B2 sends it, a Status and a ``jobs.match.found``
event in timed batches, taken in turn with the schema's compiled reader switched off
(fastavro's ``schemaless_reader``, what decode did before) and on, and prints the
best batch of each and the ratio. The machine is shared, so the whole
comparison is repeated (``--rounds``) and every round printed.

Usage: .venv/bin/python tests/perf/avro_decode.py [--rounds 3] [--number 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import bench_delivery

from schemas import Catalog
from schemas.avro import Schema
from schemas.models import State, Status


def timed(fn: Callable[[], object], number: int) -> float:
    """Microseconds per call over one batch of ``number`` calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


def compare(catalog: Catalog, schema: Schema, value: bytes, number: int, batches: int = 7) -> tuple[float, float]:
    """The best batch of fastavro and of the compiled reader, their batches taken in turn."""
    compiled = schema.body_reader
    expected: Any = catalog.decode(value)[1]
    decode = partial(catalog.decode, value)
    slow = fast = float("inf")
    try:
        for _ in range(batches):
            object.__setattr__(schema, "body_reader", None)  # the fastavro path, as before
            assert catalog.decode(value)[1] == expected
            slow = min(slow, timed(decode, number // 4))
            object.__setattr__(schema, "body_reader", compiled)
            fast = min(fast, timed(decode, number))
    finally:
        object.__setattr__(schema, "body_reader", compiled)
    return slow, fast


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--number", type=int, default=20_000, help="decodes per timed batch")
    args = p.parse_args()
    catalog = Catalog.load()
    now = datetime.now(UTC)
    delivery = bench_delivery(7, "webhook", "http://127.0.0.1:8080/hook", now, "bench")
    status = Status.for_delivery(delivery, State.delivered, attempt=1, provider_id="200")
    match = {"user_id": "u7", "match_id": "m7", "job_title": "Platform Engineer", "company": "Acme",
             "score": 91.0, "location": "Berlin", "is_remote": False}
    cases: list[tuple[str, Schema, bytes]] = [
        ("Delivery", catalog.named("tidings.internal.Delivery"), delivery.encode(catalog)),
        ("Status", catalog.named("tidings.internal.Status"), status.encode(catalog)),
        ("jobs.match.found", catalog.for_type("jobs.match.found"),
         catalog.encode(catalog.for_type("jobs.match.found"), match)),
    ]
    for rnd in range(1, args.rounds + 1):
        for name, schema, value in cases:
            slow, fast = compare(catalog, schema, value, args.number)
            print(f"round {rnd}  {name:17} {len(value):4} bytes  fastavro {slow:6.2f} us"
                  f"  compiled {fast:6.2f} us  ratio {slow / fast:4.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
