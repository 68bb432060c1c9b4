"""Prometheus metrics of every Tidings process (names start with ``tidings_``).

Labels are bounded: topic, partition, channel, outcome, reason (an error class
or a fixed skip reason), never a user or delivery id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
    "Delivery outcomes by channel: delivered, retrying, dead_lettered, already_sent, duplicate, stale.",
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
    # Up to a day: the retry ladder (10s, 1m, 10m, 1h) and the delivery deadline (24 h) lie in
    # it, and 60 s (the alerting objective) is a bucket boundary.
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200,
             21600, 86400),
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
CONSUMER_RESTARTS = Counter(
    "tidings_consumer_restarts", "Kafka consumers replaced in-process after failing to rejoin their group, by role.",
    ["role"], registry=REGISTRY,
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
    "Deliveries held for later release, by kind (scheduled, quiet_hours, digest, unread_fallback).",
    ["kind"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "tidings_fallbacks",
    "Channel fallbacks, by the channel that did not reach the recipient, the fallback channel, the trigger "
    "(failed, unread) and the outcome (sent: the fallback delivery was produced; not_needed: the in-app "
    "item was read, dismissed or expired in time).",
    ["channel", "to", "trigger", "outcome"],
    registry=REGISTRY,
)


class PartitionLag:
    """``tidings_consumer_lag`` of one consumer group, from librdkafka's statistics.

    librdkafka computes the statistics on its own thread and the consumer hands
    them over inside ``consume()`` every ``statistics.interval.ms``, so the
    figures cost the poll loop one JSON parse and never a request to the broker.
    Only partitions assigned to this consumer are reported: the label sets of
    revoked or lost partitions are removed at once, and a snapshot taken before a
    revocation but delivered after it does not bring them back.
    """

    def __init__(self, group: str, gauge: Gauge = CONSUMER_LAG) -> None:
        self.group = group
        self.gauge = gauge
        self._assigned: set[tuple[str, str]] = set()
        self._reported: dict[tuple[str, str], int] = {}

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        self._assigned.update((topic, str(p)) for topic, p in partitions)

    def revoke(self, partitions: Iterable[tuple[str, int]]) -> None:
        for topic, p in partitions:
            key = (topic, str(p))
            self._assigned.discard(key)
            if self._reported.pop(key, None) is not None:
                self.gauge.remove(self.group, *key)

    def clear(self) -> None:
        self.revoke([(t, int(p)) for t, p in self._assigned | set(self._reported)])

    def reported(self) -> dict[tuple[str, int], int]:
        """What the gauge shows for this group now: ``{(topic, partition): lag}``."""
        return {(topic, int(p)): lag for (topic, p), lag in self._reported.items()}

    def update(self, stats: Mapping[str, Any]) -> None:
        """Set the gauge from one statistics snapshot (the parsed JSON of ``stats_cb``)."""
        for topic, tinfo in stats.get("topics", {}).items():
            for pid, pinfo in tinfo.get("partitions", {}).items():
                key = (topic, pid)
                if key not in self._assigned:
                    continue
                lag = partition_lag(pinfo)
                if lag is None:
                    continue
                self.gauge.labels(self.group, topic, pid).set(lag)
                self._reported[key] = lag


def partition_lag(p: Mapping[str, Any]) -> int | None:
    """Records between this consumer's position and the end of one partition, or None if unknown.

    The stored position first (what the next commit will say), then the committed
    one; before either exists (a new group that has finished no batch yet), the log
    start, where ``auto.offset.reset=earliest`` begins. Records fetched but not yet
    processed count as lag: a consumer that keeps failing its first batch shows
    its whole backlog, not zero.
    The end is the last stable offset when librdkafka reports one (read_committed),
    else the high watermark.
    """
    for name in ("consumer_lag_stored", "consumer_lag"):
        value = p.get(name)
        if isinstance(value, int) and value >= 0:
            return value
    ls, hi = p.get("ls_offset", -1), p.get("hi_offset", -1)
    end = ls if isinstance(ls, int) and ls >= 0 else hi
    if not isinstance(end, int) or end < 0:
        return None
    start = p.get("lo_offset")
    if isinstance(start, int) and start >= 0:
        return max(end - start, 0)
    return None


class InboxStreams(Collector):
    """The inbox API's live streams (``tidings inbox serve``), read from the app's state when scraped.

    The inbox is a separate process with its own registry: it exports these three and none of
    the consumers' metrics.
    """

    def __init__(self, state: Any) -> None:
        self.state = state  # the FastAPI app's state: open_streams, max_streams, refused_streams

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("tidings_inbox_streams_open", "Live inbox streams (SSE) open on this server.",
                                value=self.state.open_streams)
        yield GaugeMetricFamily("tidings_inbox_streams_max",
                                "The most live streams this server takes (TIDINGS_INBOX_MAX_STREAMS).",
                                value=self.state.max_streams)
        yield CounterMetricFamily("tidings_inbox_streams_refused",
                                  "Live streams refused (503) because the server had its most open.",
                                  value=self.state.refused_streams)


def inbox_registry(state: Any) -> CollectorRegistry:
    """A registry holding the inbox API's metrics, read from ``state`` (the app's ``app.state``)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(InboxStreams(state))
    return registry


def serve_inbox_metrics(state: Any, host: str, port: int) -> WSGIServer:
    """Serve the inbox's ``/metrics`` on ``host:port`` (0: a free port) from a daemon thread.

    A port of its own, like the consumers' metrics port: the API port faces users.
    """
    server, _thread = start_http_server(port, addr=host, registry=inbox_registry(state))
    return server
