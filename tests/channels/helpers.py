"""Driving one channel instance through a few sends, as the consumer would."""

from __future__ import annotations

from typing import Any

from channels.base import Channel
from schemas import Delivery


async def send_each(channel: Channel, deliveries: tuple[Delivery, ...], catch: type[Exception]) -> list[Any]:
    """Send each delivery in turn on ``channel``; return Sent or the raised error; close the channel."""
    results: list[Any] = []
    try:
        for delivery in deliveries:
            try:
                results.append(await channel.send(delivery))
            except catch as exc:
                results.append(exc)
    finally:
        await channel.aclose()
    return results
