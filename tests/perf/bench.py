#!/usr/bin/env python3
"""``make bench``: throughput, latency and memory of Tidings on real local Kafka and Redis.

Every figure that depends on the machine is set against a baseline or a peer
measured in the same run, because a shared 2-core machine is noisy. The
benchmarks (docs/performance.md explains each one and its target):

* B1 router throughput against a bare confluent-kafka consume-and-produce passthrough;
* B2 webhook delivery against a raw httpx AsyncClient and an RQ worker (the seeds' design);
* B3 email against one smtplib connection per message;
* B4 end-to-end latency, publish to webhook receipt, at a fixed rate;
* B5 peak RSS of the router (during B1) and of the webhook consumer (during B2);
* B6 the router with one and with two processes on 4 partitions.

The router and channel consumers run as real ``tidings`` processes. Kafka is
the one at ``--kafka`` (``make bench`` runs ``make infra-up`` first, which
reuses a running broker); Redis is a private ``redis-server`` the bench starts
unless ``--redis`` names one; nginx (Debian's ``nginx-light``) is started with
a private configuration on a free loopback port.

Results: a table on stdout, and ``bench-<UTC time>.json``/``.md`` plus
``latest.json``/``latest.md`` in ``--out`` (default ``tests/perf/results``).

Usage::

    .venv/bin/python tests/perf/bench.py [--scale standard|full|quick] [--only B1,B2,...] [--set b1=N]

A process role is chosen by the first argument when the bench runs itself as
a helper: ``passthrough``, ``smtp-sink`` or ``latency-sink``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import confluent_kafka  # noqa: E402
import httpx  # noqa: E402
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from redis import Redis  # noqa: E402

from consumers.kafka import BatchProducer, consumer_config, coordinates, next_offsets, producer_config  # noqa: E402
from consumers.loop import settle_heap  # noqa: E402
from consumers.router_consumer import decode_event  # noqa: E402
from consumers.settings import Settings  # noqa: E402
from consumers.topics import create_topics  # noqa: E402
from devstack import infra  # noqa: E402
from router.decision import Event, event_context, webhook_payload  # noqa: E402
from router.recipients import Recipient, RecipientStore  # noqa: E402
from router.templates import Rendered, Renderer  # noqa: E402
from schemas import Catalog, CloudEvent, Delivery  # noqa: E402
from schemas.cloudevents import format_time  # noqa: E402
from schemas.models import State, delivery_id  # noqa: E402

SCALES: dict[str, dict[str, int]] = {
    # b1: events pre-loaded for the router; b2: webhook deliveries; b2_rq: jobs for the RQ peer
    # (a slower peer gets fewer, and its rate is compared); b3: emails; b3_peer: smtplib messages;
    # b4_rate, b4_seconds and b4_runs: the fixed-rate latency runs (pooled: one run's p99 swings
    # between about 90 and 400 ms on the shared 2-core machine); b4_floor=1 runs B4 with B1's floor
    # (role_floor) in the router's place, an experiment.
    # "standard" (the default) fits in 10 minutes on a 2-core machine shared with other work;
    # "full" has the sizes the benchmarks were specified with and needs a quiet machine for that.
    "standard": {"b1": 50_000, "b2": 6_000, "b2_rq": 200, "b3": 6_000, "b3_peer": 1_500,
                 "b4_rate": 1_000, "b4_seconds": 60, "b4_runs": 3, "b4_floor": 0, "users": 1_000},
    "full": {"b1": 200_000, "b2": 50_000, "b2_rq": 2_000, "b3": 20_000, "b3_peer": 4_000,
             "b4_rate": 1_000, "b4_seconds": 60, "b4_runs": 3, "b4_floor": 0, "users": 1_000},
    "quick": {"b1": 2_000, "b2": 500, "b2_rq": 50, "b3": 200, "b3_peer": 50,
              "b4_rate": 100, "b4_seconds": 3, "b4_runs": 1, "b4_floor": 0, "users": 50},
}
ALL = ("B1", "B2", "B3", "B4", "B6")  # B5 is measured during B1 and B2
WAIT_LIMIT = 600.0


# -- small helpers -------------------------------------------------------------------


def log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the peak resident set) of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


@dataclass
class Timing:
    """When the first output record was seen, how many there were then, and when all were there."""

    started_at: float
    first_at: float
    first_count: int
    done_at: float
    total: int
    cpu: float = float("nan")
    """CPU seconds the watched processes used from the first output to the last."""
    per: int = 1
    """Output records per item counted (the router writes two deliveries per event)."""

    def cpu_us_per_item(self) -> float:
        done = self.total - self.first_count
        return self.cpu / done * self.per * 1e6 if done > 0 else float("nan")

    def rate(self) -> float:
        """Items a second (records a second divided by ``per``)."""
        # From the first output to the last: process start-up and group joins are left out,
        # the same way for ours and the baseline. When the first look already saw most of
        # the output (tiny runs), count from the start instead.
        if self.first_count > self.total // 2 or self.done_at <= self.first_at:
            return self.total / self.per / (self.done_at - self.started_at)
        return (self.total - self.first_count) / self.per / (self.done_at - self.first_at)


@dataclass
class Result:
    name: str
    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    """Name -> (measured, bound, ">=" or "<=")."""
    notes: list[str] = field(default_factory=list)

    def target(self, name: str, measured: float, bound: float, op: str) -> None:
        self.targets[name] = (round(measured, 3), bound, op)

    def met(self) -> dict[str, bool]:
        return {k: (m >= b if op == ">=" else m <= b) for k, (m, b, op) in self.targets.items()}


class Processes:
    """Child processes of the bench, stopped in reverse order on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        out.close()
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, 10.0)


