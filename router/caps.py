"""Frequency caps per recipient x channel (optionally x category), across all rules.

Declared once in the rules file (seed 004: "10 an hour and 100 a day")::

    caps:
      - {channel: email, per_hour: 10, per_day: 100}
      - {channel: "*", category: marketing, per_day: 3}

Every immediate delivery counts against each cap that applies to it (channel
equal or ``*``; category equal, or the cap has none) in fixed calendar
windows (the UTC hour, the UTC day). Over a cap, the rule says what happens:
``over_cap: drop`` (a ``skipped`` status with reason ``frequency_cap``) or
``over_cap: digest`` (into the next digest for that channel). Urgent
deliveries are neither counted nor capped.

The counts come from Redis in the batch's one read; :class:`CapBook` then
counts the batch's own deliveries in memory so that ten events for one person
in one batch see each other, and hands back the increments to write.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router import keys

WINDOWS = {"hour": 3600, "day": 86400}


class CapLimit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: str = "*"
    category: str | None = None
    per_hour: int | None = Field(default=None, ge=1)
    per_day: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _some(self) -> CapLimit:
        if self.per_hour is None and self.per_day is None:
            raise ValueError("a cap needs per_hour or per_day")
        return self

    def applies(self, channel: str, category: str | None) -> bool:
        return self.channel in ("*", channel) and (self.category is None or self.category == category)

    def windows(self) -> Iterator[tuple[str, int]]:
        if self.per_hour is not None:
            yield "hour", self.per_hour
        if self.per_day is not None:
            yield "day", self.per_day


@dataclass(frozen=True, slots=True)
class Counter:
    key: str
    limit: int
    ttl: int
    label: str
    """``email/*/hour<=10``: names the cap in a status detail."""


def window_id(window: str, now: datetime) -> str:
    size = WINDOWS[window]
    return f"{window[0]}{int(now.timestamp()) // size}"


def counters(limits: Sequence[CapLimit], tenant: str, user: str, channel: str, category: str | None,
             now: datetime) -> list[Counter]:
    """The counters one delivery would count against."""
    out = []
    for cap in limits:
        if not cap.applies(channel, category):
            continue
        cat = cap.category or "*"
        for window, limit in cap.windows():
            out.append(Counter(keys.cap(tenant, user, cap.channel, cat, window_id(window, now)), limit,
                               WINDOWS[window] + 60, f"{cap.channel}/{cat}/{window}<={limit}"))
    return out


@dataclass
class CapBook:
    """Counts as read from Redis plus this batch's own deliveries."""

    counts: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)
    ttls: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> CapBook:
        return cls(counts=dict(counts))

    def over(self, wanted: Sequence[Counter]) -> Counter | None:
        """The first cap this delivery would exceed, or None."""
        for c in wanted:
            if self.counts.get(c.key, 0) + self.taken.get(c.key, 0) >= c.limit:
                return c
        return None

    def take(self, wanted: Sequence[Counter]) -> None:
        for c in wanted:
            self.taken[c.key] = self.taken.get(c.key, 0) + 1
            self.ttls[c.key] = c.ttl
