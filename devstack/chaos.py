"""The chaos suite: the whole pipeline under crashes and outages, counted at the sinks.

``make chaos`` (``python -m devstack.chaos``) starts a private Kafka broker and a
private Redis server (AOF on) of its own, never the shared ones, plus an SMTP
sink and a webhook sink in this process, and runs ``tidings router``,
``tidings deliver email`` and ``tidings deliver webhook`` as real processes.
Each scenario gets its own topics and groups, publishes its events, disturbs
the run, waits until every expected outcome is seen and then counts, by
delivery id:

* expected: deliveries the published events must produce (ids are derived the
  way the router derives them, so the set is known in advance);
* delivered: expected ids the sinks accepted at least once; lost = the rest
  (must be 0);
* duplicates: extra accepted copies of an id. The only allowed cause is the
  documented window: a channel consumer killed after the provider accepted a
  message and before its sent mark was written. A duplicate is "explained"
  when its first copy arrived before a kill of that channel's consumer and the
  next one after it;
* DLQ records: distinct dead letters (by delivery id in channel DLQs, by
  original coordinates in the router DLQ); they must equal the bad input
  exactly (poison records, a 410 endpoint, a 550 recipient). A dead letter
  written twice because a process died before committing is counted once and
  reported as ``dlq_rewrites``;
* drain time: from the end of the last disturbance to the last expected outcome.

Every event carries the traffic mix: ordinary recipients on email and webhook,
a webhook that answers 410 for good, a mailbox refused with 550 and, at 1 %,
poison records the router cannot decode.

A liveness check, as an orchestrator would do, polls each process's
``/healthz`` and restarts one that reports itself dead; every such restart is
listed in the report. The report goes to ``.local/chaos/report.json`` and
``report.md`` (``--report-dir`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from redis import Redis

from consumers.kafka import DLQ_OFFSET, DLQ_PARTITION, DLQ_TOPIC, headers_of
from consumers.publisher import Publisher
from consumers.settings import Settings
from consumers.topics import create_topics
from devstack import infra
from devstack.sinks import Reply, SmtpSink, WebhookSink
from router.recipients import Recipient, RecipientStore
from schemas import Catalog, State, Status
from schemas.errors import DecodeError
from schemas.models import delivery_id

REPO = Path(__file__).resolve().parent.parent
SOURCE = "tidings/chaos"
RULE = "chaos-match"
SECRET = "whsec_Y2hhb3Mtc3VpdGUtc2lnbmluZy1zZWNyZXQtMDEyMzQ1Ng=="  # noqa: S105 - a test key for the sink
REFUSED = "refused@example.com"
ORDINARY = 20
FLAKY_SECONDS = 30.0
RULES = f"""rules:
  - name: {RULE}
    event_type: jobs.match.found
    channels: [email, webhook]
    template: job_match