class Bench:
    def __init__(self, args: argparse.Namespace, kafka: str, redis_url: str, work: Path) -> None:
        self.args = args
        self.size = SCALES[args.scale]
        self.kafka = kafka
        self.redis_url = redis_url
        self.redis = Redis.from_url(redis_url)
        self.work = work
        self.run_id = uuid.uuid4().hex[:6]
        self.procs = Processes(work)
        self.catalog = Catalog.load()
        self.results: list[Result] = []
        self.meta = Consumer({"bootstrap.servers": kafka, "group.id": f"bench-meta-{self.run_id}"})
        self.nginx_port: int | None = None
        self.smtp_port: int | None = None

    # -- settings and processes --

    def settings(self, tag: str, **extra: Any) -> Settings:
        return Settings(kafka_bootstrap=self.kafka, redis_url=self.redis_url,
                        topic_prefix=f"bench{self.run_id}{tag}.", group_prefix=f"bench{self.run_id}{tag}-",
                        partitions=4, rules=REPO / "config" / "rules.yaml", metrics_port=-1, **extra)

    def env(self, settings: Settings, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update({
            "TIDINGS_KAFKA_BOOTSTRAP": self.kafka,
            "TIDINGS_REDIS_URL": self.redis_url,
            "TIDINGS_TOPIC_PREFIX": settings.topic_prefix,
            "TIDINGS_GROUP_PREFIX": settings.group_prefix,
            "TIDINGS_RULES": str(settings.rules),
            "TIDINGS_METRICS_PORT": "-1",
            "TIDINGS_LOG_LEVEL": "WARNING",
            # Loopback sinks are the point of a benchmark; let the webhook channel reach them.
            "TIDINGS_WEBHOOK_ALLOW_PRIVATE": "127.0.0.0/8",
        })
        if settings.events_topic:
            env["TIDINGS_EVENTS_TOPIC"] = settings.events_topic
        env.update(getattr(self.args, "env", None) or {})
        env.update(extra)
        return env

    def tidings(self, name: str, settings: Settings, *argv: str, **extra: str) -> subprocess.Popen[bytes]:
        return self.procs.spawn(name, [sys.executable, "-m", "consumers.cli", *argv], self.env(settings, **extra))

    def helper(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        return self.procs.spawn(name, [sys.executable, str(Path(__file__).resolve()), *argv])

    # -- Kafka helpers --

    def drop_topics(self) -> None:
        """Delete every topic this run created (the broker may be a shared one)."""
        admin = AdminClient({"bootstrap.servers": self.kafka})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"bench{self.run_id}")]
        if mine:
            for future in admin.delete_topics(mine, request_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    future.result(30)

    def count(self, topics: list[str]) -> int:
        """Records on ``topics`` (the sum of the partitions' high watermarks)."""
        for attempt in range(50):
            try:
                total = 0
                for topic in topics:
                    meta = self.meta.list_topics(topic, timeout=10).topics[topic]
                    for p in meta.partitions:
                        tp = TopicPartition(topic, p)
                        total += self.meta.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                return total
            except KafkaException:  # a new topic's leaders are still being elected
                time.sleep(0.1 * (attempt + 1))
        raise RuntimeError(f"cannot read the end offsets of {topics}")

    def wait_count(self, topics: list[str], total: int, procs: list[subprocess.Popen[bytes]],
                   limit: float = WAIT_LIMIT, every: float = 0.05, per: int = 1) -> Timing:
        """Wait until ``topics`` hold ``total`` records; timings per item of ``per`` records."""
        started = time.perf_counter()
        first_at, first_count, first_cpu = 0.0, 0, 0.0
        pids = [p.pid for p in procs]
        while True:
            n = self.count(topics)
            now = time.perf_counter()
            if n and not first_at:
                first_at, first_count, first_cpu = now, n, cpu_seconds(pids)
            if n >= total:
                return Timing(started, first_at, first_count, now, total, cpu_seconds(pids) - first_cpu, per)
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args} exited with {proc.returncode} at {n}/{total}; "
                                       f"see the logs in {self.work}")
            if now - started > limit:
                raise RuntimeError(f"only {n}/{total} records on {topics} after {limit:.0f} s")
            time.sleep(every)

    def producer(self) -> Producer:
        return Producer(producer_config(Settings(kafka_bootstrap=self.kafka),
                                        **{"queue.buffering.max.messages": 500_000}))

    def produce_all(self, producer: Producer, records: Iterator[tuple[str, bytes, str, list[tuple[str, bytes]]]]
                    ) -> int:
        n = 0
        for topic, value, key, headers in records:
            while True:
                try:
                    producer.produce(topic, value, key=key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
            n += 1
            if n % 10_000 == 0:
                producer.poll(0)
        left = producer.flush(120)
        if left:
            raise RuntimeError(f"{left} pre-loaded record(s) not acknowledged")
        return n

    def record_times(self, topic: str) -> dict[str, float]:
        """Every record's Kafka timestamp (ms) on ``topic``, by its ``tidings_delivery_id`` header."""
        consumer = Consumer({"bootstrap.servers": self.kafka, "group.id": f"bench-times-{self.run_id}",
                             "enable.auto.commit": False})
        parts = self.meta.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: self.meta.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        times: dict[str, float] = {}
        left = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 120
        try:
            while left and time.monotonic() < deadline:
                for msg in consumer.consume(10_000, 1.0):
                    if msg.error():
                        continue
                    header = dict(msg.headers() or []).get("tidings_delivery_id")
                    if isinstance(header, bytes):
                        times[header.decode()] = float(msg.timestamp()[1])
                    _, partition, offset = coordinates(msg)
                    if offset + 1 >= ends[partition]:
                        left.discard(partition)
        finally:
            consumer.close()
        return times

    # -- fixtures of the runs --

    def recipients(self, webhook_url: str) -> None:
        users = self.size["users"]
        RecipientStore(self.redis).put_many([
            Recipient(id=f"u{i}", name=f"User {i}", locale="de" if i % 10 == 0 else "en",
                      contacts={"email": f"u{i}@example.com", "webhook": webhook_url})
            for i in range(users)
        ])

    def events(self, topic: str, n: int, *, start: int = 0, at: datetime | None = None
               ) -> Iterator[tuple[str, bytes, str, list[tuple[str, bytes]]]]:
        schema = self.catalog.for_type("jobs.match.found")
        users = self.size["users"]
        for i in range(start, start + n):
            user = f"u{i % users}"
            data = {"user_id": user, "match_id": f"m{i}", "job_title": "Platform Engineer",
                    "company": "Acme", "score": 80.0 + i % 20}
            ce = CloudEvent.new("jobs.match.found", source="bench", subject=user, id=f"{topic}-{i}",
                                time=at or datetime.now(UTC))
            yield topic, self.catalog.encode(schema, data, check=False), f"default:{user}", ce.to_headers()

    def deliveries(self, settings: Settings, channel: str, n: int, address: Callable[[int], str]
                   ) -> Iterator[tuple[str, bytes, str, list[tuple[str, bytes]]]]:
        topic = settings.deliver_topic(channel)
        now = datetime.now(UTC)
        for i in range(n):
            d = bench_delivery(i, channel, address(i), now, self.run_id)
            yield topic, d.encode(self.catalog), f"default:{d.recipient_id}", [
                ("tidings_delivery_id", d.delivery_id.encode())]

    # -- B1, B5 (router), B6 --

    def b1(self) -> None:
        n = self.size["b1"]
        res = Result("B1", "router throughput")
        settings = self.settings("b1")
        create_topics(settings, ["email", "webhook"])
        self.recipients("http://127.0.0.1:9/unused")
        log(f"B1: pre-loading {n:,} events on 4 partitions")
        took = time.perf_counter()
        self.produce_all(self.producer(), self.events(settings.input_topic, n))
        res.figures["preload_s"] = round(time.perf_counter() - took, 1)

        log("B1: baseline, bare consume-and-produce passthrough")
        out = settings.topic("passthrough")
        create_topics(Settings(kafka_bootstrap=self.kafka, events_topic=out, partitions=4), [])
        proc = self.helper("b1-passthrough", "passthrough", "--kafka", self.kafka, "--input", settings.input_topic,
                           "--output", out, "--group", f"bench{self.run_id}-passthrough")
        base = self.wait_count([out], n, [proc])
        self.procs.stop(proc)

        log("B1: the floor, the per-event work no router can skip (decode, render, encode, produce)")
        floor_settings = self.settings("b1floor")
        create_topics(floor_settings, ["email", "webhook"])
        proc = self.helper("b1-floor", "floor", "--kafka", self.kafka, "--input", settings.input_topic,
                           "--prefix", floor_settings.topic_prefix, "--group", f"bench{self.run_id}-floor")
        floor = self.wait_count([floor_settings.deliver_topic("email"), floor_settings.deliver_topic("webhook")],
                                2 * n, [proc], per=2)
        self.procs.stop(proc)

        log("B1: the router, one process")
        proc = self.tidings("b1-router", settings, "router")
        outs = [settings.deliver_topic("email"), settings.deliver_topic("webhook")]
        # Two deliveries per event: rates and CPU are per event (before 2026-11-22 the rate
        # was per delivery and so twice the events a second; see docs/performance.md).
        ours = self.wait_count(outs, 2 * n, [proc], per=2)
        rss = peak_rss_mb(proc.pid)
        self.procs.stop(proc)
        res.figures.update(events=n, passthrough_per_s=round(base.rate()), router_per_s=round(ours.rate()),
                           ratio=round(ours.rate() / base.rate(), 3),
                           passthrough_cpu_us_per_event=round(base.cpu_us_per_item(), 1),
                           floor_per_s=round(floor.rate()), floor_ratio=round(floor.rate() / base.rate(), 3),
                           floor_cpu_us_per_event=round(floor.cpu_us_per_item(), 1),
                           router_cpu_us_per_event=round(ours.cpu_us_per_item(), 1))
        res.notes.append("CPU per event: user+system time of the process between the first and the last output "
                         "record, divided by the events in that span (steadier than rates on a shared machine)")
        res.notes.append("each event gives 2 deliveries (email, webhook) and 2 status events")
        res.notes.append("floor: a process doing only the work no router can skip (decode, render, write and "
                         "produce the four records), no rules, Redis or models (role_floor)")
        res.target("router events/s", ours.rate(), 25_000, ">=")
        res.target("router / passthrough", ours.rate() / base.rate(), 0.40, ">=")
        self.results.append(res)
        self._router_rss = rss
        self._b1 = (settings, ours.rate())

    def b6(self) -> None:
        if not hasattr(self, "_b1"):
            self.b1()
        b1_settings, one = self._b1
        n = self.size["b1"]
        res = Result("B6", "router scaling, 1 and 2 processes on 4 partitions")
        # A new group and new output topics over B1's input: the same records, routed again
        # (their dedup claims name these same coordinates, so they count as ours, not duplicates).
        settings = self.settings("b6", events_topic=b1_settings.input_topic)
        create_topics(settings, ["email", "webhook"])
        log("B6: the router, two processes")
        procs = [self.tidings(f"b6-router{i}", settings, "router") for i in range(2)]
        outs = [settings.deliver_topic("email"), settings.deliver_topic("webhook")]
        two = self.wait_count(outs, 2 * n, procs, per=2)
        for proc in procs:
            self.procs.stop(proc)
        res.figures.update(one_process_per_s=round(one), two_processes_per_s=round(two.rate()),
                           speedup=round(two.rate() / one, 2), cores=os.cpu_count())
        res.notes.append("Kafka, Redis and the bench share the same cores as the routers")
        self.results.append(res)

    # -- B2, B5 (webhook consumer) --

    def b2(self) -> None:
        n, n_rq = self.size["b2"], self.size["b2_rq"]
        res = Result("B2", "webhook delivery to nginx")
        port = self.start_nginx()
        settings = self.settings("b2")
        create_topics(settings, ["webhook"])
        url = f"http://127.0.0.1:{port}/hook"
        log(f"B2: pre-loading {n:,} webhook deliveries")
        self.produce_all(self.producer(), self.deliveries(settings, "webhook", n, lambda i: url))

        log("B2: the webhook consumer")
        proc = self.tidings("b2-webhook", settings, "deliver", "webhook")
        ours = self.wait_count([settings.status_topic], n, [proc])
        rss = peak_rss_mb(proc.pid)
        self.procs.stop(proc)
        errors = self.count([settings.channel_dlq_topic("webhook")])
        if errors:
            raise RuntimeError(f"B2: {errors} deliveries were dead-lettered; see {self.work}/b2-webhook.log")
        in_flight = min(settings.max_in_flight, 32)

        log(f"B2: baseline, raw httpx AsyncClient at {in_flight} in flight")
        requests = [webhook_request(bench_delivery(i, "webhook", url, datetime.now(UTC), self.run_id))
                    for i in range(n)]
        raw = asyncio.run(raw_httpx(url, requests, in_flight))

        log(f"B2: peer, an RQ worker posting {n_rq:,} jobs one blocking call each")
        rq_rate = self.rq_peer(url, requests[:n_rq])
        res.figures.update(deliveries=n, ours_per_s=round(ours.rate()),
                           ours_cpu_us_per_delivery=round(ours.cpu_us_per_item(), 1), raw_httpx_per_s=round(raw),
                           rq_jobs=n_rq, rq_per_s=round(rq_rate, 1), in_flight=in_flight,
                           ratio_raw=round(ours.rate() / raw, 3), ratio_rq=round(ours.rate() / rq_rate, 1))
        res.notes.append("ours includes Kafka consume, sent-mark reads and writes in Redis and status events")
        res.target("ours / raw httpx", ours.rate() / raw, 0.70, ">=")
        res.target("ours / RQ worker", ours.rate() / rq_rate, 10.0, ">=")
        self.results.append(res)
        self._webhook_rss = rss

    def rq_peer(self, url: str, requests: list[tuple[bytes, dict[str, str]]]) -> float:
        from rq import Queue

        name = f"bench{self.run_id}"
        queue = Queue(name, connection=self.redis)
        for body, headers in requests:
            queue.enqueue("rq_job.post", url, body, headers, result_ttl=0)
        started = time.perf_counter()
        proc = self.procs.spawn("b2-rq", [str(Path(sys.executable).parent / "rq"), "worker", "--burst", "--quiet",
                                          "--path", str(HERE), "--url", self.redis_url, name])
        proc.wait(WAIT_LIMIT)
        took = time.perf_counter() - started
        failed = queue.failed_job_registry.count
        if proc.returncode != 0 or failed:
            raise RuntimeError(f"RQ worker exited {proc.returncode} with {failed} failed job(s)")
        return len(requests) / took

    def start_nginx(self) -> int:
        if self.nginx_port is not None:
            return self.nginx_port
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError("nginx is missing: apt-get install nginx-light")
        port = infra.free_port()
        root = self.work / "nginx"
        root.mkdir(exist_ok=True)
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
        self.helper_nginx = self.procs.spawn("nginx", [binary, "-p", str(root), "-c", str(root / "nginx.conf"),
                                                       "-e", str(root / "error.log")])
        wait_port(port)
        self.nginx_port = port
        return port

    # -- B3 --

    def b3(self) -> None:
        n, n_peer = self.size["b3"], self.size["b3_peer"]
        res = Result("B3", "email to a local SMTP sink")
        port = infra.free_port()
        self.helper("smtp-sink", "smtp-sink", str(port))
        wait_port(port)
        settings = self.settings("b3")
        create_topics(settings, ["email"])
        log(f"B3: pre-loading {n:,} email deliveries")
        self.produce_all(self.producer(), self.deliveries(settings, "email", n, lambda i: f"u{i % 1000}@example.com"))
        log("B3: the email consumer")
        proc = self.tidings("b3-email", settings, "deliver", "email",
                            TIDINGS_SMTP_HOST="127.0.0.1", TIDINGS_SMTP_PORT=str(port))
        ours = self.wait_count([settings.status_topic], n, [proc])
        self.procs.stop(proc)
        errors = self.count([settings.channel_dlq_topic("email")])
        if errors:
            raise RuntimeError(f"B3: {errors} emails were dead-lettered; see {self.work}/b3-email.log")
        log(f"B3: peer, smtplib with one connection per message, {n_peer:,} messages")
        started = time.perf_counter()
        now = datetime.now(UTC)
        for i in range(n_peer):
            d = bench_delivery(i, "email", f"u{i % 1000}@example.com", now, self.run_id)
            message = EmailMessage()
            message["Subject"] = d.subject
            message["From"] = "Tidings <notifications@localhost>"
            message["To"] = d.address
            message["Message-ID"] = f"<{d.delivery_id}@tidings.local>"
            message.set_content(d.text)
            if d.html:
                message.add_alternative(d.html, subtype="html")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.send_message(message)
        peer = n_peer / (time.perf_counter() - started)
        smtp_pool = settings.smtp_pool_size
        res.figures.update(emails=n, ours_per_s=round(ours.rate()), smtplib_messages=n_peer,
                           smtplib_per_s=round(peer, 1), ratio=round(ours.rate() / peer, 2), smtp_pool=smtp_pool)
        res.target("ours / smtplib per message", ours.rate() / peer, 5.0, ">=")
        self.results.append(res)

    # -- B4 --

    def b4(self) -> None:
        rate, seconds, runs = self.size["b4_rate"], self.size["b4_seconds"], self.size["b4_runs"]
        res = Result("B4", f"end-to-end latency at {rate:,} events/s for {seconds} s"
                     + (f", {runs} runs pooled" if runs > 1 else "")
                     + (", B1's floor in the router's place" if self.size.get("b4_floor") else ""))
        done = [self._b4_run(rate, seconds, i, runs) for i in range(runs)]
        measured = sorted(v for run in done for v in run["latencies"])
        router_stage = sorted(v for run in done for v in run["router_stage"])
        delivery_stage = sorted(v for run in done for v in run["delivery_stage"])
        total = rate * seconds * runs
        received = sum(len(run["latencies"]) for run in done)
        res.figures.update(events=total, publish_per_s=min(run["publish_per_s"] for run in done), received=received,
                           p50_ms=pct(measured, 50), p95_ms=pct(measured, 95), p99_ms=pct(measured, 99),
                           max_ms=round(measured[-1], 1) if measured else None,
                           router_stage_p50_ms=pct(router_stage, 50), router_stage_p99_ms=pct(router_stage, 99),
                           delivery_stage_p50_ms=pct(delivery_stage, 50),
                           delivery_stage_p99_ms=pct(delivery_stage, 99))
        if runs > 1:
            res.figures.update(runs=runs, p50_ms_per_run=[pct(sorted(run["latencies"]), 50) for run in done],
                               p99_ms_per_run=[pct(sorted(run["latencies"]), 99) for run in done])
        res.figures.update(cpu_percent_of_a_core=done[-1]["cpu"] if runs == 1 else [run["cpu"] for run in done],
                           machine_busy_percent=done[-1]["busy"] if runs == 1 else [run["busy"] for run in done])
        res.notes.append("stages: publish (ce_time) to the webhook Delivery record's Kafka timestamp (taken when "
                         "the router produced it), and from there to the receiver; CPU and machine busy while "
                         "publishing (machine: all cores, from /proc/stat)")
        res.notes.append("publish (ce_time) to the webhook request at the receiver; ce_time has millisecond "
                         "precision; the warm-up events are left out")
        if runs > 1:
            res.notes.append(f"{runs} runs one after the other, each with its own router, webhook consumer, topics "
                             "and receiver; the percentiles are over every event of every run (a bad run weighs "
                             "in whole), the per-run figures show the spread")
        if received < total:
            res.notes.append(f"only {received} of {total} webhooks arrived within 60 s after publishing")
        res.target("p99 ms", pct(measured, 99), 100.0, "<=")
        self.results.append(res)

    def _b4_run(self, rate: int, seconds: int, run: int, runs: int) -> dict[str, Any]:
        """One fixed-rate run: latencies (ms) of every webhook, its two stages, CPU while publishing."""
        port = infra.free_port()
        record = self.work / f"latencies-{run}.json"
        sink = self.helper(f"latency-sink-{run}", "latency-sink", str(port), str(record))
        wait_port(port)
        self.recipients(f"http://127.0.0.1:{port}/hook")
        settings = self.settings(f"b4r{run}")
        create_topics(settings, ["email", "webhook"])
        if self.size.get("b4_floor"):  # an experiment: B1's floor in the router's place
            router = self.helper(f"b4-floor-{run}", "floor", "--kafka", self.kafka, "--input", settings.input_topic,
                                 "--prefix", settings.topic_prefix, "--group", f"{settings.group_prefix}floor",
                                 "--webhook-url", f"http://127.0.0.1:{port}/hook")
        else:
            router = self.tidings(f"b4-router-{run}", settings, "router")
        procs = [router, self.tidings(f"b4-webhook-{run}", settings, "deliver", "webhook")]
        producer = self.producer()
        # Warm up: a handful of events go through before the clock starts, so that
        # group joins and first connections are not counted as latency.
        log(f"B4: warming up the router and the webhook consumer (run {run + 1} of {runs})")
        self.produce_all(producer, self.events(settings.input_topic, 20, start=10_000_000))
        # per event: 2 "routed" status events from the router, 1 "delivered" from the webhook consumer
        self.wait_count([settings.status_topic], 3 * 20, procs, limit=120, every=0.2)
        # Every event is built and encoded before the clock starts; publishing one only stamps
        # its ce_time (the time the latency is measured from) and hands it to the producer, so
        # that the publisher takes as little as possible of the two cores the pipeline runs on.
        total = rate * seconds
        prepared = list(self.events(settings.input_topic, total))
        stamp = next(i for i, (name, _) in enumerate(prepared[0][3]) if name == "ce_time")
        log(f"B4: publishing {rate:,} events/s for {seconds} s")
        roles = {"router": procs[0].pid, "webhook_consumer": procs[1].pid, "receiver": sink.pid,
                 "publisher": os.getpid()}
        cpu_before = {name: cpu_seconds([pid]) for name, pid in roles.items()}
        machine_before = machine_ticks()
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        started = time.perf_counter()
        sent = 0
        while sent < total:
            due = started + (sent // per_tick) * tick
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            batch = min(per_tick, total - sent)
            now = format_time(datetime.now(UTC)).encode()
            for topic, value, key, headers in prepared[sent:sent + batch]:
                headers[stamp] = ("ce_time", now)
                producer.produce(topic, value, key=key, headers=headers)
            producer.poll(0)
            sent += batch
        producer.flush(30)
        took = time.perf_counter() - started
        cpu = {name: round((cpu_seconds([pid]) - cpu_before[name]) / took * 100) for name, pid in roles.items()}
        busy, all_ticks = (after - before for after, before in zip(machine_ticks(), machine_before, strict=True))
        # every event gives one webhook delivery; wait for all of them at the sink
        expected = total + 20
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.count([settings.status_topic]) < 3 * expected:
            time.sleep(0.2)
        for proc in procs:
            self.procs.stop(proc)
        self.procs.stop(sink)
        received = json.loads(record.read_text())[20:]  # [arrival ms, ce_time ms, delivery id]
        routed = self.record_times(settings.deliver_topic("webhook"))
        return {"latencies": [arrived - sent for arrived, sent, _ in received],
                "router_stage": [routed[i] - sent for _, sent, i in received if i in routed],
                "delivery_stage": [arrived - routed[i] for arrived, _, i in received if i in routed],
                "publish_per_s": round(total / took), "cpu": cpu, "busy": round(busy / all_ticks * 100)}

    # -- B5 --

    def b5(self) -> None:
        res = Result("B5", "peak RSS")
        router = getattr(self, "_router_rss", None)
        webhook = getattr(self, "_webhook_rss", None)
        res.figures.update(router_mb=round(router, 1) if router else None,
                           webhook_consumer_mb=round(webhook, 1) if webhook else None)
        if router:
            res.target("router MB", router, 200.0, "<=")
        if webhook:
            res.target("webhook consumer MB", webhook, 200.0, "<=")
        res.notes.append("VmHWM of the process, read just before it was stopped")
        self.results.append(res)


# -- records the benchmarks send ------------------------------------------------------


def bench_delivery(i: int, channel: str, address: str, now: datetime, run: str) -> Delivery:
    user = f"u{i % 1000}"
    text = f"Hello User {i % 1000},\n\nAcme has a Platform Engineer opening that matches you (score 91).\n"
    payload = json.dumps({"id": f"{run}-{channel}-{i}", "type": "jobs.match.found", "source": "bench",
                          "event_id": f"{run}-{i}", "time": format_time(now), "tenant": "default",
                          "recipient": user, "rule": "job-match", "priority": "normal",
                          "title": "New match: Platform Engineer at Acme", "text": text,
                          "data": {"user_id": user, "match_id": f"m{i}", "job_title": "Platform Engineer",
                                   "company": "Acme", "score": 91.0}}, separators=(",", ":"))
    return Delivery(delivery_id=f"{run}-{channel}-{i}", event_id=f"{run}-{i}", event_source="bench",
                    event_type="jobs.match.found", event_time=now, tenant="default", rule="job-match",
                    channel=channel, recipient_id=user, address=address,
                    subject="New match: Platform Engineer at Acme", text=text,
                    html=f"<p>{text}</p>" if channel == "email" else None,
                    payload=payload if channel != "email" else None,
                    created_at=now, deadline=now + timedelta(hours=1))


def webhook_request(d: Delivery) -> tuple[bytes, dict[str, str]]:
    body = (d.payload or "").encode()
    return body, {"content-type": "application/json", "webhook-id": d.delivery_id,
                  "webhook-timestamp": str(int(time.time()))}


async def raw_httpx(url: str, requests: list[tuple[bytes, dict[str, str]]], in_flight: int) -> float:
    """The baseline of B2: the same bodies posted with a bare AsyncClient at the same concurrency."""
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        queue = iter(requests)

        async def worker() -> None:
            for body, headers in queue:
                response = await client.post(url, content=body, headers=headers)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return len(requests) / (time.perf_counter() - started)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))
    return round(values[k], 1)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not infra.port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on port {port} after {timeout:.0f} s")
        time.sleep(0.05)


