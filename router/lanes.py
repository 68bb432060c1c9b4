"""Priority lanes: an urgent delivery never waits behind a bulk backlog.

Priorities are ``low``, ``normal``, ``high`` and ``urgent``. Deliveries of
the first three share the channel's topic, ``tidings.deliver.<channel>``;
urgent ones go to their own topic, ``tidings.deliver.<channel>.urgent``, read
by its own consumer group (``tidings deliver <channel> --lane urgent``). A
backlog of any size on the bulk topic therefore sits in another group's lag
and cannot delay an urgent alert: the urgent consumer has nothing in front of
it but other urgent deliveries. Urgent also bypasses frequency caps, quiet
hours and digests (see docs/routing.md).

A single process without a dedicated urgent consumer still delivers urgent
records: ``tidings deliver <channel>`` without ``--lane`` reads both topics
(no isolation then; production runs one Deployment per lane).
"""

from __future__ import annotations

from typing import Literal

from schemas import Priority

Lane = Literal["normal", "urgent"]
LANES: tuple[Lane, ...] = ("normal", "urgent")


def lane_for(priority: Priority) -> Lane:
    return "urgent" if priority is Priority.urgent else "normal"


def bypasses_holds(priority: Priority) -> bool:
    """Urgent deliveries are never capped, held for quiet hours or put in a digest."""
    return priority is Priority.urgent


def topic_suffix(lane: Lane) -> str:
    """What follows ``deliver.<channel>`` in the lane's topic name."""
    return "" if lane == "normal" else f".{lane}"
