"""Channels: turn one Delivery into one provider call and classify the outcome.

Each channel lives in its own module and is found by name through
:mod:`channels.registry` (built-ins, the ``tidings.channels`` entry-point
group and ``TIDINGS_CHANNEL_MODULES``), so importing this package does not
import any provider library. This package imports nothing of ours but
``schemas``.
"""

from channels.base import Channel, ChannelConfig, Limits, Sent, mask_email, mask_secret, mask_url
from channels.registry import available_channels, load_channel_class

__all__ = [
    "Channel",
    "ChannelConfig",
    "Limits",
    "Sent",
    "available_channels",
    "load_channel_class",
    "mask_email",
    "mask_secret",
    "mask_url",
]
