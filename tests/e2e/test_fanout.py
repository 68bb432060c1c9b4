"""A fan-out to 100,000 subscribers survives SIGKILL half way: it resumes, it does not start over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from router import keys
from router.recipients import Recipient, RecipientStore
from router.subscriptions import SubscriptionStore
from schemas.models import event_key

from .conftest import Pipeline, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SUBSCRIBERS = 100_000
PAGE = 2_000
SOURCE = "tests/e2e/fanout"


def _router(pipeline: Pipeline, log: Path) -> subprocess.Popen[bytes]:
    s = pipeline.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update({
        "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "TIDINGS_REDIS_URL": s.redis_url,
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix, "TIDINGS_GROUP_PREFIX": s.group_prefix,
        "TIDINGS_RULES": str(s.rules), "TIDINGS_FANOUT_PAGE_SIZE": str(PAGE), "TIDINGS_METRICS_PORT": "-1",
        "TIDINGS_POLL_TIMEOUT": "0.2",
        # A killed member is noticed after this, not the default 45 s.
        "TIDINGS_LIBRDKAFKA_SESSION_TIMEOUT_MS": "6000",
    })
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "consumers.cli", "router"], env=env, cwd=REPO,
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)


def _delivery_ids(pipeline: Pipeline, topic: str) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": pipeline.settings.kafka_bootstrap, "group.id": "probe-fanout",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ids: list[bytes] = []
        pending = {p for p, end in ends.items() if end > 0}
        while pending:
            for m in consumer.consume(5000, 1.0):
                if m.error() is not None:
                    continue
                ids.append(dict(m.headers() or [])["tidings_delivery_id"])
                if m.offset() + 1 >= ends[m.partition()]:
                    pending.discard(m.partition())
        return ids
    finally:
        consumer.close()


@pytest.mark.timeout(900)
def test_fan_out_to_100k_subscribers_resumes_from_its_checkpoint_after_sigkill(
        pipeline: Pipeline, tmp_path: Path) -> None:
    config = pipeline.config_dir
    (config / "templates" / "tiny").mkdir()
    (config / "templates" / "tiny" / "subject.j2").write_text("{{ data.job_title }} at {{ data.company }}\n")
    # No reference to the recipient: rendered once per page and locale (router/templates.py).
    (config / "templates" / "tiny" / "text.j2").write_text("A new post from {{ data.company }}.\n")
    pipeline.settings.rules.write_text(yaml.safe_dump({"rules": [{
        "name": "company-news", "event_type": "jobs.match.found", "channels": ["email"], "template": "tiny",
        "audience": "subscribers", "topic": "company:{{ data.company }}"}]}))
    users = [f"u-{i:06d}" for i in range(SUBSCRIBERS)]
    store = RecipientStore(pipeline.redis)
    for start in range(0, SUBSCRIBERS, 10_000):
        store.put_many([Recipient(id=u, tenant="big", contacts={"email": f"{u}@example.com"})
                        for u in users[start : start + 10_000]])
    SubscriptionStore(pipeline.redis).subscribe_many("big", "company:Acme", users)

    router = _router(pipeline, tmp_path / "router.log")
    try:
        pipeline.pub().publish("jobs.match.found", {
            "user_id": "-", "match_id": "m-1", "job_title": "Engineer", "company": "Acme", "score": 99.0},
            source=SOURCE, id="news-1", tenant="big")
        pipeline.pub().flush()
        checkpoint = keys.fanout(event_key(SOURCE, "news-1"), "company-news")

        def progress() -> str:
            raw = pipeline.redis.get(checkpoint)
            return raw.decode() if raw else ""

        # Kill it hard once a third of the list is done and acknowledged.
        wait_until(lambda: progress() >= users[SUBSCRIBERS // 3], timeout=240, what="a third of the fan-out")
        router.send_signal(signal.SIGKILL)
        router.wait(10)
        at_kill = progress()
        assert at_kill != "~done"

        router = _router(pipeline, tmp_path / "router.log")
        wait_until(lambda: progress() == "~done", timeout=240, what="the fan-out to finish")
    finally:
        router.send_signal(signal.SIGTERM)
        router.wait(30)

    log = (tmp_path / "router.log").read_text()
    assert f"resumes after '{at_kill}'" in log
    ids = _delivery_ids(pipeline, pipeline.settings.deliver_topic("email"))
    distinct = set(ids)
    assert len(distinct) == SUBSCRIBERS  # everyone, each with one delivery id
    # It resumed: only what was in flight at the kill (at most one page) was produced twice,
    # with the same ids, which the email consumer's sent marks turn into no-ops.
    assert SUBSCRIBERS <= len(ids) <= SUBSCRIBERS + PAGE
