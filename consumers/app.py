"""Wiring: build the router and channel consumers from settings, failing early and clearly."""

from __future__ import annotations

import logging
import sys

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from channels import load_channel_class
from channels.registry import load_all
from consumers.deliver_consumer import DeliverConsumer
from consumers.router_consumer import RouterConsumer
from consumers.settings import Settings
from consumers.topics import missing_topics
from router.lanes import LANES
from router.rules import RuleSet
from router.templates import Renderer
from schemas import Catalog
from schemas.errors import ConfigError
from schemas.registry import RegistryClient


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def catalog_for(settings: Settings) -> Catalog:
    registry = RegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
    return Catalog.load(registry=registry)


def build_router(settings: Settings) -> RouterConsumer:
    rules = RuleSet.load(settings.rules)
    renderer = Renderer(settings.template_dir)
    renderer.check(rules.templates)
    catalog = catalog_for(settings)
    untyped = sorted({r.event_type for r in rules.rules} - set(catalog.by_type))
    if untyped:
        raise ConfigError(f"{settings.rules}: no schema in schemas/ for event type(s) {', '.join(untyped)}")
    known = load_all(settings.channel_modules)  # a broken plugin stops the router here, by name
    unknown = sorted(rules.channels - set(known))
    if unknown:
        raise ConfigError(f"{settings.rules}: unknown channel(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    needed = [settings.input_topic, settings.status_topic, settings.router_dlq_topic,
              *(settings.deliver_topic(c, lane) for c in sorted(rules.channels) for lane in LANES)]
    missing = missing_topics(settings, needed)
    if missing:
        raise ConfigError(f"missing topic(s): {', '.join(missing)}; run `tidings topics create`")
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    return RouterConsumer(settings, catalog, rules, renderer, redis)


def build_deliverer(settings: Settings, channel_name: str, lane: str | None = None) -> DeliverConsumer:
    load_all(settings.channel_modules)
    cls = load_channel_class(channel_name, settings.channel_modules)
    channel = cls.from_config(settings.channel_config(channel_name))
    lanes = LANES if lane is None else (lane,)
    needed = [*(settings.deliver_topic(channel_name, ln) for ln in lanes), *settings.retry_topics(channel_name),
              settings.channel_dlq_topic(channel_name), settings.status_topic]
    missing = missing_topics(settings, needed)
    if missing:
        raise ConfigError(f"missing topic(s): {', '.join(missing)}; run `tidings topics create`")
    redis = AsyncRedis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    return DeliverConsumer(settings, catalog_for(settings), channel, redis, lane=lane)
