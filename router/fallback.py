"""Channel fallback: what goes out instead when a delivery does not reach its recipient.

A rule names the chains (docs/routing.md, "Channel fallback")::

    channels: [webhook, inapp]
    fallback:
      webhook: [sms, email]                     # webhook failed for good: try sms, then email
    unread_fallback: {after: 30m, channel: email}   # in-app item still unread 30 min later: email it

The router renders every step when it routes the primary delivery (it has the
recipient's addresses and preferences at hand) and carries them in the
delivery's ``fallback`` field, a JSON list of :class:`Step`. A chain is flat:
when ``webhook`` fails, the ``sms`` delivery goes out carrying the rest of the
chain (``email``), not the chains the rule names for ``sms`` itself. So a chain
cannot loop; a channel named twice in it, or in its own chain, is refused when
the rules load.

Everything here is pure: the consumers decide what to produce with
:func:`next_after_failure` and :func:`unread_step`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from router.durations import Duration
from schemas import Delivery
from schemas.errors import DecodeError

Trigger = Literal["failed", "unread"]
UNREAD_SOURCE = "inapp"
"""The only channel whose items can be read or not: ``unread_fallback`` applies to it."""


class UnreadFallback(BaseModel):
    """``unread_fallback: {after: 30m, channel: email}`` on a rule that sends in-app."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    after: Duration
    channel: str = "email"

    @field_validator("channel")
    @classmethod
    def _not_inapp(cls, value: str) -> str:
        if value == UNREAD_SOURCE:
            raise ValueError("unread_fallback cannot send through inapp itself")
        return value


def check_chains(channels: Sequence[str], chains: Mapping[str, Sequence[str]],
                 unread: UnreadFallback | None, valid_name: Callable[[str], bool]) -> None:
    """Raise ValueError naming the first problem in a rule's fallback configuration."""
    for channel, chain in chains.items():
        if channel not in channels:
            raise ValueError(f"fallback for {channel!r}, which is not one of the rule's channels")
        if not chain:
            raise ValueError(f"fallback for {channel!r} names no channel")
        for step in chain:
            if not valid_name(step):
                raise ValueError(f"fallback for {channel!r}: channel name {step!r} is not valid")
            if step == channel:
                raise ValueError(f"fallback for {channel!r} names {channel!r} itself")
        twice = sorted({c for c in chain if list(chain).count(c) > 1})
        if twice:
            raise ValueError(f"fallback for {channel!r} names {', '.join(twice)} twice (a chain may not loop)")
    if unread is not None:
        if UNREAD_SOURCE not in channels:
            raise ValueError("unread_fallback needs inapp among the rule's channels")
        if not valid_name(unread.channel):
            raise ValueError(f"unread_fallback: channel name {unread.channel!r} is not valid")


@dataclass(frozen=True, slots=True)
class Step:
    """One fallback delivery and what releases it."""

    trigger: Trigger
    delivery: Delivery
    after: timedelta = timedelta(0)
    """``unread`` only: how long after the in-app item was stored."""

    def to_json(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "after_ms": int(self.after.total_seconds() * 1000),
                "delivery": self.delivery.model_dump(mode="json", exclude={"fallback"})}

    @classmethod
    def from_json(cls, raw: Any) -> Step:
        if not isinstance(raw, dict) or raw.get("trigger") not in ("failed", "unread"):
            raise DecodeError(f"fallback step {str(raw)[:80]!r} is not a fallback step")
        try:
            delivery = Delivery.model_validate(raw["delivery"])
            after = timedelta(milliseconds=int(raw.get("after_ms", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"fallback step does not validate: {exc}") from exc
        return cls(raw["trigger"], delivery, after)


def encode_steps(steps: Sequence[Step]) -> str | None:
    """The ``fallback`` field's value: a JSON list, or None for no steps."""
    if not steps:
        return None
    return json.dumps([s.to_json() for s in steps], separators=(",", ":"), ensure_ascii=False)


def steps_of(delivery: Delivery) -> list[Step]:
    """The fallback steps a delivery carries; :class:`DecodeError` when the field is not readable."""
    if not delivery.fallback:
        return []
    try:
        raw = json.loads(delivery.fallback)
    except ValueError as exc:
        raise DecodeError(f"delivery {delivery.delivery_id}: fallback is not JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise DecodeError(f"delivery {delivery.delivery_id}: fallback is not a list")
    return [Step.from_json(item) for item in raw]


def chain_steps(channel: str, chains: Mapping[str, Sequence[str]], unread: UnreadFallback | None,
                reach: Callable[[str], Delivery | None]) -> list[Step]:
    """The steps a rule's delivery on ``channel`` carries.

    ``reach(channel)`` renders the delivery on a fallback channel, or returns None
    when the recipient cannot be reached there (no contact point, opted out, turned
    off in a preference); such a channel is left out of the chain.
    """
    steps: list[Step] = []
    for other in chains.get(channel, ()):
        delivery = reach(other)
        if delivery is not None:
            steps.append(Step("failed", delivery))
    if unread is not None and channel == UNREAD_SOURCE:
        delivery = reach(unread.channel)
        if delivery is not None:
            steps.append(Step("unread", delivery, unread.after))
    return steps


def next_after_failure(delivery: Delivery, now: datetime) -> Delivery | None:
    """The delivery to send when ``delivery`` failed for good, or None when its chain is done.

    The next one carries the rest of the chain, and a deadline as far from ``now``
    as the failed one's was from its creation (the first channel may have used
    its whole time retrying).
    """
    failed = [s for s in steps_of(delivery) if s.trigger == "failed"]
    if not failed:
        return None
    first, rest = failed[0], failed[1:]
    update: dict[str, Any] = {"fallback": encode_steps(rest), "attempt": 0}
    if delivery.deadline is not None:
        update["deadline"] = now + max(delivery.deadline - delivery.created_at, timedelta(0))
    return first.delivery.model_copy(update=update)


def unread_step(delivery: Delivery) -> Step | None:
    """The ``unread`` step an in-app delivery carries, if any."""
    if delivery.channel != UNREAD_SOURCE or not delivery.fallback:
        return None
    return next((s for s in steps_of(delivery) if s.trigger == "unread"), None)


UnreadVerdict = Literal["send", "read", "gone"]


def unread_verdict(is_unread: bool | None) -> UnreadVerdict:
    """What a due unread fallback does, given the in-app item's state.

    ``True`` (still unread): send. ``False`` (read): not needed. ``None`` (no
    longer in the inbox: dismissed, expired or pushed out by the cap): not
    needed either; a dismissed item was seen, and one that expired is no longer
    worth telling.
    """
    if is_unread is None:
        return "gone"
    return "send" if is_unread else "read"


def released(step: Step, now: datetime) -> Delivery:
    """An unread step's delivery as it goes out at ``now``, with a fresh deadline."""
    d = step.delivery
    if d.deadline is None:
        return d
    return d.model_copy(update={"deadline": now + max(d.deadline - d.created_at, timedelta(0))})
