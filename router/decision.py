"""The routing decision: one event in, deliveries and status events out.

:func:`route` is a pure function. It gets the decoded event, the rules for
its type, the dedup claim and the recipient as read from Redis for the batch,
the renderer and the clock, and returns a :class:`Decision`. It raises
:class:`~schemas.errors.InputError` subclasses for events that must be
dead-lettered (a missing header a rule needs, a template that breaks, a
condition that cannot be evaluated); the consumer does that.

Outcomes per event:

* ``deduplicated``: another copy of this (ce_source, ce_id) holds the claim,
  or a rule's dedup strategy suppressed it (reason ``dedup_window``,
  ``once_ever``, ``content_unchanged``);
* ``skipped``: no rule matched, the recipient is unknown, opted out of the
  channel or turned it off in a preference, has no contact point for it, is
  over a frequency cap (``frequency_cap``), or the delivery would be stale;
* ``held``: scheduled, held for quiet hours, or put in a digest;
* ``routed``: one Delivery per (recipient, channel).

Rules with ``audience: subscribers`` are not decided here per event: the
decision lists them in :attr:`Decision.fanouts` and the consumer pages
through the subscribers, calling :func:`decide_recipient` for each one with a
:class:`View` read for that page.

The order of checks for one (recipient, channel): rule dedup, opt-out and
preferences (unless the rule is ``required``), contact point, content change,
schedule, quiet hours, digest cadence, frequency cap; urgent deliveries skip
the last three.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from router import keys
from router.attachments import attachment_metadata
from router.caps import CapLimit, counters
from router.dedup import content_digest, content_unchanged, digest
from router.digest import QUIET, Cadence, bucket_id, due_at
from router.fallback import chain_steps, encode_steps
from router.lanes import bypasses_holds
from router.preferences import resolve
from router.quiet_hours import quiet_until
from router.recipients import Recipient
from router.rules import CompiledRule
from router.schedule import DigestAdd, Hold, scheduled_due
from router.state import Claim, Needs, View
from router.templates import Rendered, Renderer
from schemas import CloudEvent, Delivery, State, Status, delivery_id
from schemas.cloudevents import format_time
from schemas.errors import MissingHeaderError
from schemas.models import event_key

# Status reasons that count as suppressions, mapped to the metric's reason label.
SUPPRESSION_REASONS = {
    "duplicate_event": "dedup", "dedup_window": "dedup_window", "once_ever": "once_ever",
    "content_unchanged": "content_unchanged", "opt_out": "preference", "preference": "preference",
    "frequency_cap": "frequency_cap", "quiet_hours": "quiet_hours", "stale": "stale",
}
OVER_CAP_CADENCE = Cadence(channel="*", every="hourly")
"""Where ``over_cap: digest`` puts a delivery when the rule has no cadence for the channel."""


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded domain event."""

    ce: CloudEvent
    data: Mapping[str, Any]
    category: str | None = None
    deliver_at: datetime | None = None
    """Requested delivery time (``ce_deliverat`` or ``ce_deliverafter``)."""


@dataclass
class Decision:
    deliveries: list[Delivery] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    digests: list[DigestAdd] = field(default_factory=list)
    content: list[tuple[str, str, int | None]] = field(default_factory=list)
    """Content hashes to store: (key, hash, ttl seconds or None)."""
    fanouts: list[CompiledRule] = field(default_factory=list)

    def merge(self, other: Decision) -> None:
        self.deliveries += other.deliveries
        self.statuses += other.statuses
        self.holds += other.holds
        self.digests += other.digests
        self.content += other.content
        self.fanouts += other.fanouts


def _status(event: Event, state: State, reason: str, detail: str, **extra: Any) -> Status:
    return Status(
        state=state,
        event_id=event.ce.id,
        event_source=event.ce.source,
        event_type=event.ce.type,
        reason=reason,
        detail=detail,
        **extra,
    )


def event_context(ce: CloudEvent) -> dict[str, Any]:
    return {
        "id": ce.id,
        "source": ce.source,
        "type": ce.type,
        "time": format_time(ce.time),
        "subject": ce.subject,
        "tenant": ce.tenant,
    }


