"""``make run`` and ``make demo``: the whole pipeline on one machine.

Starts (or reuses) local Kafka and Redis, creates the topics, loads the demo
recipients, starts the local SMTP sink and webhook receiver, the router and
the email, webhook and in-app consumers and the inbox server, the Slack, Discord,
Telegram, Teams and SMS consumers against a local stand-in that speaks those
providers' APIs (:mod:`devstack.providers`), then publishes ``config/demo-events.yaml``.

* ``run``: prints each delivery as it lands, until Ctrl-C.
* ``demo``: waits until every expected outcome is observed at the sinks and in
  the dead-letter topics, prints one summary line and exits 0, or exits 1
  naming what was missing or unexpected.

Either way it stops exactly what it started, Kafka and Redis included when it
was the one that started them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, TopicPartition

from consumers.kafka import headers_of
from consumers.publisher import Publisher
from consumers.settings import Settings
from devstack import infra
from schemas import Catalog, CloudEvent, Delivery
from schemas.errors import DecodeError

REPO = infra.REPO
SMTP_PORT = int(os.environ.get("TIDINGS_DEMO_SMTP_PORT", "2525"))
HTTP_PORT = int(os.environ.get("TIDINGS_DEMO_HTTP_PORT", "8025"))
INBOX_PORT = int(os.environ.get("TIDINGS_DEMO_INBOX_PORT", "8070"))
INBOX_SECRET = "demo-inbox-token-secret-not-for-production"  # noqa: S105 - a published demo value
INBOX_USERS = ("u-ada", "u-grace")  # the demo recipients who get an inapp contact
INBOX_RULES = ("job-match", "application-status")  # the demo rules that also notify in-app
INBOX_ACTIONS = {  # the link each in-app entry offers (a rule's `action`)
    "job-match": {"url": "/matches/{{ match_id }}", "label": "View {{ job_title }}"},
    "application-status": {"url": "/applications/{{ application_id }}", "label": "Open the application"},
}
INAPP_METRICS_PORT = 9420
PROVIDERS_PORT = int(os.environ.get("TIDINGS_DEMO_PROVIDERS_PORT", "8026"))
CHAT_CHANNELS = ("slack", "discord", "telegram", "teams", "sms")
CHAT_METRICS_PORTS = dict(zip(CHAT_CHANNELS, range(9403, 9408), strict=True))
CHAT_RULES = {"system-alert": CHAT_CHANNELS, "job-match": ("telegram", "sms")}
"""The demo rules that also notify on the chat and SMS channels (added in write_demo_config)."""
CHAT_CONTACTS = {
    "oncall": {
        "slack": "https://hooks.slack.com/services/T0DEMO/B0ONCALL/oncallroomsecret",
        "discord": "https://discord.com/api/webhooks/1100000000000000001/oncall-room-token",
        "telegram": "@oncall_room",
        "teams": "https://demo.webhook.office.com/webhookb2/demo@tenant/IncomingWebhook/oncall/room",
        "sms": "+15550100100",
    },
    "u-ada": {"telegram": "@ada_lovelace", "sms": "+447700900123"},
    "u-edsger": {"sms": "+31612345678"},
}
"""Chat and SMS contact points of the demo recipients; the stand-in answers Edsger's number as
unsubscribed (Twilio's 21610), so that delivery is dead-lettered."""
UNSUBSCRIBED = "+31612345678"
SECRET = "whsec_" + "ZGVtby1zaWduaW5nLXNlY3JldC1ub3QtZm9yLXByb2R1Y3Rpb24="
REFUSED = "edsger@refused.example.com"
GONE_PATH = "/gone/edsger"
SOURCE = "tidings/demo"
CATALOG = Catalog.load()


@dataclass
class Stack:
    state: Path
    started: list[infra.Service] = field(default_factory=list)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TIDINGS_KAFKA_BOOTSTRAP": os.environ.get("TIDINGS_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            "TIDINGS_REDIS_URL": os.environ.get("TIDINGS_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "TIDINGS_RULES": str(self.state / "demo-config" / "rules.yaml"),  # see write_demo_config
            "TIDINGS_TEMPLATES": str(REPO / "config" / "templates"),
            "TIDINGS_SMTP_HOST": "127.0.0.1",
            "TIDINGS_SMTP_PORT": str(SMTP_PORT),
            "TIDINGS_SMTP_LOCAL_HOSTNAME": "localhost",
            "TIDINGS_WEBHOOK_SIGNING_SECRET": SECRET,
            "TIDINGS_INBOX_SECRET": INBOX_SECRET,
            "TIDINGS_INBOX_PORT": str(INBOX_PORT),
            "TIDINGS_WEBHOOK_ALLOW_PRIVATE": "127.0.0.0/8",  # the local receiver; the SSRF guard refuses loopback
            "TIDINGS_SMTP_ATTACHMENT_ALLOW_PRIVATE": "127.0.0.0/8",  # attachment URLs on the local file server
            **provider_env(),
            "TIDINGS_BATCH_SIZE": "200",
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, name: str, argv: list[str], *, port: int | None = None,
              inherit_stdout: bool = False) -> None:
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = self.env()
        if port is not None:
            env["TIDINGS_METRICS_PORT"] = str(port)
        log = (logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=None if inherit_stdout else log, stderr=log,
                                start_new_session=True)
        self.procs.append((name, proc))

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.state / "logs" / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{name} exited with {proc.returncode}; end of its log:\n{tail}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for service in reversed(self.started):
            service.stop()


def up(stack: Stack) -> None:
    kafka = infra.kafka_service(stack.state)
    redis = infra.Service("redis", stack.state, 6379)
    if redis.pid() is None:
        stack.started.append(infra.start_redis(stack.state, 6379))
    if kafka.pid() is None:
        stack.started.append(infra.start_kafka(stack.state, 9092, 9093))


def tidings(*args: str) -> list[str]:
    return [sys.executable, "-m", "consumers.cli", *args]


def load_events() -> list[dict[str, Any]]:
    events = yaml.safe_load((REPO / "config" / "demo-events.yaml").read_text())["events"]
    return list(events)


def expected(events: list[dict[str, Any]]) -> Counter[str]:
    want: Counter[str] = Counter()
    for ev in events:
        for channel, outcome in (ev.get("expect") or {}).items():
            want[f"{channel}:{outcome}"] += 1
    return want


def dlq_ends(env: dict[str, str], topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": env["TIDINGS_KAFKA_BOOTSTRAP"], "group.id": "tidings-demo-probe"})
    try:
        out: dict[tuple[str, int], int] = {}
        meta = c.list_topics(timeout=10)
        for t in topics:
            for p in meta.topics[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


def count_new(env: dict[str, str], start: dict[tuple[str, int], int]) -> Counter[str]:
    now = dlq_ends(env, sorted({t for t, _ in start}))
    counts: Counter[str] = Counter()
    for (topic, part), end in now.items():
        counts[topic] += end - start.get((topic, part), 0)
    return counts


def publish(env: dict[str, str], events: list[dict[str, Any]], run_id: str) -> int:
    n = 0
    with Publisher(Settings(kafka_bootstrap=env["TIDINGS_KAFKA_BOOTSTRAP"]), CATALOG) as pub:
        for ev in events:
            ident = f"{ev['id']}-{run_id}"
            if ev.get("raw"):
                ce = CloudEvent.new(ev["type"], source=SOURCE, subject=ev.get("subject"), id=ident)
                pub.send_raw(pub.settings.input_topic, b"this is not an avro record", ce.to_headers(),
                             key=ev.get("subject"))
            else:
                pub.publish(ev["type"], ev["data"], subject=ev.get("subject"), source=SOURCE, id=ident)
            n += 1
    return n


def sink_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo")
    parser.add_argument("mode", choices=["run", "demo"])
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    state = Path(os.environ.get("TIDINGS_STATE", REPO / ".local"))
    state.mkdir(parents=True, exist_ok=True)
    stack = Stack(state)
    record = state / f"sinks-{uuid.uuid4().hex[:8]}.jsonl"
    interrupted = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        up(stack)
        env = stack.env()
        subprocess.run(tidings("topics", "create"), env=env, check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
        recipients = write_demo_config(state)
        subprocess.run(tidings("recipients", "load", str(recipients)),
                       env=env, check=True, cwd=REPO)
        stack.start("sinks", [sys.executable, "-m", "devstack.sinks", "--smtp-port", str(SMTP_PORT),
                              "--http-port", str(HTTP_PORT), "--secret", SECRET, "--record", str(record),
                              "--refuse", REFUSED, "--status", f"{GONE_PATH}=410",
                              "--providers-port", str(PROVIDERS_PORT), "--fault", f"{UNSUBSCRIBED}=gone"],
                    inherit_stdout=False)
        stack.start("router", tidings("router"), port=9400)
        stack.start("deliver-email", tidings("deliver", "email"), port=9401)
        stack.start("deliver-webhook", tidings("deliver", "webhook"), port=9402)
        stack.start("deliver-inapp", tidings("deliver", "inapp"), port=INAPP_METRICS_PORT)
        stack.start("inbox", tidings("inbox", "serve"))
        for channel, port in CHAT_METRICS_PORTS.items():
            stack.start(f"deliver-{channel}", tidings("deliver", channel), port=port)
        _wait_ready([9400, 9401, 9402, INAPP_METRICS_PORT, *CHAT_METRICS_PORTS.values()], stack, timeout=90)
        _wait_inbox(stack, timeout=30)

        events = load_events()
        want = expected(events)
        dlq_topics = ["tidings.router.dlq", "tidings.deliver.email.dlq", "tidings.deliver.webhook.dlq",
                      *(f"tidings.deliver.{channel}.dlq" for channel in CHAT_CHANNELS)]
        start_offsets = dlq_ends(env, dlq_topics)
        run_id = uuid.uuid4().hex[:8]
        published = publish(env, events, run_id)
        if args.mode == "run":
            print(f"published {published} demo events; deliveries print below as they land "
                  f"(Ctrl-C stops everything). Metrics: http://127.0.0.1:9400/metrics", flush=True)
            print(f"Inbox page for u-ada (bell, live updates): {inbox_url('u-ada')}", flush=True)
            shown: set[str] = set()
            people = contact_owners(recipients)
            printed = 0
            reader = dead_letter_reader(env, start_offsets)
            try:
                while not interrupted:
                    stack.check_alive()
                    records = sink_records(record)
                    for rec in records[printed:]:
                        print(describe(rec, people), flush=True)
                    printed = len(records)
                    for line in dead_letters(reader):
                        print(line, flush=True)
                    for line in inbox_lines(run_id, shown):
                        print(line, flush=True)
            finally:
                reader.close()
            return 0

        deadline = time.monotonic() + args.timeout
        seen: Counter[str] = Counter()
        while time.monotonic() < deadline and not interrupted:
            stack.check_alive()
            seen = observe(record, env, start_offsets)
            seen.update(inbox_counts(run_id))
            if all(seen[k] >= v for k, v in want.items()):
                break
            time.sleep(0.5)
        time.sleep(2.0)  # settle: anything extra that was going to arrive, arrives
        seen = observe(record, env, start_offsets)
        seen.update(inbox_counts(run_id))
        took = time.monotonic() - started
        delivered = sum(v for k, v in seen.items() if k.endswith(":delivered"))
        dead = sum(v for k, v in seen.items() if k.endswith(":dead_lettered"))
        dupes = seen.pop("duplicates", 0)
        ok = seen == want and dupes == 0
        print(f"demo: {published} events published, {delivered} deliveries delivered, "
              f"{dead} dead-lettered, {took:.1f}s; "
              + ("every expected outcome observed" if ok else "MISMATCH"))
        if not ok:
            for key in sorted(set(want) | set(seen)):
                if want[key] != seen[key]:
                    print(f"  {key}: expected {want[key]}, observed {seen[key]}")
            if dupes:
                print(f"  duplicate deliveries at the sinks: {dupes}")
        return 0 if ok else 1
    except (infra.InfraError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        record.unlink(missing_ok=True)



def describe(rec: dict[str, Any], people: dict[str, str]) -> str:
    """One line per delivery that landed: user, channel, subject."""
    kind = rec.get("kind")
    if kind == "email":
        to = (rec.get("to") or ["?"])[0]
        files = rec.get("attachments") or []
        extra = "".join(f"  [+ {f['filename']}, {f['size'] // 1024} KB]" for f in files)
        return f"{people.get(to, to):10} email    {rec.get('subject')}{extra}"
    if kind in CHAT_CHANNELS:
        who = people.get(f"{kind}:{rec.get('target')}", "?")
        status = rec.get("status")
        ok = status is not None and 200 <= status < 300 and not rec.get("fault")
        note = "" if ok else f"  [answered {status}: will be dead-lettered]"
        return f"{who:10} {kind:8} {rec.get('title')}{note}"
    raw = rec.get("body")
    body: dict[str, Any] = raw if isinstance(raw, dict) else {}
    status = rec.get("status")
    note = "" if status and 200 <= status < 300 else f"  [answered {status}: will be dead-lettered]"
    return f"{body.get('recipient', '?'):10} webhook  {body.get('title')}{note}"


def dead_letter_reader(env: dict[str, str], start: dict[tuple[str, int], int]) -> Consumer:
    """A group-less reader of the dead-letter topics from where this run began."""
    consumer = Consumer({"bootstrap.servers": env["TIDINGS_KAFKA_BOOTSTRAP"], "group.id": "tidings-demo-dlq",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    return consumer


def dead_letters(consumer: Consumer) -> list[str]:
    """One line per new dead letter: who, which channel (or the router), and why."""
    lines = []
    for msg in consumer.consume(100, 0.3):
        if msg.error() is not None:
            continue
        headers = {k: v.decode(errors="replace") for k, v in headers_of(msg)}
        why = f"[dead-lettered: {headers.get('tidings_dlq_reason')}: {headers.get('tidings_dlq_message', '')[:90]}]"
        if (msg.topic() or "").endswith("router.dlq"):
            lines.append(f"{headers.get('ce_subject', '?'):10} router   {why}")
            continue
        try:
            delivery = Delivery.decode(CATALOG, msg.value())
        except DecodeError:
            lines.append(f"{'?':10} ?        {why}")
            continue
        lines.append(f"{delivery.recipient_id:10} {delivery.channel:8} {why}")
    return lines


def observe(record: Path, env: dict[str, str], start: dict[tuple[str, int], int]) -> Counter[str]:
    seen: Counter[str] = Counter()
    ids: Counter[str] = Counter()
    for rec in sink_records(record):
        status = rec.get("status", 250) if rec.get("kind") != "email" else 250
        if status is None or (not 200 <= status < 300 and rec.get("kind") != "email") or rec.get("fault"):
            continue
        seen[f"{rec['kind']}:delivered"] += 1
        if rec.get("delivery_id"):
            ids[str(rec["delivery_id"])] += 1
    dupes = sum(n - 1 for n in ids.values() if n > 1)
    if dupes:
        seen["duplicates"] = dupes
    new = count_new(env, start)
    for topic, n in new.items():
        if n:
            channel = "router" if topic.endswith("router.dlq") else topic.split(".")[-2]
            seen[f"{channel}:dead_lettered"] += n
    return seen


def provider_env() -> dict[str, str]:
    """Point every chat and SMS channel at the local stand-in, with the credentials it expects."""
    from devstack.providers import TELEGRAM_TOKEN, TWILIO_ACCOUNT, TWILIO_TOKEN

    base = f"http://127.0.0.1:{PROVIDERS_PORT}"
    return {
        "TIDINGS_SLACK_BASE_URL": base,
        "TIDINGS_DISCORD_BASE_URL": base,
        "TIDINGS_TEAMS_BASE_URL": base,
        "TIDINGS_TELEGRAM_BASE_URL": base,
        "TIDINGS_TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
        "TIDINGS_SMS_BASE_URL": base,
        "TIDINGS_SMS_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TIDINGS_SMS_AUTH_TOKEN": TWILIO_TOKEN,
        "TIDINGS_SMS_FROM": "+15550009999",
    }


def contact_owners(recipients: Path) -> dict[str, str]:
    """Who is behind each email address and provider target, for the lines ``make run`` prints."""
    from devstack.providers import target_of

    owners: dict[str, str] = {}
    for person in yaml.safe_load(recipients.read_text())["recipients"]:
        for channel, address in (person.get("contacts") or {}).items():
            key = address if channel == "email" else f"{channel}:{target_of(channel, address)}"
            owners[key] = person["id"]
    return owners


def write_demo_config(state: Path) -> Path:
    """The demo's rules and recipients: ``config/`` plus the in-app channel; returns the recipients file.

    ``config/rules.yaml`` and ``config/recipients.yaml`` stay as the tests know them; the demo
    adds ``inapp`` to :data:`INBOX_RULES` and an ``inapp`` contact to :data:`INBOX_USERS`.
    """
    target = state / "demo-config"
    target.mkdir(parents=True, exist_ok=True)
    rules = yaml.safe_load((REPO / "config" / "rules.yaml").read_text())
    for rule in rules["rules"]:
        if rule["name"] in INBOX_RULES and "inapp" not in rule["channels"]:
            rule["channels"].append("inapp")
            rule.setdefault("action", INBOX_ACTIONS[rule["name"]])
        for channel in CHAT_RULES.get(rule["name"], ()):
            if channel not in rule["channels"]:
                rule["channels"].append(channel)
    (target / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False, allow_unicode=True))
    people = yaml.safe_load((REPO / "config" / "recipients.yaml").read_text())
    for person in people["recipients"]:
        if person["id"] in INBOX_USERS:
            person.setdefault("contacts", {})["inapp"] = "on"
        person.setdefault("contacts", {}).update(CHAT_CONTACTS.get(person["id"], {}))
    path = target / "recipients.yaml"
    path.write_text(yaml.safe_dump(people, sort_keys=False, allow_unicode=True))
    return path


def inbox_token(user: str) -> str:
    from channels.inapp.tokens import mint

    return mint(INBOX_SECRET, "default", user, int(time.time()) + 12 * 3600)


def inbox_url(user: str) -> str:
    return f"http://127.0.0.1:{INBOX_PORT}/#token={inbox_token(user)}"


def inbox_items(user: str, run_id: str) -> list[dict[str, Any]]:
    """This run's entries in a user's inbox, read through the inbox API (as the page does)."""
    import httpx

    try:
        answer = httpx.get(f"http://127.0.0.1:{INBOX_PORT}/api/inbox", params={"limit": 100}, timeout=5,
                           headers={"authorization": f"Bearer {inbox_token(user)}"})
        answer.raise_for_status()
    except httpx.HTTPError:
        return []
    items: list[dict[str, Any]] = answer.json()["items"]
    return [i for i in items if str(i.get("event_id", "")).endswith(f"-{run_id}")]


def inbox_counts(run_id: str) -> Counter[str]:
    return Counter({"inapp:delivered": sum(len(inbox_items(u, run_id)) for u in INBOX_USERS)})


def inbox_lines(run_id: str, shown: set[str]) -> list[str]:
    """One line per inbox entry of this run not printed yet."""
    lines = []
    for user in INBOX_USERS:
        for item in reversed(inbox_items(user, run_id)):
            if item["id"] not in shown:
                shown.add(item["id"])
                url = item.get("action_url")
                link = f"  [{item.get('action_label') or 'Open'}: {url}]" if url else ""
                lines.append(f"{user:10} inapp    {item['title']}{link}")
    return lines


def _wait_inbox(stack: Stack, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{INBOX_PORT}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the inbox server did not answer on port {INBOX_PORT} within {timeout:.0f}s")


def _wait_ready(ports: list[int], stack: Stack, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        stack.check_alive()
        for port in list(pending):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        pending.remove(port)
            except OSError:
                pass
        time.sleep(0.3)
    if pending:
        raise RuntimeError(f"consumers on ports {pending} not ready within {timeout:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
