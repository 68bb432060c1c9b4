"""The ``tidings`` command: one entry point for every process and tool.

::

    tidings topics create [--partitions N] [--replication-factor N]
    tidings router
    tidings deliver CHANNEL [--lane normal|urgent]
    tidings publish TYPE --data JSON [--subject U] [--source S] [--id ID] [--tenant T] [--topic T]
    tidings recipients load FILE | set ID --data JSON | get ID | list | remove ID   [--tenant T]
    tidings subscriptions set USER TOPIC... | get USER | list TOPIC | remove USER TOPIC...  [--tenant T]
    tidings preferences set CH/SCOPE=on|off... | get | list | remove CH/SCOPE...
                        [--user U | --global] [--tenant T] [--channel C --type T [--category C]]
    tidings templates check  render every template against sample data from its event schema
    tidings admin            the admin HTTP API (preference centre), OpenAPI at /openapi.json
    tidings status ID
    tidings inbox serve [--host H] [--port P]    the in-app inbox API, live stream and page
    tidings inbox token USER [--tenant T] [--ttl SECONDS]
    tidings dlq list CHANNEL|router [--reason R] [--since T] [--limit N]
    tidings dlq show CHANNEL|router PARTITION:OFFSET|ID
    tidings dlq replay CHANNEL|router [--reason R] [--since T] [--limit N] [--id ID ...] [--dry-run]
    tidings check            validate rules, templates and schemas
    tidings config           print the settings in force (secrets masked)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from redis import Redis
from redis.exceptions import RedisError

from channels import available_channels
from channels.registry import load_all
from consumers.settings import Settings
from schemas.errors import ConfigError, InputError, TidingsError


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"setting TIDINGS_{str(err['loc'][0]).upper()}: {err['msg']}") from None


def cmd_topics(args: argparse.Namespace) -> int:
    from consumers.topics import create_topics

    settings = _settings()
    channels = available_channels(settings.channel_modules)
    result = create_topics(settings, channels, partitions=args.partitions,
                           replication_factor=args.replication_factor)
    for name, what in sorted(result.items()):
        print(f"{what:8} {name}")
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    from consumers.app import build_router, setup_logging

    settings = _settings()
    setup_logging(settings.log_level)
    router = build_router(settings)
    router.install_signal_handlers()
    router.run()
    return 0


def cmd_deliver(args: argparse.Namespace) -> int:
    from consumers.app import build_deliverer, setup_logging

    settings = _settings()
    setup_logging(settings.log_level)
    consumer = build_deliverer(settings, args.channel, args.lane)
    consumer.install_signal_handlers()
    consumer.run()
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from consumers.publisher import DEFAULT_SOURCE, Publisher

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise InputError(f"--data is not valid JSON: {exc}") from None
    with Publisher(_settings()) as pub:
        event = pub.publish(args.type, data, subject=args.subject, source=args.source or DEFAULT_SOURCE,
                            id=args.id, tenant=args.tenant, topic=args.topic)
    print(json.dumps({"id": event.id, "source": event.source, "type": event.type,
                      "subject": event.subject, "tenant": event.tenant}))
    return 0


def cmd_recipients(args: argparse.Namespace) -> int:
    from router.recipients import RecipientStore, parse_documents, read_file

    settings = _settings()
    if args.action == "load":
        if not args.target:
            raise InputError("recipients load needs a FILE")
        recipients = read_file(Path(args.target))  # validate everything before touching Redis
        store = RecipientStore(Redis.from_url(settings.redis_url))
        print(f"loaded {store.put_many(recipients)} recipient(s) from {args.target}")
        return 0
    if args.action == "set":
        if not args.target or args.data is None:
            raise InputError("recipients set needs an ID and --data JSON")
        try:
            doc = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise InputError(f"--data is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InputError("--data must be a JSON object")
        [recipient] = parse_documents([{**doc, "id": args.target, "tenant": args.tenant}], "--data")
        RecipientStore(Redis.from_url(settings.redis_url)).put_many([recipient])
        print(f"set recipient {recipient.id} in tenant {recipient.tenant}")
        return 0
    store = RecipientStore(Redis.from_url(settings.redis_url))
    if args.action == "list":
        for ident in store.ids(args.tenant):
            print(ident)
        return 0
    if not args.target:
        raise InputError(f"recipients {args.action} needs an ID")
    if args.action == "get":
        found = store.get(args.tenant, args.target)
        if found is None:
            print(f"no recipient {args.target!r} in tenant {args.tenant!r}", file=sys.stderr)
            return 1
        print(json.dumps(found.model_dump(mode="json"), indent=2, sort_keys=True))
        return 0
    removed = store.remove(args.tenant, args.target)
    print("removed" if removed else "not found")
    return 0 if removed else 1


def cmd_subscriptions(args: argparse.Namespace) -> int:
    from router.subscriptions import SubscriptionStore

    if not args.target:
        raise InputError(f"subscriptions {args.action} needs {'a TOPIC' if args.action == 'list' else 'a USER'}")
    if args.action in ("set", "remove") and not args.topics:
        raise InputError(f"subscriptions {args.action} needs at least one TOPIC")
    store = SubscriptionStore(Redis.from_url(_settings().redis_url))
    if args.action == "set":
        added = store.subscribe(args.tenant, args.target, args.topics)
        print(f"subscribed {args.target} to {len(args.topics)} topic(s), {added} new")
    elif args.action == "remove":
        removed = store.unsubscribe(args.tenant, args.target, args.topics)
        print(f"unsubscribed {args.target} from {removed} topic(s)")
        return 0 if removed else 1
    elif args.action == "get":
        for topic in store.topics(args.tenant, args.target):
            print(topic)
    else:
        cursor: str | None = None
        while True:
            page = store.page(args.tenant, args.target, cursor, 1000)
            if not page:
                break
            print("\n".join(page))
            cursor = page[-1]
    return 0


def _switch(text: str) -> tuple[str, str, str | None]:
    """``email/type:x=on`` -> (``email``, ``type:x``, ``on``); ``email/*`` -> (``email``, ``*``, None)."""
    name, eq, value = text.partition("=")
    channel, slash, scope = name.partition("/")
    if not slash:
        raise InputError(f"{text!r}: expected CHANNEL/SCOPE, e.g. email/* or */category:marketing")
    return channel, scope, (value if eq else None)


