"""The ``tidings`` command, run as a real process against real Kafka and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from redis import Redis

from consumers.settings import Settings
from consumers.topics import create_topics
from devstack import infra
from schemas import Catalog, State, Status

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, unique: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return {
        **clean,
        "TIDINGS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TIDINGS_REDIS_URL": redis_url,
        "TIDINGS_TOPIC_PREFIX": f"c{unique}.",
        "TIDINGS_GROUP_PREFIX": f"c{unique}-",
        "TIDINGS_RULES": str(REPO / "config" / "rules.yaml"),
        "TIDINGS_PARTITIONS": "2",
    }


def tidings(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def end_offsets(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_topics_create_is_idempotent(env: dict[str, str], unique: str) -> None:
    first = tidings(env, "topics", "create")
    assert first.returncode == 0, first.stderr
    assert f"created  c{unique}.events" in first.stdout
    assert f"created  c{unique}.deliver.email.dlq" in first.stdout
    second = tidings(env, "topics", "create")
    assert second.returncode == 0
    assert "created" not in second.stdout and f"exists   c{unique}.status" in second.stdout


def test_publish_sends_a_cloudevent_and_refuses_bad_data(env: dict[str, str], kafka_bootstrap: str,
                                                         unique: str) -> None:
    assert tidings(env, "topics", "create").returncode == 0
    topic = f"c{unique}.events"
    bad = tidings(env, "publish", "jobs.match.found", "--subject", "u-1",
                  "--data", json.dumps({"user_id": "u-1", "match_id": "m", "job_title": "t",
                                        "company": "c", "score": "very high"}))
    assert bad.returncode == 2
    assert "field 'score' does not fit type double" in bad.stderr
    missing = tidings(env, "publish", "jobs.match.found", "--data", json.dumps({"user_id": "u-1"}))
    assert missing.returncode == 2 and "missing required field 'match_id'" in missing.stderr
    not_json = tidings(env, "publish", "system.alert", "--data", "{nope")
    assert not_json.returncode == 2 and "--data is not valid JSON" in not_json.stderr
    unknown = tidings(env, "publish", "no.such.type", "--data", "{}")
    assert unknown.returncode == 2 and "no schema declares event type 'no.such.type'" in unknown.stderr
    assert end_offsets(kafka_bootstrap, topic) == 0  # nothing was sent

    ok = tidings(env, "publish", "system.alert", "--subject", "oncall", "--source", "tests/cli",
                 "--id", "alert-7", "--tenant", "acme",
                 "--data", json.dumps({"severity": "critical", "component": "db", "message": "down"}))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"id": "alert-7", "source": "tests/cli", "type": "system.alert",
                                     "subject": "oncall", "tenant": "acme"}
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"probe-{unique}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    try:
        msg = None
        deadline = time.monotonic() + 30
        while msg is None and time.monotonic() < deadline:
            msg = c.poll(0.5)
        assert msg is not None and msg.error() is None
        headers = {k: v.decode() for k, v in msg.headers() or []}
        assert headers["ce_id"] == "alert-7" and headers["ce_type"] == "system.alert"
        assert headers["ce_subject"] == "oncall" and headers["ce_tenant"] == "acme"
        assert headers["content-type"] == "application/avro"
        assert msg.key() == b"acme:oncall"
        _, data = Catalog.load().decode(msg.value())
        assert data == {"severity": "critical", "component": "db", "message": "down"}
    finally:
        c.close()


def test_recipients_load_is_all_or_nothing(env: dict[str, str], redis_client: Redis, tmp_path: Path) -> None:
    good = tidings(env, "recipients", "load", str(REPO / "config" / "recipients.yaml"))
    assert good.returncode == 0, good.stderr
    assert "loaded 5 recipient(s)" in good.stdout
    before = sorted(redis_client.keys("*"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
recipients:
  - id: u-new
    contacts: {email: new@example.com}
  - id: u-ada
    name: Changed
  - id: u-broken
    timezone: Mars/Olympus_Mons
""")
    result = tidings(env, "recipients", "load", str(bad))
    assert result.returncode == 2
    assert "entry #3 (id 'u-broken'): timezone" in result.stderr
    assert "not an IANA time zone" in result.stderr
    assert sorted(redis_client.keys("*")) == before
    shown = tidings(env, "recipients", "get", "u-ada")
    assert json.loads(shown.stdout)["name"] == "Ada Lovelace"
    listed = tidings(env, "recipients", "list")
    assert listed.stdout.split() == ["oncall", "u-ada", "u-edsger", "u-grace", "u-kurt"]


