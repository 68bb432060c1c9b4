"""``tidings templates check``: render every template the rules use against sample data.

Every channel of the rule that has files of its own (``text@sms.j2``) is
rendered as well. Sample data is derived from each rule's event schema: every field gets a
value of its Avro type (strings name their field, numbers are small, an enum
takes its first symbol, a record is filled field by field). Each template is
rendered twice per locale variant it has: once with every optional (nullable)
field filled and once with every one of them null, because a template that
breaks on a missing location breaks in production too. Digest templates are
rendered with two sample items. Any error fails the check and names the
template, the locale and the sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from router.decision import event_context
from router.digest import bucket_id, build_digest
from router.rules import RuleSet
from router.templates import Renderer
from schemas import Catalog, CloudEvent, Delivery, delivery_id
from schemas.errors import TemplateError

SAMPLE_TIME = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
_LOCALE_FILE = re.compile(
    r"^(subject|text|html)(?:@[a-z0-9_-]+)?\.(?P<locale>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*)\.j2$")


def sample_value(avro_type: Any, name: str, nulls: bool) -> Any:
    """A value of ``avro_type`` (parsed form); ``nulls`` picks null for nullable unions."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if (nulls and "null" in avro_type) or not branches:
            return None
        return sample_value(branches[0], name, nulls)
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind == "record":
            return {f["name"]: sample_value(f["type"], f["name"], nulls) for f in avro_type["fields"]}
        if kind == "enum":
            return avro_type["symbols"][0]
        if kind == "array":
            return [sample_value(avro_type["items"], name, nulls)]
        if kind == "map":
            return {"key": sample_value(avro_type["values"], name, nulls)}
        if kind == "fixed":
            return b"\0" * int(avro_type["size"])
        logical = avro_type.get("logicalType")
        if logical and logical.startswith("timestamp"):
            return SAMPLE_TIME
        return sample_value(kind, name, nulls)
    return {
        "string": f"sample-{name}", "int": 7, "long": 7, "float": 80.5, "double": 80.5,
        "boolean": True, "bytes": b"sample", "null": None,
    }.get(str(avro_type), f"sample-{name}")


def locales_of(renderer: Renderer, template: str) -> list[str | None]:
    folder = renderer.directory / template
    found = {m.group("locale") for p in folder.glob("*.j2") if (m := _LOCALE_FILE.match(p.name))}
    return [None, *sorted(found)]


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    templates: set[str] = field(default_factory=set)
    rendered: int = 0


def check_all(rules: RuleSet, renderer: Renderer, catalog: Catalog) -> Report:
    report = Report()
    for rule in rules.rules:
        try:
            schema = catalog.for_type(rule.event_type)
        except Exception as exc:  # noqa: BLE001 - reported, the check goes on
            report.errors.append(f"rule {rule.name}: {exc}")
            continue
        report.templates.add(rule.template)
        for variant in ("filled", "nulls"):
            data = {f["name"]: sample_value(f["type"], f["name"], variant == "nulls") for f in schema.fields}
            ce = CloudEvent.new(rule.event_type, source="/tidings/templates-check", subject="u-sample",
                                id="sample-1", time=SAMPLE_TIME)
            channels = [None, *sorted(renderer.variants(rule.template) & {*rule.channels, *rule.fallback_channels})]
            for channel, locale in ((c, loc) for c in channels for loc in locales_of(renderer, rule.template)):
                context = {
                    "data": data, "event": event_context(ce),
                    "recipient": {"id": "u-sample", "name": "Sample Person", "locale": locale or "en",
                                  "timezone": "UTC"},
                    "rule": {"name": rule.name, "priority": rule.priority.value},
                }
                on = f", channel {channel}" if channel else ""
                where = f"{rule.template} (rule {rule.name}{on}, locale {locale or 'default'}, {variant} sample)"
                try:
                    rendered = renderer.render(rule.template, context, locale, channel)
                except TemplateError as exc:
                    report.errors.append(f"{where}: {exc}")
                    continue
                report.rendered += 1
                report.lines.append(f"ok  {where}: {rendered.subject}")
        if rule.digests:
            report.templates.add(rule.digest_template)
            _check_digest(report, rule.name, rule.digest_template, renderer, rule.channels[0])
    return report


def _check_digest(report: Report, rule: str, template: str, renderer: Renderer, channel: str) -> None:
    items = [
        Delivery(delivery_id=delivery_id("/sample", f"e{i}", rule, "u-sample", channel), event_id=f"e{i}",
                 event_source="/sample", event_type="sample", event_time=SAMPLE_TIME, tenant="default",
                 rule=rule, channel=channel, recipient_id="u-sample", address="sample@example.com",
                 subject=f"Sample item {i}", text=f"Sample text {i}\n", created_at=SAMPLE_TIME)
        for i in (1, 2)
    ]
    bucket = bucket_id("default", "u-sample", rule, channel, "daily")
    for locale in locales_of(renderer, template):
        where = f"{template} (digest of rule {rule}, locale {locale or 'default'})"
        localized = [d.model_copy(update={"locale": locale or "en"}) for d in items]
        try:
            digest = build_digest(bucket, localized, renderer, template, SAMPLE_TIME, SAMPLE_TIME - SAMPLE_TIME)
        except TemplateError as exc:
            report.errors.append(f"{where}: {exc}")
            continue
        report.rendered += 1
        report.lines.append(f"ok  {where}: {digest.subject}")