NGINX_CONF = """\
worker_processes 1;
pid {root}/nginx.pid;
daemon off;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 '{{"ok":true}}'; }}
    }}
}}
"""


# -- helper process roles ---------------------------------------------------------------


def relay(settings: Settings, topic: str, group: str, handle: Callable[[list[Message], BatchProducer], None]) -> int:
    """A helper role's loop until SIGTERM: what has arrived (or the first record within the poll
    timeout, as the router's loop fetches), handed to ``handle`` with the producer; then a flush
    and an offset store per batch. Under B1's backlog every fetch is a full batch."""
    consumer = Consumer(consumer_config(settings, group))
    producer = BatchProducer.create(settings)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    consumer.subscribe([topic])
    while not stop:
        messages = consumer.consume(settings.batch_size, 0)
        if not messages:
            first = consumer.poll(settings.poll_timeout)
            messages = [first] if first is not None else []
        messages = [m for m in messages if m.error() is None]
        if not messages:
            continue
        handle(messages, producer)
        producer.commit_point()
        consumer.store_offsets(offsets=next_offsets(messages))
    consumer.close()
    producer.close(5.0)
    return 0


def role_passthrough(argv: list[str]) -> int:
    """The baseline of B1: consume a batch, produce each record as is, flush, store offsets."""
    p = argparse.ArgumentParser()
    p.add_argument("--kafka", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    args = p.parse_args(argv)

    def copy(messages: list[Message], producer: BatchProducer) -> None:
        for m in messages:
            producer.send(args.output, m.value() or b"", key=m.key(), headers=m.headers())

    return relay(Settings(kafka_bootstrap=args.kafka, metrics_port=-1), args.input, args.group, copy)


FLOOR_RULE = "job_match"


def floor_context(event: Event) -> dict[str, Any]:
    """The template context of B1's floor: the router's, with a recipient made up from the subject."""
    user = event.ce.subject or ""
    return {"data": event.data, "event": event_context(event.ce),
            "recipient": {"id": user, "name": user, "locale": "en", "timezone": "UTC"},
            "rule": {"name": FLOOR_RULE, "priority": "normal"}}


def floor_records(event: Event, rendered: Rendered, channel: str, address: str, now: datetime,
                  deadline: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """One delivery of B1's floor and its "routed" status, as the plain dicts the catalog writes."""
    ce = event.ce
    user = ce.subject or ""
    fields: dict[str, Any] = {
        "delivery_id": delivery_id(ce.source, ce.id, FLOOR_RULE, user, channel),
        "event_id": ce.id, "event_source": ce.source, "event_type": ce.type, "event_time": ce.time,
        "tenant": ce.tenant, "rule": FLOOR_RULE, "channel": channel, "recipient_id": user, "address": address,
        "locale": "en", "priority": "normal", "subject": rendered.subject, "text": rendered.text,
        "html": rendered.html if channel == "email" else None, "payload": None, "created_at": now,
        "deadline": deadline, "attempt": 0, "metadata": {}, "fallback": None,
    }
    if channel == "webhook":
        fields["payload"] = webhook_payload(event, fields, rendered)
    status = {"state": State.routed, "event_id": ce.id, "event_source": ce.source, "event_type": ce.type,
              "delivery_id": fields["delivery_id"], "channel": channel, "recipient_id": user, "rule": FLOOR_RULE,
              "reason": None, "detail": None, "attempt": 0, "provider_id": None, "at": now}
    return fields, status


def role_floor(argv: list[str]) -> int:
    """B1's floor: the work no router can skip, and nothing else.

    Per event it decodes the record (CloudEvents headers, the catalog's compiled reader), renders
    the bench template's three parts, writes the two deliveries (the webhook one with its JSON
    body) and their two "routed" statuses as plain dicts through the catalog's compiled writers,
    and produces the four records to the router's topics; a flush and an offset store per batch,
    as the router does. Left out: rules, Redis (dedup claims, preferences, the recipient lookup:
    the recipient is made up from the event's subject), pydantic models, metrics.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--kafka", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--prefix", required=True, help="topic prefix of the outputs")
    p.add_argument("--group", required=True)
    p.add_argument("--webhook-url", default="http://127.0.0.1:9/", help="the webhook deliveries' address")
    args = p.parse_args(argv)
    settings = Settings(kafka_bootstrap=args.kafka, topic_prefix=args.prefix, metrics_port=-1)
    catalog = Catalog.load()
    delivery_schema = catalog.named("tidings.internal.Delivery")
    status_schema = catalog.named("tidings.internal.Status")
    renderer = Renderer(REPO / "config" / "templates")
    topics = {c: settings.deliver_topic(c) for c in ("email", "webhook")}

    def route(messages: list[Message], producer: BatchProducer) -> None:
        now = datetime.now(UTC)
        deadline = now + timedelta(seconds=settings.delivery_deadline_seconds)
        for m in messages:
            event = decode_event(catalog, m)
            rendered = renderer.render(FLOOR_RULE, floor_context(event), "en")
            user = event.ce.subject or ""
            for channel, address in (("email", f"{user}@example.com"), ("webhook", args.webhook_url)):
                fields, status = floor_records(event, rendered, channel, address, now, deadline)
                producer.send(topics[channel], catalog.encode(delivery_schema, fields, check=False),
                              key=f"{event.ce.tenant}:{user}",
                              headers=[("tidings_delivery_id", fields["delivery_id"].encode())])
                producer.send(settings.status_topic, catalog.encode(status_schema, status, check=False),
                              key=fields["delivery_id"])

    settle_heap()  # the router's collector settings (consumers/loop.py)
    return relay(settings, args.input, args.group, route)


def role_smtp_sink(argv: list[str]) -> int:
    """An SMTP server that accepts and counts every message (the sink of B3)."""
    from aiosmtpd.controller import Controller

    class Handler:
        count = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            Handler.count += 1
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=int(argv[0]))
    controller.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()
    return 0


class _LatencyReceiver(asyncio.Protocol):
    """Keep-alive HTTP/1.1 requests with a Content-Length body (what the webhook channel sends),
    each answered 200 at once. Per request it keeps the arrival time and the body's ``time`` text;
    the latencies are computed after the run, so that the receiver, which shares the machine with
    the pipeline it measures, does as little as possible while it runs."""

    def __init__(self, arrivals: list[tuple[float, bytes]]) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        buffer = self.buffer + data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end].lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:  # not what the webhook channel sends: refuse, do not guess
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\n\r\n")
                self.transport.close()
                return
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4:end + 4 + length]
            buffer = buffer[end + 4 + length:]
            self.arrivals.append((arrived, body))
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
        self.buffer = buffer


def role_latency_sink(argv: list[str]) -> int:
    """An HTTP/1.1 server answering 200 that records, per webhook, its arrival, the body's ``time``
    and ``id`` (the delivery id), all in milliseconds since the epoch but the id."""
    port, record = int(argv[0]), Path(argv[1])
    arrivals: list[tuple[float, bytes]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _LatencyReceiver(arrivals), "127.0.0.1", port)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()
        received = []
        for arrived, body in arrivals:
            with contextlib.suppress(ValueError, KeyError):
                webhook = json.loads(body)
                sent = datetime.fromisoformat(webhook["time"].replace("Z", "+00:00")).timestamp()
                received.append((arrived * 1000, sent * 1000, webhook["id"]))
        record.write_text(json.dumps(received))

    asyncio.run(main())
    return 0


# -- reporting -------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
    }


def markdown(results: list[Result], env: dict[str, Any], scale: str, took: float) -> str:
    lines = [f"# Benchmark results ({scale} scale)", "",
             f"{env['time']}, {env['cpus']} CPUs, load average before {env['load_average']}, "
             f"after {env.get('load_average_after')}; Python {env['python']}, confluent-kafka "
             f"{env['confluent_kafka']} (librdkafka {env['librdkafka']}); the run took {took:.0f} s."
             + (f" Settings given with --env: {env['settings']}." if env.get("settings") else ""), "",
             "| bench | figures | target | measured | met |", "|---|---|---|---|---|"]
    for r in results:
        figures = ", ".join(f"{k}={v}" for k, v in r.figures.items())
        met = r.met()
        if not r.targets:
            lines.append(f"| {r.name} {r.title} | {figures} | - | - | - |")
        for i, (name, (measured, bound, op)) in enumerate(r.targets.items()):
            lines.append(f"| {r.name} {r.title if i == 0 else ''} | {figures if i == 0 else ''} | "
                         f"{name} {op} {bound:g} | {measured:g} | {'yes' if met[name] else 'NO'} |")
    lines.append("")
    for r in results:
        for note in r.notes:
            lines.append(f"- {r.name}: {note}")
    return "\n".join(lines) + "\n"


def table(results: list[Result]) -> str:
    rows = [("bench", "target", "measured", "met")]
    for r in results:
        for name, (measured, bound, op) in r.targets.items():
            rows.append((r.name, f"{name} {op} {bound:g}", f"{measured:g}", "yes" if r.met()[name] else "NO"))
        if not r.targets:
            rows.append((r.name, ", ".join(f"{k}={v}" for k, v in r.figures.items()), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def run(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so that the servers and processes the bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = [x.strip().upper() for x in args.only.split(",")] if args.only else list(ALL)
    started = time.perf_counter()
    env = environment()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        work = Path(tmp)
        if args.keep_logs:
            work = Path(args.keep_logs)
            work.mkdir(parents=True, exist_ok=True)
        kafka_service = None
        kafka = args.kafka
        if kafka == "private":
            port = infra.free_port()
            kafka_service = infra.start_kafka(work / "kafka", port, infra.free_port())
            kafka = f"127.0.0.1:{port}"
        redis_service = None
        redis_url = args.redis
        if not redis_url:
            port = infra.free_port()
            redis_service = infra.start_redis(work / "redis", port)
            redis_url = f"redis://127.0.0.1:{port}/0"
        bench = Bench(args, kafka, redis_url, work)
        try:
            for name in only:
                if name in ("B5",):
                    continue
                log(f"== {name}")
                began = time.perf_counter()
                try:
                    getattr(bench, name.lower())()
                except Exception as exc:  # one broken benchmark must not lose the others' results
                    log(f"== {name} failed: {type(exc).__name__}: {exc}")
                    bench.results.append(Result(name, "failed", notes=[f"{type(exc).__name__}: {exc}"[:500]]))
                    continue
                log(f"== {name} took {time.perf_counter() - began:.0f} s")
            if "B1" in only or "B2" in only:
                bench.b5()
        finally:
            bench.procs.stop_all()
            bench.meta.close()
            with contextlib.suppress(KafkaException):
                bench.drop_topics()
            if redis_service is not None:
                redis_service.stop()
            if kafka_service is not None:
                kafka_service.stop()
    took = time.perf_counter() - started
    env["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    env["seconds"] = round(took)
    if args.env:
        env["settings"] = args.env
    order = {n: i for i, n in enumerate(("B1", "B2", "B3", "B4", "B5", "B6"))}
    results = sorted(bench.results, key=lambda r: order[r.name])
    doc = {"environment": env, "scale": args.scale, "sizes": SCALES[args.scale],
           "results": [{"name": r.name, "title": r.title, "figures": r.figures,
                        "targets": {k: {"measured": m, "bound": b, "op": op, "met": r.met()[k]}
                                    for k, (m, b, op) in r.targets.items()},
                        "notes": r.notes} for r in results]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = markdown(results, env, args.scale, took)
    for name in (f"bench-{stamp}", "latest"):
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out / f"{name}.md").write_text(text)
    print(table(results))
    print(f"\n{len(results)} result(s) in {took:.0f} s; written to {out}/latest.json and latest.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    roles = {"passthrough": role_passthrough, "floor": role_floor, "smtp-sink": role_smtp_sink,
             "latency-sink": role_latency_sink}
    if argv and argv[0] in roles:
        return roles[argv[0]](argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="standard")
    p.add_argument("--only", help="comma-separated subset of B1,B2,B3,B4,B6 (B5 comes with B1 and B2)")
    p.add_argument("--set", action="append", default=[], metavar="SIZE=N",
                   help=f"override one size of the scale ({', '.join(SCALES['full'])}); say so when quoting")
    p.add_argument("--kafka", default=os.environ.get("TIDINGS_BENCH_KAFKA", "127.0.0.1:9092"),
                   help="bootstrap servers, or 'private' for a broker of the bench's own on free ports")
    p.add_argument("--redis", default=os.environ.get("TIDINGS_BENCH_REDIS"),
                   help="Redis URL to use (default: a private redis-server on a free port)")
    p.add_argument("--env", action="append", default=[], metavar="TIDINGS_NAME=VALUE",
                   help="a setting for every tidings process the bench starts (an experiment; say so when quoting)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--keep-logs", help="directory for the processes' logs (default: a temporary one)")
    args = p.parse_args(argv)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SCALES[args.scale] or not value.isdigit():
            p.error(f"--set {item}: expected SIZE=N with SIZE one of {', '.join(SCALES[args.scale])}")
        SCALES[args.scale] = {**SCALES[args.scale], key: int(value)}
    settings: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("TIDINGS_"):
            p.error(f"--env {item}: expected TIDINGS_NAME=VALUE")
        settings[key] = value
    args.env = settings
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