"""
ROLES = ("router", "email", "webhook")


def log(text: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} chaos: {text}", flush=True)


# ----------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Traffic:
    """What one scenario publishes and what must come of it."""

    events: int
    flaky: bool = False

    def subject(self, i: int) -> str | None:
        """The recipient of event ``i``; None for a poison record (1 %)."""
        if i % 100 == 37:
            return None
        if i % 50 == 11:
            return "u-gone"
        if i % 50 == 29:
            return "u-refused"
        if self.flaky and i % 50 == 41:
            return "u-flaky"
        return f"u-{i % ORDINARY}"

    def expected(self) -> tuple[set[str], set[str], int]:
        """(delivery ids that must be delivered, delivery ids that must be dead-lettered, poison count)."""
        good: set[str] = set()
        bad: set[str] = set()
        poison = 0
        for i in range(self.events):
            subject = self.subject(i)
            if subject is None:
                poison += 1
                continue
            for channel in ("email", "webhook"):
                ident = delivery_id(SOURCE, f"e-{i}", RULE, subject, channel)
                dead = (subject == "u-gone" and channel == "webhook") or (subject == "u-refused" and channel == "email")
                (bad if dead else good).add(ident)
        return good, bad, poison


def recipients(web: WebhookSink) -> list[Recipient]:
    out = [Recipient.model_validate({"id": f"u-{n}", "contacts": {
        "email": f"u{n}@example.com", "webhook": web.url(f"/hooks/u-{n}")}}) for n in range(ORDINARY)]
    out.append(Recipient.model_validate({"id": "u-gone", "contacts": {
        "email": "gone@example.com", "webhook": web.url("/gone")}}))
    out.append(Recipient.model_validate({"id": "u-refused", "contacts": {
        "email": REFUSED, "webhook": web.url("/hooks/u-refused")}}))
    out.append(Recipient.model_validate({"id": "u-flaky", "contacts": {
        "email": "flaky@example.com", "webhook": web.url("/flaky")}}))
    return out


# ----------------------------------------------------------------- results


@dataclass
class Result:
    scenario: str
    description: str
    events: int
    expected: int
    delivered: int
    lost: int
    duplicates: int
    duplicates_explained: int
    dlq_expected: int
    dlq_records: int
    dlq_rewrites: int
    drain_seconds: float
    run_seconds: float
    disturbances: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    explanations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.dlq_records == self.dlq_expected
                and self.duplicates == self.duplicates_explained)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ----------------------------------------------------------------- the environment


class Environment:
    """Private Kafka and Redis, the sinks, and the Tidings processes of the current scenario."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.kafka_port, self.controller_port, self.redis_port = infra.free_port(), infra.free_port(), infra.free_port()
        self.kafka: infra.Service | None = None
        self.redis: infra.Service | None = None
        self.smtp = SmtpSink(refuse=[REFUSED])
        self.web = WebhookSink(secret=SECRET, statuses={"/gone": 410})
        self.catalog = Catalog.load()
        self.config = state / "config"

    def __enter__(self) -> Environment:
        self.state.mkdir(parents=True, exist_ok=True)
        self.kafka = infra.start_kafka(self.state, self.kafka_port, self.controller_port)
        self.redis = infra.start_redis(self.state, self.redis_port)
        self.smtp.start()
        self.web.start()
        self.config.mkdir(exist_ok=True)
        (self.config / "rules.yaml").write_text(RULES)
        shutil.copytree(REPO / "config" / "templates", self.config / "templates", dirs_exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.smtp.stop()
        self.web.stop()
        for service in (self.redis, self.kafka):
            if service is not None:
                service.stop()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def restart_kafka(self, down_for: float) -> None:
        infra.kafka_service(self.state, self.kafka_port, self.controller_port).stop()
        time.sleep(down_for)
        self.kafka = infra.start_kafka(self.state, self.kafka_port, self.controller_port)

    def restart_redis(self, down_for: float) -> None:
        assert self.redis is not None
        self.redis.stop()
        time.sleep(down_for)
        self.redis = infra.start_redis(self.state, self.redis_port)  # same directory: AOF brings the data back


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    port: int
    started: float
    unhealthy: int = 0


class Run:
    """One scenario: its topics, its processes, its counting."""

    def __init__(self, env: Environment, name: str, traffic: Traffic, log_dir: Path) -> None:
        self.env = env
        self.name = name
        self.traffic = traffic
        self.log_dir = log_dir
        tag = uuid.uuid4().hex[:6]
        self.settings = Settings(
            kafka_bootstrap=env.bootstrap, redis_url=env.redis_url, topic_prefix=f"chaos-{name}-{tag}.",
            group_prefix=f"chaos-{name}-{tag}-", partitions=4, rules=env.config / "rules.yaml", metrics_port=-1,
            retry_tiers="1s,5s,15s")
        self.procs: dict[str, Proc] = {}
        self.kills: dict[str, list[int]] = {"email": [], "webhook": [], "router": []}
        self.disturbances: list[str] = []
        self.restarts: list[str] = []
        self.notes: list[str] = []
        self.explanations: list[str] = []
        self.good, self.bad, self.poison = traffic.expected()
        self._last_report = time.monotonic()
        self.smtp_base = len(env.smtp.received())
        self.web_base = len(env.web.received())

    # -- processes -------------------------------------------------------

    def environ(self, port: int) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update({
            "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "TIDINGS_REDIS_URL": s.redis_url,
            "TIDINGS_TOPIC_PREFIX": s.topic_prefix, "TIDINGS_GROUP_PREFIX": s.group_prefix,
            "TIDINGS_RULES": str(s.rules), "TIDINGS_METRICS_PORT": str(port), "TIDINGS_METRICS_HOST": "127.0.0.1",
            "TIDINGS_BATCH_SIZE": "200", "TIDINGS_SMTP_HOST": "127.0.0.1", "TIDINGS_SMTP_PORT": str(self.env.smtp.port),
            "TIDINGS_SMTP_LOCAL_HOSTNAME": "localhost", "TIDINGS_WEBHOOK_SIGNING_SECRET": SECRET,
            "TIDINGS_RETRY_TIERS": s.retry_tiers, "TIDINGS_RETRY_MAX_ATTEMPTS": "8",
            "TIDINGS_BREAKER_COOLDOWN": "5", "TIDINGS_SHUTDOWN_TIMEOUT": "15",
            "TIDINGS_WEBHOOK_ALLOW_PRIVATE": "127.0.0.0/8",  # the sink is on loopback, which the SSRF guard refuses
            # a killed member leaves its group after 6 s instead of 45 (librdkafka pass-through)
            "TIDINGS_LIBRDKAFKA_SESSION_TIMEOUT_MS": "6000", "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self, role: str) -> None:
        argv = [sys.executable, "-m", "consumers.cli", *(["router"] if role == "router" else ["deliver", role])]
        port = infra.free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{self.name}-{role}.log").open("ab") as out:
            popen = subprocess.Popen(argv, env=self.environ(port), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.procs[role] = Proc(role, popen, port, time.monotonic())

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role)

    def kill(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()
        # A sink may still record a message whose last bytes the killed process sent just before it
        # died (the server finishes the transaction on its own). Nothing restarts the role before
        # kill() returns, so waiting here lets those land before the boundary without letting a
        # re-send in.
        time.sleep(1.0)
        # Arrival index (in this scenario's records of the sink) at the kill, to explain duplicates.
        if role == "email":
            self.kills[role].append(len(self.env.smtp.received()) - self.smtp_base)
        elif role == "webhook":
            self.kills[role].append(len([h for h in self.env.web.received()[self.web_base:] if h.get("status") == 200]))
        self.disturbances.append(f"kill -9 {role} at {self.progress():.0%}")

    def terminate(self, role: str, timeout: float = 60.0) -> float:
        """SIGTERM; return the seconds it took to exit (raises if it did not exit 0 in time)."""
        proc = self.procs.pop(role)
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        code = proc.popen.wait(timeout)
        took = time.monotonic() - started
        if code != 0:
            self.notes.append(f"{role} exited with code {code} after SIGTERM")
        return took

    def stop_all(self) -> None:
        for role in list(self.procs):
            try:
                self.terminate(role)
            except subprocess.TimeoutExpired:
                self.notes.append(f"{role} did not stop within 60 s of SIGTERM; killed")
                proc = self.procs.pop(role, None)
                if proc:
                    proc.popen.kill()
                    proc.popen.wait()

    def supervise(self) -> None:
        """Restart a process that died or reports itself dead on /healthz, as an orchestrator would."""
        for role, proc in list(self.procs.items()):
            code = proc.popen.poll()
            if code is not None:
                self.restarts.append(f"{role} exited with code {code} at {self.progress():.0%}; restarted")
                self.procs.pop(role)
                self.start(role)
                continue
            if time.monotonic() - proc.started < 20:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/healthz", timeout=2) as answer:
                    healthy = answer.status == 200
            except (urllib.error.URLError, OSError):
                healthy = False
            proc.unhealthy = 0 if healthy else proc.unhealthy + 1
            if proc.unhealthy >= 3:
                self.restarts.append(f"{role} failed /healthz three times at {self.progress():.0%}; restarted")
                self.procs.pop(role)
                proc.popen.kill()
                proc.popen.wait()
                self.start(role)

    # -- traffic and observation -----------------------------------------

    def prepare(self) -> None:
        if self.traffic.flaky:
            self.env.web.replies["/flaky"] = Reply(503)
        create_topics(self.settings, ["email", "webhook"])
        redis = Redis.from_url(self.env.redis_url)
        try:
            redis.flushdb()
            RecipientStore(redis).put_many(recipients(self.env.web))
        finally:
            redis.close()

    def publish(self) -> None:
        with Publisher(self.settings, self.env.catalog) as pub:
            for i in range(self.traffic.events):
                subject = self.traffic.subject(i)
                if subject is None:
                    headers = [("ce_specversion", b"1.0"), ("ce_id", f"e-{i}".encode()),
                               ("ce_source", SOURCE.encode()), ("ce_type", b"jobs.match.found"),
                               ("content-type", b"application/avro")]
                    pub.send_raw(self.settings.input_topic, b"\x00poison\xff" + str(i).encode(), headers,
                                 key=f"poison-{i}")
                else:
                    pub.publish("jobs.match.found", {"user_id": subject, "match_id": f"m-{i}",
                                                     "job_title": "Chaos Engineer", "company": "Tidings",
                                                     "score": 90.0},
                                subject=subject, source=SOURCE, id=f"e-{i}")
                if i % 5000 == 4999:
                    pub.flush()

    def accepted(self) -> list[str]:
        """Delivery ids the sinks accepted in this scenario, in arrival order, per sink."""
        mails = [m.get("delivery_id") for m in self.env.smtp.received()[self.smtp_base:]]
        hooks = [h.get("delivery_id") for h in self.env.web.received()[self.web_base:] if h.get("status") == 200]
        return [i for i in (*mails, *hooks) if i]

    def progress(self) -> float:
        seen = set(self.accepted()) & self.good
        return len(seen) / max(len(self.good), 1)

    def report_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_report >= 15.0:
            self._last_report = now
            log(f"{self.name}: {self.progress():.0%} of {len(self.good)} deliveries accepted")

    def wait_progress(self, fraction: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.progress() < fraction:
            self.report_progress()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: progress stuck at {self.progress():.0%} (waiting for {fraction:.0%})")
            self.supervise()
            time.sleep(0.5)

    def dead_letters(self) -> tuple[int, int]:
        """(distinct dead letters, records written more than once) over the three DLQ topics."""
        distinct: set[str] = set()
        raw = 0
        topics = [self.settings.router_dlq_topic, self.settings.channel_dlq_topic("email"),
                  self.settings.channel_dlq_topic("webhook")]
        for topic in topics:
            for headers in read_headers(self.settings, topic):
                raw += 1
                if topic == self.settings.router_dlq_topic:
                    where = (headers.get(h, "") for h in (DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET))
                    distinct.add("router:" + ":".join(where))
                else:
                    distinct.add(headers.get("tidings_delivery_id", "?"))
        return len(distinct), raw - len(distinct)

    def drain(self, timeout: float) -> float:
        """Wait until every good delivery is accepted and every bad one dead-lettered; return the seconds."""
        started = time.monotonic()
        want_dlq = len(self.bad) + self.poison
        last_check = 0.0
        while True:
            done = self.good <= set(self.accepted())
            if done and time.monotonic() - last_check > 2.0:
                last_check = time.monotonic()
                if self.dead_letters()[0] >= want_dlq:
                    return time.monotonic() - started
            self.report_progress()
            if time.monotonic() - started > timeout:
                self.notes.append(f"not drained within {timeout:.0f}s")
                return time.monotonic() - started
            self.supervise()
            time.sleep(0.5)

    def result(self, description: str, drain: float, run_seconds: float) -> Result:
        time.sleep(3.0)  # let late duplicates, if any, arrive before counting
        mails = [m.get("delivery_id") for m in self.env.smtp.received()[self.smtp_base:]]
        hooks = [h.get("delivery_id") for h in self.env.web.received()[self.web_base:] if h.get("status") == 200]
        counts = Counter(i for i in (*mails, *hooks) if i)
        delivered = len(self.good & set(counts))
        extra = {i: n - 1 for i, n in counts.items() if n > 1}
        duplicates = sum(extra.values())
        by_kill = explain(mails, self.kills["email"]) + explain(hooks, self.kills["webhook"])
        left = {i for i, n in extra.items() if by_kill[i] < n}
        history = histories(self.settings, self.env.catalog, left)
        explained = sum(min(by_kill[i], n) for i, n in extra.items())
        for ident in sorted(left):
            trail = " -> ".join(f"{st.state.value}({(st.detail or st.reason or '')[:80]})" for st in history[ident])
            cause = ambiguous_retry(history[ident])
            if cause is not None:
                explained += extra[ident] - min(by_kill[ident], extra[ident])
                self.explanations.append(f"{ident}: the provider accepted a request whose answer was lost "
                                         f"({(cause.detail or '')[:100]}), so the retry was a second copy: {trail}")
            else:
                self.explanations.append(f"{ident}: NOT explained: {trail}")
        if sum(by_kill.values()):
            self.explanations.append(f"{sum(by_kill.values())} copy(ies) sent again after a consumer was killed "
                                     "between the provider accepting them and the sent marks being written")
        unexpected = set(counts) - self.good
        if unexpected:
            self.notes.append(f"{len(unexpected)} delivery id(s) accepted that were not expected")
        dlq, rewrites = self.dead_letters()
        return Result(self.name, description, self.traffic.events, len(self.good), delivered,
                      len(self.good) - delivered, duplicates, min(explained, duplicates),
                      len(self.bad) + self.poison, dlq, rewrites, round(drain, 1), round(run_seconds, 1),
                      self.disturbances, self.restarts, self.notes, self.explanations)


def explain(ids: Sequence[str | None], kills: Sequence[int]) -> Counter[str]:
    """Per delivery id, the extra copies whose first copy arrived before a kill of that sink's
    consumer and the later one after it (sent, then killed before the sent mark)."""
    first: dict[str, int] = {}
    explained: Counter[str] = Counter()
    for index, ident in enumerate(ids):
        if not ident:
            continue
        if ident not in first:
            first[ident] = index
            continue
        if any(first[ident] < boundary <= index for boundary in kills):
            explained[ident] += 1
    return explained


def histories(settings: Settings, catalog: Catalog, ids: set[str]) -> dict[str, list[Status]]:
    """The status events of each of ``ids``, oldest first."""
    found: dict[str, list[Status]] = {i: [] for i in ids}
    if not ids:
        return found
    for value in read_values(settings, settings.status_topic):
        try:
            status = Status.decode(catalog, value)
        except DecodeError:
            continue
        if status.delivery_id in found:
            found[status.delivery_id].append(status)
    for statuses in found.values():
        statuses.sort(key=lambda st: st.at)
    return found


AMBIGUOUS = ("timed out", "disconnected", "connection", "reset", "closed")


def ambiguous_retry(history: Sequence[Status]) -> Status | None:
    """A retry whose failure leaves it unknown whether the provider accepted the request
    (a timeout or a connection lost after sending): the other duplicate window."""
    for st in history:
        if st.state is State.retrying and any(word in (st.detail or "").lower() for word in AMBIGUOUS):
            return st
    return None


def read_values(settings: Settings, topic: str) -> list[bytes]:
    return [value for _, value in read_records(settings, topic)]


def read_headers(settings: Settings, topic: str) -> list[dict[str, str]]:
    return [headers for headers, _ in read_records(settings, topic)]


def read_records(settings: Settings, topic: str, timeout: float = 60.0) -> list[tuple[dict[str, str], bytes]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"chaos-probe-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    try:
        parts = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[tuple[dict[str, str], bytes]] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                if m.error() is not None:
                    continue
                out.append(({k: v.decode("utf-8", "replace") for k, v in headers_of(m)}, m.value() or b""))
                if (m.offset() or 0) + 1 >= ends.get(m.partition() or 0, 0):
                    ends.pop(m.partition() or 0, None)
        return out
    finally:
        consumer.close()


# ----------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    disturb: Callable[[Run], None]
    flaky: bool = False
    full_events: int = 5000


def kill_router(run: Run) -> None:
    for k in range(3):
        run.wait_progress(0.15 + 0.2 * k, 600)
        run.kill("router")
        run.start("router")


def kill_channel(run: Run) -> None:
    for k in range(3):
        run.wait_progress(0.15 + 0.2 * k, 600)
        run.kill("email")
        run.start("email")


def restart_broker(run: Run) -> None:
    run.wait_progress(0.3, 600)
    run.disturbances.append(f"Kafka broker stopped for 5 s at {run.progress():.0%}")
    run.env.restart_kafka(5.0)


def restart_redis(run: Run) -> None:
    run.wait_progress(0.3, 600)
    run.disturbances.append(f"Redis stopped for 5 s at {run.progress():.0%}")
    run.env.restart_redis(5.0)


def bad_endpoints(run: Run) -> None:
    run.disturbances.append("webhook /flaky answers 503 for 30 s; /gone answers 410; refused@ gets 550")
    started = time.monotonic()
    while time.monotonic() - started < FLAKY_SECONDS:
        run.supervise()
        time.sleep(0.5)
    run.env.web.replies["/flaky"] = Reply(200)


def sigterm(run: Run) -> None:
    run.wait_progress(0.3, 600)
    took = {role: run.terminate(role) for role in ROLES}
    run.disturbances.append("SIGTERM to every process at {:.0%}; exited in {}".format(
        run.progress(), ", ".join(f"{r} {t:.1f}s" for r, t in took.items())))
    run.start_all()


SCENARIOS = [
    Scenario("router-kill", "kill -9 the router three times during the run", kill_router, full_events=20000),
    Scenario("channel-kill", "kill -9 the email consumer three times while it delivers", kill_channel),
    Scenario("broker-restart", "restart the Kafka broker in the middle of the run", restart_broker),
    Scenario("redis-restart", "restart Redis (AOF on) in the middle of the run", restart_redis),
    Scenario("bad-endpoints", "webhook 503 for 30 s then 200, a 410 endpoint, an SMTP 550 recipient",
             bad_endpoints, flaky=True),
    Scenario("poison", "1 % poison records interleaved, nothing else disturbed", lambda run: None),
    Scenario("sigterm", "SIGTERM to every process under load, then a restart", sigterm),
]


def run_scenario(env: Environment, scenario: Scenario, events: int, log_dir: Path,
                 drain_timeout: float = 900.0) -> Result:
    run = Run(env, scenario.name, Traffic(events, flaky=scenario.flaky), log_dir)
    log(f"{scenario.name}: {events} events: {scenario.description}")
    started = time.monotonic()
    run.prepare()
    run.publish()
    run.start_all()
    try:
        scenario.disturb(run)
        drain = run.drain(drain_timeout)
        result = run.result(scenario.description, drain, time.monotonic() - started)
    finally:
        run.stop_all()
    log(f"{scenario.name}: {'ok' if result.ok else 'FAILED'}: expected {result.expected}, "
        f"lost {result.lost}, duplicates {result.duplicates}, dlq {result.dlq_records}/{result.dlq_expected}, "
        f"drained in {result.drain_seconds}s")
    return result


# ----------------------------------------------------------------- reports


def markdown(results: Sequence[Result], meta: dict[str, Any]) -> str:
    lines = [
        "# Chaos report", "",
        f"{meta['started']} on {meta['machine']}, command `{meta['command']}`.", "",
        "| scenario | events | expected | delivered | lost | duplicates (explained) | DLQ (expected) "
        "| DLQ rewrites | drain s | run s | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.scenario} | {r.events} | {r.expected} | {r.delivered} | {r.lost} | "
                     f"{r.duplicates} ({r.duplicates_explained}) | {r.dlq_records} ({r.dlq_expected}) | "
                     f"{r.dlq_rewrites} | {r.drain_seconds} | {r.run_seconds} | {'yes' if r.ok else 'NO'} |")
    lines += ["", "## What happened", ""]
    for r in results:
        lines.append(f"* **{r.scenario}**: {r.description}.")
        lines.extend(f"  * {d}" for d in r.disturbances)
        lines.extend(f"  * supervisor: {d}" for d in r.restarts)
        lines.extend(f"  * note: {d}" for d in r.notes)
        if r.duplicates:
            lines.append(f"  * {r.duplicates} duplicate(s), {r.duplicates_explained} explained:")
            lines.extend(f"    * {e}" for e in r.explanations)
        if r.dlq_rewrites:
            lines.append(f"  * {r.dlq_rewrites} dead letter(s) written twice: a process died after producing them and "
                         "before committing its input; counted once.")
    lines += ["", "Counting: by delivery id at the sinks; DLQ records distinct by delivery id (channel DLQs) "
              "or original coordinates (router DLQ). See `devstack/chaos.py`.", ""]
    return "\n".join(lines)


def write_reports(results: Sequence[Result], report_dir: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    as_json = report_dir / "report.json"
    as_md = report_dir / "report.md"
    as_json.write_text(json.dumps({**meta, "ok": all(r.ok for r in results),
                                   "scenarios": [r.as_dict() for r in results]}, indent=2) + "\n")
    as_md.write_text(markdown(results, meta))
    return as_json, as_md


def run_suite(names: Sequence[str] | None, events: int | None, report_dir: Path, state: Path,
              command: str = "") -> list[Result]:
    chosen = [s for s in SCENARIOS if not names or s.name in names]
    unknown = set(names or ()) - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(s.name for s in SCENARIOS)}")
    meta = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "command": command,
            "machine": f"{platform.node()} ({os.cpu_count()} cpu, Python {platform.python_version()})"}
    results: list[Result] = []
    with Environment(state) as env:
        for scenario in chosen:
            results.append(run_scenario(env, scenario, events or scenario.full_events, report_dir / "logs"))
            write_reports(results, report_dir, meta)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devstack.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("scenarios", nargs="*", help=f"which to run (default all): {', '.join(s.name for s in SCENARIOS)}")
    p.add_argument("--events", type=int, help="events per scenario (default: 20000 for router-kill, 5000 otherwise)")
    p.add_argument("--report-dir", type=Path, default=REPO / ".local" / "chaos")
    args = p.parse_args(argv)
    state = Path(os.environ.get("TIDINGS_CHAOS_STATE", "")) if os.environ.get("TIDINGS_CHAOS_STATE") else None
    state = state or args.report_dir / f"state-{uuid.uuid4().hex[:6]}"
    command = " ".join(["python -m devstack.chaos", *(argv if argv is not None else sys.argv[1:])])

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the finally blocks that stop every server we started

    signal.signal(signal.SIGTERM, interrupted)
    try:
        results = run_suite(args.scenarios, args.events, args.report_dir, state, command)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    log(f"reports: {args.report_dir / 'report.json'}, {args.report_dir / 'report.md'}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
