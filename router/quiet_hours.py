"""Quiet hours (do not disturb) in the recipient's own time zone (seed 003).

A recipient may carry ``quiet_hours: {start: "22:00", end: "07:00"}``; a
window whose start is after its end runs over midnight. During the window a
non-urgent delivery is held until the window ends (``quiet_hours: hold``, the
default for a rule), or collected with the others into one digest sent when
it ends (``quiet_hours: digest``), or sent anyway (``quiet_hours: ignore``).
Urgent deliveries always go at once. A rule's ``stale_after`` drops what
would arrive too late: a held delivery whose release time is past the event
time plus ``stale_after`` is dropped with a ``skipped`` status, reason
``stale``.

Times are wall-clock times in the recipient's IANA zone; the end is computed
on the local date, so a window keeps its local hours across DST changes.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, model_validator


class QuietHours(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    start: time
    end: time

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours start and end must differ")
        return self


def quiet_until(now: datetime, timezone: str, quiet: QuietHours | None) -> datetime | None:
    """When the quiet window that contains ``now`` ends (aware), or None when not in one."""
    if quiet is None:
        return None
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    today = local.date()
    if quiet.start < quiet.end:
        if quiet.start <= t < quiet.end:
            return datetime.combine(today, quiet.end, tzinfo=zone)
        return None
    if t >= quiet.start:
        return datetime.combine(today + timedelta(days=1), quiet.end, tzinfo=zone)
    if t < quiet.end:
        return datetime.combine(today, quiet.end, tzinfo=zone)
    return None
