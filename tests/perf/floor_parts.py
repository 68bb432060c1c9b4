#!/usr/bin/env python3
"""What B1's floor costs per event, part by part, in process (no Kafka, no Redis).

The floor (``bench.py``'s ``role_floor``) is the work no router can skip: decode the event,
render the template's three parts, build the two deliveries' ids and the webhook body, write
the two deliveries and two statuses in Avro. This times each part on the bench's own event,
with the same functions, best of several rounds of N events (CPU time of this thread).

Usage: .venv/bin/python tests/perf/floor_parts.py [N]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import FLOOR_RULE, REPO, floor_context, floor_records  # noqa: E402

from schemas import Catalog, CloudEvent  # noqa: E402


class _Msg:
    """What decode_event reads of a confluent-kafka Message."""

    def __init__(self, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._value, self._headers = value, headers

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers


def best(fn: Callable[[], Any], n: int, rounds: int = 7) -> float:
    """Best CPU microseconds per call over ``rounds`` runs of ``n`` calls."""
    out = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(n):
            fn()
        out = min(out, (time.thread_time() - start) / n * 1e6)
    return out


def main() -> int:
    from consumers.router_consumer import decode_event
    from router.decision import webhook_payload
    from router.templates import Renderer
    from schemas.models import delivery_id

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    catalog = Catalog.load()
    renderer = Renderer(REPO / "config" / "templates")
    data = {"user_id": "u7", "match_id": "m7", "job_title": "Platform Engineer", "company": "Acme", "score": 87.0}
    ce = CloudEvent.new("jobs.match.found", source="bench", subject="u7", id="bench-7", time=datetime.now(UTC))
    msg = _Msg(catalog.encode(catalog.for_type(ce.type), data, check=False), ce.to_headers())
    event = decode_event(catalog, msg)
    now = datetime.now(UTC)
    context = floor_context(event)
    rendered = renderer.render(FLOOR_RULE, context, "en")
    deadline = now + timedelta(seconds=60)
    fields, status = floor_records(event, rendered, "webhook", "http://127.0.0.1:9/", now, deadline)
    email, _ = floor_records(event, rendered, "email", "u7@example.com", now, deadline)
    dschema, sschema = catalog.named("tidings.internal.Delivery"), catalog.named("tidings.internal.Status")
    parts = [
        ("decode the event (headers and body)", 1, lambda: decode_event(catalog, msg)),
        ("render subject, text and html", 1, lambda: renderer.render(FLOOR_RULE, context, "en")),
        ("two delivery ids", 2, lambda: delivery_id(ce.source, ce.id, FLOOR_RULE, "u7", "webhook")),
        ("the webhook body (JSON)", 1, lambda: webhook_payload(event, fields, rendered)),
        ("write the email delivery", 1, lambda: catalog.encode(dschema, email, check=False)),
        ("write the webhook delivery", 1, lambda: catalog.encode(dschema, fields, check=False)),
        ("write two statuses", 2, lambda: catalog.encode(sschema, status, check=False)),
    ]
    total = 0.0
    print(f"{'part':40} {'us per event':>12}")
    for name, times, fn in parts:
        cost = best(fn, n) * times
        total += cost
        print(f"{name:40} {cost:12.1f}")
    print(f"{'sum (Python, before producing)':40} {total:12.1f}")
    print(f"events/s on one core at that cost alone: {1e6 / total:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
