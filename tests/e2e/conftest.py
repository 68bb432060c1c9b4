"""A whole pipeline inside the test process, on real Kafka, Redis, SMTP and HTTP.

The router and the channel consumers run their real loops in threads (the same
classes ``tidings router`` and ``tidings deliver`` run); topics get a unique
prefix per test and consumer groups a unique prefix, so tests are isolated.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from channels import load_channel_class
from consumers.deliver_consumer import DeliverConsumer
from consumers.loop import ConsumerLoop
from consumers.publisher import Publisher
from consumers.router_consumer import RouterConsumer
from consumers.settings import Settings
from consumers.topics import create_topics
from devstack.sinks import SmtpSink, WebhookSink
from router.recipients import Recipient, RecipientStore
from router.rules import RuleSet
from router.templates import Renderer
from schemas import Catalog

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_dGVzdC1zaWduaW5nLXNlY3JldC1mb3ItdGlkaW5ncw=="
REFUSED = "refused@example.com"


@dataclass
class Pipeline:
    settings: Settings
    catalog: Catalog
    redis: Redis
    smtp: SmtpSink
    web: WebhookSink
    config_dir: Path
    loops: dict[str, tuple[ConsumerLoop, threading.Thread]] = field(default_factory=dict)
    publisher: Publisher | None = None

    def reconfigure(self, **update: Any) -> Settings:
        """New settings for processes started from now on; topics they name (retry tiers) are created."""
        self.settings = self.settings.model_copy(update=update)
        create_topics(self.settings, ["email", "webhook"])
        return self.settings

    # -- processes ------------------------------------------------------

    def start_router(self, renderer: Renderer | None = None, **overrides: Any) -> RouterConsumer:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        rules = RuleSet.load(settings.rules)
        renderer = renderer or Renderer(settings.template_dir)
        renderer.check(rules.templates)
        loop = RouterConsumer(settings, self.catalog, rules, renderer,
                              Redis.from_url(settings.redis_url))
        self._run("router", loop)
        return loop

    def start_channel(self, name: str) -> DeliverConsumer:
        config = self.settings.channel_config(name)
        channel = load_channel_class(name).from_config(config)
        loop = DeliverConsumer(self.settings, self.catalog, channel, AsyncRedis.from_url(self.settings.redis_url))
        self._run(name, loop)
        return loop

    def start_channel_lane(self, name: str, lane: str) -> DeliverConsumer:
        """One priority lane's consumer (router/lanes.py), in its own group for ``urgent``."""
        channel = load_channel_class(name).from_config(self.settings.channel_config(name))
        loop = DeliverConsumer(self.settings, self.catalog, channel, AsyncRedis.from_url(self.settings.redis_url),
                               lane=lane)
        self._run(f"{name}-{lane}", loop)
        return loop

    def start_all(self) -> None:
        self.start_router()
        self.start_channel("email")
        self.start_channel("webhook")

    def _run(self, name: str, loop: ConsumerLoop) -> None:
        thread = threading.Thread(target=loop.run, kwargs={"health_port": -1}, name=name, daemon=True)
        thread.start()
        self.loops[name] = (loop, thread)

    def stop(self, name: str, timeout: float = 60.0) -> None:
        loop, thread = self.loops.pop(name)
        loop.request_stop()
        thread.join(timeout)
        assert not thread.is_alive(), f"{name} did not stop within {timeout}s"

    def stop_all(self) -> None:
        for name in list(self.loops):
            self.stop(name)

    # -- input ------------------------------------------------------------

    def pub(self) -> Publisher:
        if self.publisher is None:
            self.publisher = Publisher(self.settings, self.catalog)
        return self.publisher

    def recipients(self, *docs: dict[str, Any]) -> None:
        RecipientStore(self.redis).put_many([Recipient.model_validate(d) for d in docs])

    # -- observation ------------------------------------------------------

    def read_topic(self, topic: str, expect: int, timeout: float = 30.0) -> list[Message]:
        """Every record of ``topic`` once at least ``expect`` arrived (then a short settle)."""
        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap,
                             "group.id": f"probe-{time.monotonic_ns()}", "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(topic, timeout=10)
            parts = list(meta.topics[topic].partitions)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            out: list[Message] = []
            deadline = time.monotonic() + timeout
            settle: float | None = None
            while time.monotonic() < deadline:
                for m in consumer.consume(500, 0.2):
                    if m.error() is None:
                        out.append(m)
                if len(out) >= expect:
                    settle = settle or time.monotonic() + 0.5
                    if time.monotonic() >= settle:
                        break
            return out
        finally:
            consumer.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the demo rules and templates that a test may extend."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    return target


@pytest.fixture
def pipeline(kafka_bootstrap: str, redis_url: str, redis_client: Redis, unique: str,
             config_dir: Path) -> Iterator[Pipeline]:
    smtp = SmtpSink(refuse=[REFUSED]).start()
    web = WebhookSink(secret=SECRET, statuses={"/gone": 410, "/busy": 503}).start()
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=f"t{unique}.",
        group_prefix=f"g{unique}-",
        partitions=2,
        rules=config_dir / "rules.yaml",
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        webhook_signing_secret=SECRET,
        webhook_allow_private="127.0.0.0/8",  # the receivers are on loopback, which the SSRF guard refuses
        retry_tiers="300ms,1s",
        retry_max_attempts=2,
        retry_jitter=0.0,
        breaker_threshold=50,
        poll_timeout=0.2,
        metrics_port=0,
    )
    create_topics(settings, ["email", "webhook"])
    p = Pipeline(settings, Catalog.load(), redis_client, smtp, web, config_dir)
    try:
        yield p
    finally:
        p.stop_all()
        if p.publisher is not None:
            p.publisher.close()
        smtp.stop()
        web.stop()
