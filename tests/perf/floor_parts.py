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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from schemas import Catalog, CloudEvent  # noqa: E402
from schemas.cloudevents import format_time  # noqa: E402


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
    from schemas.models import State, delivery_id

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    catalog = Catalog.load()
    renderer = Renderer(REPO / "config" / "templates")
    data = {"user_id": "u7", "match_id": "m7", "job_title": "Platform Engineer", "company": "Acme", "score": 87.0}
    ce = CloudEvent.new("jobs.match.found", source="bench", subject="u7", id="bench-7", time=datetime.now(UTC))
    msg = _Msg(catalog.encode(catalog.for_type(ce.type), data, check=False), ce.to_headers())
    event = decode_event(catalog, msg)
    now = datetime.now(UTC)
    context = {"data": event.data, "event": {"id": ce.id, "source": ce.source, "type": ce.type,
                                             "time": format_time(ce.time), "subject": ce.subject, "tenant": ce.tenant},
               "recipient": {"id": "u7", "name": "u7", "locale": "en", "timezone": "UTC"},
               "rule": {"name": "job_match", "priority": "normal"}}
    rendered = renderer.render("job_match", context, "en")
    fields: dict[str, Any] = {
        "delivery_id": delivery_id(ce.source, ce.id, "job_match", "u7", "webhook"), "event_id": ce.id,
        "event_source": ce.source, "event_type": ce.type, "event_time": ce.time, "tenant": ce.tenant,
        "rule": "job_match", "channel": "webhook", "recipient_id": "u7", "address": "http://127.0.0.1:9/",
        "locale": "en", "priority": "normal", "subject": rendered.subject, "text": rendered.text, "html": None,
        "payload": None, "created_at": now, "deadline": now + timedelta(seconds=60), "attempt": 0, "metadata": {},
        "fallback": None,
    }
    fields["payload"] = webhook_payload(event, fields, rendered)
    email = {**fields, "channel": "email", "address": "u7@example.com", "html": rendered.html, "payload": None}
    status = {"state": State.routed, "event_id": ce.id, "event_source": ce.source, "event_type": ce.type,
              "delivery_id": fields["delivery_id"], "channel": "webhook", "recipient_id": "u7", "rule": "job_match",
              "reason": None, "detail": None, "attempt": 0, "provider_id": None, "at": now}
    dschema, sschema = catalog.named("tidings.internal.Delivery"), catalog.named("tidings.internal.Status")
    parts = [
        ("decode the event (headers and body)", 1, lambda: decode_event(catalog, msg)),
        ("render subject, text and html", 1, lambda: renderer.render("job_match", context, "en")),
        ("two delivery ids", 2, lambda: delivery_id(ce.source, ce.id, "job_match", "u7", "webhook")),
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
