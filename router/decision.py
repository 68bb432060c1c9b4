"""The routing decision: one event in, deliveries and status events out.

:func:`route` is a pure function. It gets the decoded event, the rules for
its type, the dedup claim and the recipient as read from Redis for the batch,
the renderer and the clock, and returns a :class:`Decision`. It raises
:class:`~schemas.errors.InputError` subclasses for events that must be
dead-lettered (a missing header a rule needs, a template that breaks, a
condition that cannot be evaluated); the consumer does that.

Outcomes per event:

* ``deduplicated``: another copy of this (ce_source, ce_id) holds the claim;
* ``skipped``: no rule matched, the recipient is unknown, opted out of the
  channel, or has no contact point for it;
* ``routed``: one Delivery per (recipient, channel).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from router.attachments import attachment_metadata
from router.recipients import Recipient
from router.rules import CompiledRule
from router.state import Claim
from router.templates import Rendered, Renderer
from schemas import CloudEvent, Delivery, State, Status, delivery_id
from schemas.cloudevents import format_time
from schemas.errors import MissingHeaderError


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded domain event."""

    ce: CloudEvent
    data: Mapping[str, Any]
    category: str | None = None


@dataclass
class Decision:
    deliveries: list[Delivery] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)


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
_to_json = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode


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


def route(
    event: Event,
    rules: Sequence[CompiledRule],
    claim: Claim,
    recipient: Recipient | None,
    renderer: Renderer,
    now: datetime,
    deadline: timedelta,
    recipient_problem: str | None = None,
) -> Decision:
    """Decide what one event produces. Pure apart from template rendering, which is deterministic."""
    decision = Decision()
    if not claim.mine:
        decision.statuses.append(
            _status(event, State.deduplicated, "duplicate_event", f"already claimed by {claim.owner}")
        )
        return decision
    ectx = event_context(event.ce)
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
    if event.ce.subject is None:
        names = ", ".join(r.rule.name for r in matched)
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
    rctx = {
        "id": recipient.id,
        "name": recipient.name or recipient.id,
        "locale": recipient.locale,
        "timezone": recipient.timezone,
    }
    for compiled in matched:
        rule = compiled.rule
        rendered = renderer.render(
            rule.template,
            {
                "data": event.data,
                "event": ectx,
                "recipient": rctx,
                "rule": {"name": rule.name, "priority": rule.priority.value},
            },
            recipient.locale,
        )
        for channel in rule.channels:
            extra = {"channel": channel, "recipient_id": recipient.id, "rule": rule.name}
            if recipient.opted_out(channel):
                decision.statuses.append(
                    _status(event, State.skipped, "opt_out", f"recipient opted out of {channel}", **extra)
                )
                continue
            address = recipient.address(channel)
            if not address:
                decision.statuses.append(
                    _status(event, State.skipped, "no_address", f"no {channel} contact point", **extra)
                )
                continue
            fields: dict[str, Any] = {
                "delivery_id": delivery_id(event.ce.source, event.ce.id, rule.name, recipient.id, channel),
                "event_id": event.ce.id,
                "event_source": event.ce.source,
                "event_type": event.ce.type,
                "event_time": event.ce.time,
                "tenant": event.ce.tenant,
                "rule": rule.name,
                "channel": channel,
                "recipient_id": recipient.id,
                "address": address,
                "locale": recipient.locale,
                "priority": rule.priority,
                "subject": rendered.subject,
                "text": rendered.text,
                "html": rendered.html if channel == "email" else None,
                "created_at": now,
                "deadline": now + deadline,
            }
            if channel != "email":
                fields["payload"] = webhook_payload(event, fields, rendered)
            elif "attachments" in event.data:
                fields["metadata"] = attachment_metadata(event.data)
            delivery = Delivery(**fields)
            decision.deliveries.append(delivery)
            decision.statuses.append(Status.for_delivery(delivery, State.routed, at=now))
    return decision