def test_status_prints_the_history_of_an_id(env: dict[str, str], kafka_bootstrap: str, unique: str) -> None:
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"c{unique}.")
    create_topics(settings, ["email"], partitions=2)
    catalog = Catalog.load()
    from consumers.kafka import BatchProducer

    producer = BatchProducer.create(settings)
    common = {"event_id": "e-1", "event_source": "s", "event_type": "jobs.match.found",
              "delivery_id": "d-1", "channel": "email", "recipient_id": "u-1"}
    producer.send(settings.status_topic, Status(state=State.routed, **common).encode(catalog), key="d-1")
    producer.send(settings.status_topic, Status(state=State.delivered, attempt=1, **common).encode(catalog),
                  key="d-1")
    producer.commit_point()
    out = tidings(env, "status", "d-1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert "routed" in lines[0] and "delivered" in lines[1] and "email->u-1" in lines[1]
    assert tidings(env, "status", "nothing-here").returncode == 1


def test_deliver_serves_probes_and_stops_cleanly_on_sigterm(env: dict[str, str], kafka_bootstrap: str) -> None:
    assert tidings(env, "topics", "create").returncode == 0
    port = infra.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "consumers.cli", "deliver", "webhook"],
                            env={**env, "TIDINGS_METRICS_PORT": str(port)}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.2)
        assert ready, "consumer never became ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
        assert "tidings_deliveries_total" in text or "# TYPE tidings_deliveries counter" in text
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
        _, err = proc.communicate()
        assert "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_missing_topic_is_a_clear_start_error(env: dict[str, str]) -> None:
    out = tidings({**env, "TIDINGS_TOPIC_PREFIX": "never-created."}, "deliver", "email")
    assert out.returncode == 2
    assert "missing topic(s): never-created.deliver.email" in out.stderr
    assert "tidings topics create" in out.stderr


def test_an_unknown_channel_is_a_clear_start_error(env: dict[str, str]) -> None:
    out = tidings(env, "deliver", "pigeon")
    assert out.returncode == 2 and "pigeon" in out.stderr


def test_check_validates_the_demo_config(env: dict[str, str]) -> None:
    out = tidings(env, "check")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: 5 rule(s), 5 template(s), 4 event type(s)")


def test_config_masks_secrets(env: dict[str, str]) -> None:
    out = tidings({**env, "TIDINGS_SMTP_PASSWORD": "hunter2", "TIDINGS_WEBHOOK_SIGNING_SECRET": "whsec_c2VjcmV0",
                   "TIDINGS_REDIS_URL": "redis://:pa55word@127.0.0.1:1/0",
                   "TIDINGS_LIBRDKAFKA_SASL_PASSWORD": "kafkapw"}, "config")
    assert out.returncode == 0
    for secret in ("hunter2", "c2VjcmV0", "pa55word", "kafkapw"):
        assert secret not in out.stdout
    assert json.loads(out.stdout)["librdkafka"] == {"sasl.password": "***"}


def test_infra_names_the_missing_prerequisite(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "devstack.infra", "fetch"], cwd=REPO, capture_output=True,
                         text=True, env={"PATH": str(tmp_path), "HOME": str(tmp_path)}, check=False)
    assert out.returncode == 2
    assert "java not found on PATH" in out.stderr and "apt-get install" in out.stderr


def test_a_rule_for_an_event_type_without_a_schema_stops_the_router_at_start(env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: r, event_type: orders.shipped, channels: [email], template: job_match}\n")
    (tmp_path / "templates").symlink_to(REPO / "config" / "templates")
    out = tidings({**env, "TIDINGS_RULES": str(rules)}, "router")
    assert out.returncode == 2
    assert "no schema in schemas/ for event type(s) orders.shipped" in out.stderr