def cmd_preferences(args: argparse.Namespace) -> int:
    from router.preferences import Level, PreferenceError, PreferenceStore, Switch, field_name, parse_value

    level: Level = "user" if args.user else ("global" if args.global_ else "tenant")
    if args.user and args.global_:
        raise InputError("--user and --global exclude each other")
    store = PreferenceStore(Redis.from_url(_settings().redis_url))
    if args.action == "set":
        switches = []
        for text in args.switches:
            channel, scope, value = _switch(text)
            if value is None:
                raise PreferenceError(f"{text!r}: expected CHANNEL/SCOPE=on or =off")
            field_name(channel, scope)
            switches.append(Switch(channel, scope, parse_value(value)))
        n = store.set(level, args.tenant, args.user, switches)  # validated above: all or nothing
        print(f"set {n} {level} preference(s)")
        return 0
    if args.action == "remove":
        if not args.switches:
            raise InputError("preferences remove needs CHANNEL/SCOPE arguments")
        parsed = [_switch(t) for t in args.switches]
        for channel, scope, _ in parsed:
            field_name(channel, scope)
        removed = sum(store.remove(level, args.tenant, args.user, c, sc) for c, sc, _ in parsed)
        print(f"removed {removed} {level} preference(s)")
        return 0 if removed else 1
    if args.action == "get" and args.type:
        if not args.user or not args.channel:
            raise InputError("preferences get --type needs --user and --channel")
        verdict = store.effective(args.tenant, args.user, args.channel, args.type, args.category)
        print(json.dumps({"allowed": verdict.allowed, "decided_by": verdict.source or "default (allowed)"}))
        return 0
    print(json.dumps(store.get(level, args.tenant, args.user), indent=2, sort_keys=True))
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from router.rules import RuleSet
    from router.template_check import check_all
    from router.templates import Renderer
    from schemas import Catalog

    settings = _settings()
    rules = RuleSet.load(settings.rules)
    report = check_all(rules, Renderer(settings.template_dir), Catalog.load())
    for line in report.lines:
        print(line)
    if report.errors:
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ok: {report.rendered} rendering(s) of {len(report.templates)} template(s) passed")
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    import uvicorn

    from consumers.admin import create_app
    from consumers.app import setup_logging

    settings = _settings()
    setup_logging(settings.log_level)
    app = create_app(Redis.from_url(settings.redis_url))
    uvicorn.run(app, host=args.host or settings.admin_host, port=args.port or settings.admin_port,
                log_level=settings.log_level.lower())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from consumers.status import describe, find_status

    found = find_status(_settings(), args.id, timeout=args.timeout)
    if not found:
        print(f"no status events for {args.id}", file=sys.stderr)
        return 1
    for status in found:
        print(describe(status))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from consumers import dlq

    settings = _settings()
    known = available_channels(settings.channel_modules)
    if args.target != dlq.ROUTER and args.target not in known:
        raise InputError(f"no channel {args.target!r}; give one of {', '.join(sorted(known))} or 'router'")
    topic = dlq.dlq_topic(settings, args.target)
    since = dlq.parse_since(args.since) if args.since else None
    ids = [*args.ids, *args.extra_ids]
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    if args.action == "show":
        if not ids:
            raise InputError("dlq show needs PARTITION:OFFSET or a delivery or event id")
        found = dlq.select(dlq.read(settings, topic), ids=ids)
        if not found:
            print(f"nothing in {topic} matches {', '.join(ids)}", file=sys.stderr)
            return 1
        from schemas import Catalog

        catalog = Catalog.load()
        print("\n\n".join(dlq.describe(r, catalog) for r in found))
        return 0
    found = dlq.select(dlq.read(settings, topic), reason=args.reason, since=since, limit=args.limit,
                       ids=ids)
    if args.action == "list":
        for r in found:
            print(r.summary())
        print(f"{len(found)} record(s) in {topic}", file=sys.stderr)
        return 0
    report = dlq.replay(settings, args.target, found, dry_run=args.dry_run, progress=sys.stderr)
    where = ", ".join(f"{n} to {t}" for t, n in sorted(report.targets.items())) or "nothing"
    if args.dry_run:
        for r in found:
            print(r.summary())
        print(f"dry run: would replay {report.selected} record(s) from {topic}: {where}", file=sys.stderr)
    else:
        print(f"replayed {report.replayed} record(s) from {topic}: {where}; "
              f"{report.statuses} status event(s) on {settings.status_topic}", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from router.rules import RuleSet
    from router.templates import Renderer
    from schemas import Catalog

    settings = _settings()
    catalog = Catalog.load()
    problems = catalog.evolution_problems()
    if problems:
        raise ConfigError("schema evolution: " + "; ".join(problems))
    rules = RuleSet.load(settings.rules)
    Renderer(settings.template_dir).check(rules.templates)
    for rule in rules.rules:
        catalog.for_type(rule.event_type)
    known = load_all(settings.channel_modules)  # imports and checks every channel, plugins included
    unknown = sorted(rules.channels - set(known))
    if unknown:
        raise ConfigError(f"unknown channel(s) in rules: {', '.join(unknown)}")
    print(f"ok: {len(rules.rules)} rule(s), {len(rules.templates)} template(s), "
          f"{len(catalog.by_type)} event type(s), channels {', '.join(sorted(known))}")
    return 0


def _inbox_secret(settings: Settings) -> str:
    if settings.inbox_secret is None:
        raise ConfigError("TIDINGS_INBOX_SECRET is not set: the inbox API needs it to sign and check user tokens")
    return settings.inbox_secret.get_secret_value()


def cmd_inbox(args: argparse.Namespace) -> int:
    import time

    from channels.inapp.tokens import check_secret, mint

    settings = _settings()
    secret = _inbox_secret(settings)
    check_secret(secret)
    if args.action == "token":
        if not args.user:
            raise InputError("inbox token needs a USER")
        ttl = args.ttl if args.ttl is not None else settings.inbox_token_ttl_seconds
        if ttl <= 0:
            raise InputError("--ttl must be a positive number of seconds")
        print(mint(secret, args.tenant, args.user, int(time.time()) + ttl))
        return 0
    if args.user:
        raise InputError("inbox serve takes no USER")
    import uvicorn
    from redis.asyncio import Redis as AsyncRedis

    from channels.inapp.api import create_app
    from channels.inapp.store import InboxStore
    from consumers.app import setup_logging

    setup_logging(settings.log_level)
    redis = AsyncRedis.from_url(settings.redis_url, socket_connect_timeout=5,
                                socket_timeout=settings.inbox_heartbeat_seconds + 10,
                                max_connections=settings.inbox_max_streams + 32)
    store = InboxStore(redis, max_items=settings.inbox_max_items, stream_length=settings.inbox_stream_length)
    app = create_app(store, secret, heartbeat=settings.inbox_heartbeat_seconds,
                     max_streams=settings.inbox_max_streams)
    if settings.metrics_port >= 0:
        from consumers.metrics import serve_inbox_metrics

        log = logging.getLogger("tidings.inbox")
        try:
            metrics = serve_inbox_metrics(app.state, settings.metrics_host, settings.metrics_port)
            log.info("/metrics on port %d", metrics.server_address[1])
        except OSError as exc:  # the API matters more than its metrics, as for the consumers
            log.warning("metrics not served on port %d: %s", settings.metrics_port, exc)
    host = args.host or settings.inbox_host
    port = settings.inbox_port if args.port is None else args.port
    # No access log: the live stream carries the user token in its query string.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False,
                                           log_level=settings.log_level.lower(), timeout_graceful_shutdown=3))
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it; this handler makes that a clean exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_settings().describe(), indent=2, default=str))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidings", description="Kafka-native notification pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    topics = sub.add_parser("topics", help="manage Kafka topics")
    topics.add_argument("action", choices=["create"])
    topics.add_argument("--partitions", type=int)
    topics.add_argument("--replication-factor", type=int)
    topics.set_defaults(func=cmd_topics)

    sub.add_parser("router", help="run the router consumer").set_defaults(func=cmd_router)

    deliver = sub.add_parser("deliver", help="run one channel's consumer")
    deliver.add_argument("channel")
    deliver.add_argument("--lane", choices=["normal", "urgent"],
                         help="read only this priority lane (default: both, in one consumer group)")
    deliver.set_defaults(func=cmd_deliver)

    pub = sub.add_parser("publish", help="publish one domain event")
    pub.add_argument("type")
    pub.add_argument("--data", required=True, help="event data as a JSON object")
    pub.add_argument("--subject")
    pub.add_argument("--source")
    pub.add_argument("--id")
    pub.add_argument("--tenant")
    pub.add_argument("--topic")
    pub.set_defaults(func=cmd_publish)

    rec = sub.add_parser("recipients", help="manage recipients in Redis")
    rec.add_argument("action", choices=["load", "set", "get", "list", "remove"])
    rec.add_argument("target", nargs="?", help="FILE for load, ID for set, get and remove")
    rec.add_argument("--data", help="set: the recipient document as a JSON object")
    rec.add_argument("--tenant", default="default")
    rec.set_defaults(func=cmd_recipients)

    subs = sub.add_parser("subscriptions", help="manage subscriptions in Redis")
    subs.add_argument("action", choices=["set", "get", "list", "remove"])
    subs.add_argument("target", nargs="?", help="USER for set, get and remove; TOPIC for list")
    subs.add_argument("topics", nargs="*", help="TOPIC... for set and remove")
    subs.add_argument("--tenant", default="default")
    subs.set_defaults(func=cmd_subscriptions)

    prefs = sub.add_parser("preferences", help="manage preferences (user, tenant or global level)")
    prefs.add_argument("action", choices=["set", "get", "list", "remove"])
    prefs.add_argument("switches", nargs="*", help="CHANNEL/SCOPE=on|off for set, CHANNEL/SCOPE for remove")
    prefs.add_argument("--user", help="a user's own preferences (default: the tenant's defaults)")
    prefs.add_argument("--global", dest="global_", action="store_true", help="the global defaults")
    prefs.add_argument("--tenant", default="default")
    prefs.add_argument("--channel", help="get: with --type, the effective decision for this channel")
    prefs.add_argument("--type", help="get: the event type to decide for")
    prefs.add_argument("--category", help="get: the event's category")
    prefs.set_defaults(func=cmd_preferences)

    tpl = sub.add_parser("templates", help="check every template against sample data")
    tpl.add_argument("action", choices=["check"])
    tpl.set_defaults(func=cmd_templates)

    admin = sub.add_parser("admin", help="serve the admin HTTP API (preference centre)")
    admin.add_argument("--host")
    admin.add_argument("--port", type=int)
    admin.set_defaults(func=cmd_admin)

    st = sub.add_parser("status", help="show what happened to an event or delivery id")
    st.add_argument("id")
    st.add_argument("--timeout", type=float, default=30.0)
    st.set_defaults(func=cmd_status)

    inbox = sub.add_parser("inbox", help="serve the in-app inbox, or make a user token for it")
    inbox.add_argument("action", choices=["serve", "token"])
    inbox.add_argument("user", nargs="?", help="the user id, for token")
    inbox.add_argument("--tenant", default="default")
    inbox.add_argument("--ttl", type=int, help="token lifetime in seconds")
    inbox.add_argument("--host")
    inbox.add_argument("--port", type=int)
    inbox.set_defaults(func=cmd_inbox)
    dq = sub.add_parser("dlq", help="list, show and replay dead letters")
    dq.add_argument("action", choices=["list", "show", "replay"])
    dq.add_argument("target", help="a channel name, or 'router'")
    dq.add_argument("ids", nargs="*", help="show/replay: PARTITION:OFFSET, delivery ids or event ids")
    dq.add_argument("--reason", help="only records with this reason (error class), e.g. PermanentError")
    dq.add_argument("--since", help="only records that last failed since T: RFC 3339, or 30m, 2h, 7d")
    dq.add_argument("--limit", type=int, help="at most N records")
    dq.add_argument("--id", dest="extra_ids", action="append", default=[], help="a record to select (repeatable)")
    dq.add_argument("--dry-run", action="store_true", help="replay: show what would be replayed, change nothing")
    dq.set_defaults(func=cmd_dlq)

    sub.add_parser("check", help="validate rules, templates and schemas").set_defaults(func=cmd_check)
    sub.add_parser("config", help="print settings (secrets masked)").set_defaults(func=cmd_config)
    return p


_TRAILING = ("switches", "topics")
"""List positionals that may follow options (``preferences set --user U a/*=on``): argparse
binds an empty list to them at the first option, so the rest arrives as extras."""


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        target = next((name for name in _TRAILING if isinstance(getattr(args, name, None), list)), None)
        if target is None or any(e.startswith("-") for e in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, target).extend(extra)
    try:
        return int(args.func(args))
    except TidingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        print(f"error: redis: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