# One encoder for every payload (json.dumps with options builds a new one per call).
def _json_value(value: object) -> object:
    """JSON for the Avro values that have none of their own: bytes as base64, instants as RFC 3339."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)  # decimals, UUIDs, dates


_to_json = json.JSONEncoder(separators=(",", ":"), default=_json_value, ensure_ascii=False).encode


def webhook_payload(event: Event, delivery_fields: Mapping[str, Any], rendered: Rendered) -> str:
    """The documented webhook body (docs/webhooks.md)."""
    body = {
        "id": delivery_fields["delivery_id"],
        "type": event.ce.type,
        "source": event.ce.source,
        "event_id": event.ce.id,
        "time": format_time(event.ce.time),
        "tenant": event.ce.tenant,
        "recipient": delivery_fields["recipient_id"],
        "rule": delivery_fields["rule"],
        "priority": delivery_fields["priority"],
        "title": rendered.subject,
        "text": rendered.text,
        "data": dict(event.data),
    }
    return _to_json(body)


def category_of(event: Event, compiled: CompiledRule) -> str | None:
    return compiled.rule.category or event.category


def pref_keys(tenant: str, user: str) -> tuple[str, str, str]:
    return keys.prefs(tenant, user), keys.tenant_prefs(tenant), keys.tenant_prefs(keys.GLOBAL)


def _dedup_key(event: Event, compiled: CompiledRule, tenant: str, user: str, ectx: Mapping[str, Any]) -> str:
    key = compiled.key(event.data, ectx) or ""
    return keys.dedup(tenant, user, compiled.rule.name, digest(key))


def _content_key(event: Event, compiled: CompiledRule, tenant: str, user: str, channel: str,
                 ectx: Mapping[str, Any]) -> str:
    key = compiled.key(event.data, ectx) or ""
    return keys.content(tenant, user, compiled.rule.name, channel, digest(key))


def add_needs(needs: Needs, event: Event, compiled: CompiledRule, tenant: str, user: str,
              limits: Sequence[CapLimit], now: datetime) -> None:
    """Record the keys :func:`decide_recipient` will read for this (rule, recipient)."""
    rule = compiled.rule
    ectx = event_context(event.ce)
    needs.prefs.update(pref_keys(tenant, user))
    owner = event_key(event.ce.source, event.ce.id)
    policy = rule.dedup
    if policy is not None and policy.strategy != "content_change":
        ttl = int(policy.window.total_seconds()) if policy.window is not None else None
        needs.claims[(_dedup_key(event, compiled, tenant, user, ectx), owner)] = ttl
    for channel in rule.channels:
        if policy is not None and policy.strategy == "content_change":
            needs.content.add(_content_key(event, compiled, tenant, user, channel, ectx))
        if limits and not bypasses_holds(rule.priority):
            needs.caps.update(c.key for c in counters(limits, tenant, user, channel, category_of(event, compiled),
                                                      now))


def route(
    event: Event,
    rules: Sequence[CompiledRule],
    claim: Claim,
    recipient: Recipient | None,
    renderer: Renderer,
    now: datetime,
    deadline: timedelta,
    recipient_problem: str | None = None,
    *,
    view: View | None = None,
    limits: Sequence[CapLimit] = (),
    matched: Sequence[CompiledRule] | None = None,
) -> Decision:
    """Decide what one event produces. Pure apart from template rendering, which is deterministic."""
    decision = Decision()
    if not claim.mine:
        decision.statuses.append(
            _status(event, State.deduplicated, "duplicate_event", f"already claimed by {claim.owner}")
        )
        return decision
    ectx = event_context(event.ce)
    if matched is None:
        matched = [r for r in rules if r.matches(event.data, ectx)]
    if not matched:
        reason = "no_rule" if not rules else "condition_false"
        detail = (
            f"no rule for event type {event.ce.type}"
            if not rules
            else f"no condition matched ({', '.join(r.rule.name for r in rules)})"
        )
        decision.statuses.append(_status(event, State.skipped, reason, detail))
        return decision
    decision.fanouts = [r for r in matched if r.rule.audience == "subscribers"]
    direct = [r for r in matched if r.rule.audience == "subject"]
    if not direct:
        return decision
    if event.ce.subject is None:
        names = ", ".join(r.rule.name for r in direct)
        raise MissingHeaderError(f"rule(s) {names} address the event's subject but ce_subject is missing")
    if recipient is None:
        decision.statuses.append(
            _status(
                event,
                State.skipped,
                "recipient_invalid" if recipient_problem else "unknown_recipient",
                recipient_problem or f"no recipient {event.ce.subject!r} in tenant {event.ce.tenant!r}",
                recipient_id=event.ce.subject,
            )
        )
        return decision
    view = view if view is not None else View()
    for compiled in direct:
        decide_recipient(decision, event, compiled, recipient, renderer, now, deadline, view, limits)
    return decision


def decide_recipient(
    decision: Decision,
    event: Event,
    compiled: CompiledRule,
    recipient: Recipient,
    renderer: Renderer,
    now: datetime,
    deadline: timedelta,
    view: View,
    limits: Sequence[CapLimit] = (),
) -> None:
    """Everything one rule produces for one recipient, appended to ``decision``.

    ``view`` holds the Redis state the batch read (see :func:`add_needs`); its
    :class:`~router.caps.CapBook` counts this batch's deliveries as they are decided.
    """
    rule = compiled.rule
    ectx = event_context(event.ce)
    tenant = event.ce.tenant
    rctx = {
        "id": recipient.id,
        "name": recipient.name or recipient.id,
        "locale": recipient.locale,
        "timezone": recipient.timezone,
    }
    policy = rule.dedup
    if policy is not None and policy.strategy != "content_change":
        held_by = view.claims.get((_dedup_key(event, compiled, tenant, recipient.id, ectx),
                                   event_key(event.ce.source, event.ce.id)))
        if held_by is not None and not held_by.mine:
            for channel in rule.channels:
                decision.statuses.append(_status(
                    event, State.deduplicated, policy.reason,
                    f"dedup key {compiled.key(event.data, ectx)!r} already used by event {held_by.owner}",
                    channel=channel, recipient_id=recipient.id, rule=rule.name))
            return
    ekey = event_key(event.ce.source, event.ce.id)
    context = {"data": event.data, "event": ectx, "recipient": rctx,
               "rule": {"name": rule.name, "priority": rule.priority.value}}
    renderings: dict[str | None, Rendered] = {}

    def render_for(channel: str) -> Rendered:
        """One rendering per channel variant (most channels share the template's common files)."""
        variant = renderer.variant(rule.template, channel)
        found = renderings.get(variant)
        if found is not None:
            return found
        shared = renderer.recipient_free(rule.template, recipient.locale, variant)
        cache_key = (ekey, rule.name, rule.template, recipient.locale, variant or "")
        found = view.rendered.get(cache_key) if shared else None
        if found is None:
            found = (renderer.render(rule.template, context, recipient.locale) if variant is None
                     else renderer.render(rule.template, context, recipient.locale, variant))
            if shared:
                view.rendered[cache_key] = found
        renderings[variant] = found
        return found

    # Render before any channel is decided: a template that fails dead-letters the whole event.
    for channel in rule.channels:
        render_for(channel)
    for channel in rule.fallback_channels:
        render_for(channel)
    action = compiled.action(event.data, ectx)  # before any channel is decided, like the templates
    category = category_of(event, compiled)
    prefs_user, prefs_tenant, prefs_global = pref_keys(tenant, recipient.id)
    levels = [("user", view.prefs.get(prefs_user, {})), ("tenant", view.prefs.get(prefs_tenant, {})),
              ("global", view.prefs.get(prefs_global, {}))]
    urgent = bypasses_holds(rule.priority)
    stale_at = event.ce.time + rule.stale_after if rule.stale_after is not None else None
    for channel in rule.channels:
        extra = {"channel": channel, "recipient_id": recipient.id, "rule": rule.name}

        def status(state: State, reason: str, detail: str, _extra: dict[str, Any] = extra) -> None:
            decision.statuses.append(_status(event, state, reason, detail, **_extra))

        if not rule.required:
            if recipient.opted_out(channel):
                status(State.skipped, "opt_out", f"recipient opted out of {channel}")
                continue
            verdict = resolve(channel, event.ce.type, category, levels)
            if not verdict.allowed:
                status(State.skipped, "preference", f"turned off by {verdict.source}")
                continue
        address = recipient.address(channel)
        if not address:
            status(State.skipped, "no_address", f"no {channel} contact point")
            continue
        rendered = render_for(channel)
        content_write: tuple[str, str, int | None] | None = None
        if policy is not None and policy.strategy == "content_change":
            ckey = _content_key(event, compiled, tenant, recipient.id, channel, ectx)
            current = content_digest(rendered.subject, rendered.text, rendered.html)
            if content_unchanged(view.content.get(ckey), current):
                status(State.deduplicated, "content_unchanged", "the same content was already sent")
                continue
            ttl = int(policy.resend_after.total_seconds()) if policy.resend_after is not None else None
            content_write = (ckey, current, ttl)
        delivery = _delivery(event, rule.name, rule.priority, channel, recipient, address, rendered, now,
                             now + deadline, action)
        if rule.fallback or rule.unread_fallback is not None:
            delivery = _with_fallback(delivery, event, compiled, recipient, render_for, levels, now, deadline,
                                      action)

        def hold(kind: str, due: datetime, reason: str, bucket: str | None = None, max_items: int = 1000,
                 _delivery: Delivery = delivery) -> bool:
            if stale_at is not None and due > stale_at:
                status(State.skipped, "stale", f"would be released at {format_time(due)}, "
                                                f"after its stale deadline {format_time(stale_at)}")
                return False
            held = _delivery.model_copy(update={"deadline": due + deadline})
            if bucket is None:
                decision.holds.append(Hold(kind, due, held))  # type: ignore[arg-type]
            else:
                decision.digests.append(DigestAdd(bucket, due, max_items, held))
            decision.statuses.append(Status.for_delivery(held, State.held, at=now, reason=reason,
                                                         detail=f"until {format_time(due)}"))
            return True

        def bucket(every: str, _channel: str = channel) -> str:
            return bucket_id(tenant, recipient.id, rule.name, _channel, every)

        due = scheduled_due(now, event.deliver_at, rule.delay)
        if due is not None:
            if hold("scheduled", due, "scheduled") and content_write:
                decision.content.append(content_write)
            continue
        if not urgent and rule.quiet_hours != "ignore":
            until = quiet_until(now, recipient.timezone, recipient.quiet_hours)
            if until is not None:
                ok = (hold("digest", until, "quiet_hours", bucket(QUIET)) if rule.quiet_hours == "digest"
                      else hold("quiet_hours", until, "quiet_hours"))
                if ok and content_write:
                    decision.content.append(content_write)
                continue
        if not urgent:
            cadence = rule.digest_for(channel)
            if cadence is not None:
                if hold("digest", due_at(now, recipient.timezone, cadence), "digest", bucket(cadence.every),
                        cadence.max_items) and content_write:
                    decision.content.append(content_write)
                continue
            wanted = counters(limits, tenant, recipient.id, channel, category, now)
            over = view.caps.over(wanted)
            if over is not None:
                if rule.over_cap == "digest":
                    cadence = rule.digest_for(channel) or OVER_CAP_CADENCE
                    if hold("digest", due_at(now, recipient.timezone, cadence), "frequency_cap",
                            bucket(cadence.every), cadence.max_items) and content_write:
                        decision.content.append(content_write)
                else:
                    status(State.skipped, "frequency_cap", f"over the cap {over.label}")
                continue
            view.caps.take(wanted)
        if content_write:
            decision.content.append(content_write)
        decision.deliveries.append(delivery)
        decision.statuses.append(Status.for_delivery(delivery, State.routed, at=now))


def _with_fallback(delivery: Delivery, event: Event, compiled: CompiledRule, recipient: Recipient,
                   render_for: Callable[[str], Rendered], levels: Sequence[tuple[str, Mapping[str, str]]],
                   now: datetime,
                   deadline: timedelta, action: Mapping[str, str]) -> Delivery:
    """Attach the rule's fallback steps for this channel (router/fallback.py). A fallback channel
    goes through the same opt-out, preference and contact-point checks as a primary one."""
    rule = compiled.rule
    category = category_of(event, compiled)

    def reach(channel: str) -> Delivery | None:
        if not rule.required and (recipient.opted_out(channel)
                                  or not resolve(channel, event.ce.type, category, levels).allowed):
            return None
        address = recipient.address(channel)
        if not address:
            return None
        return _delivery(event, rule.name, rule.priority, channel, recipient, address, render_for(channel), now,
                         now + deadline, action)

    steps = chain_steps(delivery.channel, rule.chains, rule.unread_fallback, reach)
    return delivery.model_copy(update={"fallback": encode_steps(steps)}) if steps else delivery


def _delivery(event: Event, rule: str, priority: Any, channel: str, recipient: Recipient, address: str,
              rendered: Rendered, now: datetime, deadline: datetime,
              action: Mapping[str, str] | None = None) -> Delivery:
    fields: dict[str, Any] = {
        "delivery_id": delivery_id(event.ce.source, event.ce.id, rule, recipient.id, channel),
        "event_id": event.ce.id,
        "event_source": event.ce.source,
        "event_type": event.ce.type,
        "event_time": event.ce.time,
        "tenant": event.ce.tenant,
        "rule": rule,
        "channel": channel,
        "recipient_id": recipient.id,
        "address": address,
        "locale": recipient.locale,
        "priority": priority,
        "subject": rendered.subject,
        "text": rendered.text,
        "html": rendered.html if channel == "email" else None,
        "created_at": now,
        "deadline": deadline,
    }
    if channel != "email":
        fields["payload"] = webhook_payload(event, fields, rendered)
    elif "attachments" in event.data:
        fields["metadata"] = attachment_metadata(event.data)
    if action and channel == "inapp":
        fields["metadata"] = dict(action)  # read by channels/inapp/items.py
    return Delivery(**fields)
