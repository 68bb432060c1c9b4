"""Prometheus metrics of every Tidings process (names start with ``tidings_``).

Labels are bounded: topic, partition, channel, outcome, reason (an error class
or a fixed skip reason), never a user or delivery id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter(
    "tidings_events_consumed", "Records consumed, by topic.", ["topic"], registry=REGISTRY
)
ROUTER_DECISIONS = Counter(
    "tidings_router_decisions",
    "Router outcomes per event or per (recipient, channel): routed, skipped, deduplicated, dead_lettered.",
    ["outcome", "reason"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "tidings_deliveries",
    "Delivery outcomes by channel: delivered, dead_lettered, retried_in_place, already_sent, duplicate, stale.",
    ["channel", "outcome"],
    registry=REGISTRY,
)
SEND_LATENCY = Histogram(
    "tidings_send_latency_seconds",
    "Time of one provider call (successful or not).",
    ["channel"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
END_TO_END_LATENCY = Histogram(
    "tidings_end_to_end_latency_seconds",
    "From the event's ce_time to the provider accepting the delivery.",
    ["channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
DLQ_RECORDS = Counter(
    "tidings_dlq_records", "Records written to a dead-letter topic, by topic and reason.",
    ["topic", "reason"], registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "tidings_batch_seconds", "Time to process one consumed batch, by role.", ["role"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)
BATCH_RETRIES = Counter(
    "tidings_batch_retries", "Batches rewound and processed again, by role and cause.",
    ["role", "cause"], registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "tidings_consumer_lag", "High watermark minus committed position, from the consumer's own view.",
    ["group", "topic", "partition"], registry=REGISTRY,
)

# The metrics below are declared here once so that the dashboard, the alert
# rules and every process agree on names and labels.
RETRIES = Counter(
    "tidings_retries",
    "Deliveries sent to a retry tier, by channel, tier (its delay, e.g. 10s) "
    "and cause (transient, rate_limited, circuit_open).",
    ["channel", "tier", "cause"],
    registry=REGISTRY,
)
CIRCUIT_OPEN = Gauge(
    "tidings_circuit_breakers_open",
    "Provider endpoints whose circuit breaker is open (or half-open), by channel.",
    ["channel"],
    registry=REGISTRY,
)
CIRCUIT_TRANSITIONS = Counter(
    "tidings_circuit_transitions",
    "Circuit breaker state changes, by channel and new state (open, half_open, closed).",
    ["channel", "state"],
    registry=REGISTRY,
)
SUPPRESSIONS = Counter(
    "tidings_suppressions",
    "Deliveries the router did not send now, by channel and reason "
    "(dedup, dedup_window, content_unchanged, once_ever, preference, frequency_cap, quiet_hours, stale).",
    ["channel", "reason"],
    registry=REGISTRY,
)
HELD = Gauge(
    "tidings_held_deliveries",
    "Deliveries held for later release, by kind (scheduled, quiet_hours, digest).",
    ["kind"],
    registry=REGISTRY,
)
