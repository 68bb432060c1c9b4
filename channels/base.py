"""The contract every channel implements.

A channel turns one :class:`~schemas.Delivery` into one provider call. It
declares its ``name``, its configuration model and its provider limits as
class attributes, and implements a single ``async send`` that returns a
:class:`Sent` or raises a :class:`~schemas.errors.DeliveryError` subclass:

* :class:`~schemas.errors.TransientError` - try again later;
* :class:`~schemas.errors.RateLimitedError` - try again after ``retry_after``;
* :class:`~schemas.errors.PermanentError` - dead-letter it.

Channels know nothing of Kafka or Redis; the consumers own retries, marks and
offsets. A channel never puts a secret or a full contact point in an error
message: use :func:`mask_email` and friends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from schemas import Delivery
from schemas.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Sent:
    """The provider accepted the message."""

    provider_id: str | None = None
    detail: str | None = None


class ChannelConfig(BaseModel):
    """Base for channel configuration models (frozen, unknown keys refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class Limits:
    """Provider limits a channel declares; the consumer honours them."""

    max_in_flight: int = 16
    """How many sends may be outstanding at once."""
    per_second: float | None = None
    """Sustained rate the provider allows per endpoint, if it documents one."""


class Channel(ABC):
    """Base class of every channel, built-in or third-party."""

    name: ClassVar[str]
    config_model: ClassVar[type[ChannelConfig]]
    limits: ClassVar[Limits] = Limits()

    @classmethod
    def from_config(cls, config: ChannelConfig | dict[str, Any]) -> Channel:
        """Build from a config model or a plain dict; a bad or missing setting is a :class:`ConfigError`."""
        if isinstance(config, cls.config_model):
            return cls(config)
        try:
            model = cls.config_model.model_validate(config)
            return cls(model)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"channel {cls.name!r} is not configured correctly: {problems}") from None
        except ValueError as exc:
            raise ConfigError(f"channel {cls.name!r} is not configured correctly: {exc}") from None

    @abstractmethod
    def __init__(self, config: Any) -> None: ...

    @abstractmethod
    async def send(self, delivery: Delivery) -> Sent:
        """Deliver once. Return :class:`Sent` or raise a DeliveryError subclass."""

    def max_in_flight(self) -> int:
        """Sends this instance can have outstanding; the declared limit unless configuration narrows it."""
        return self.limits.max_in_flight

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once at shutdown."""


def mask_email(address: str) -> str:
    """``alice@example.com`` -> ``a***@example.com``: enough to debug, not to harvest."""
    local, sep, domain = address.partition("@")
    if not sep:
        return mask_secret(address)
    return f"{local[:1]}***@{domain}"


def mask_secret(value: str, keep: int = 0) -> str:
    if not value:
        return ""
    return (value[:keep] if keep else "") + "***"


def mask_url(url: str) -> str:
    """Keep scheme, host and the first path segment; hide the rest (tokens often live there)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]  # drop credentials in the authority
    first = path.split("/", 1)[0] if path else ""
    return f"{scheme}://{host}/{first}{'/***' if '/' in path or '?' in path else ''}"
