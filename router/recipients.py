"""Recipients: who can be reached, where, in which language and time zone.

A recipient document::

    id: u-1001                 # the user id events carry in ce_subject
    tenant: default            # optional, default "default"
    name: Ada Lovelace         # optional
    locale: en                 # BCP 47 tag, picks template variants
    timezone: Europe/London    # IANA name
    contacts:                  # contact point per channel
      email: ada@example.com
      webhook: https://hooks.example.com/ada
    opt_out: [webhook]         # channels this person turned off
    quiet_hours: {start: "22:00", end: "07:00"}   # optional, local time

``tidings recipients load FILE`` validates every entry first and writes none
unless all are valid; then it writes them in one MULTI/EXEC transaction, so
a file is never half-loaded.

Contact points get a structural check here (an email contact has one ``@``
and no spaces; a webhook contact is an http(s) URL with a host). The channel
does the full check at send time and dead-letters what it cannot use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from redis import Redis

from router import keys
from router.quiet_hours import QuietHours
from schemas.cloudevents import DEFAULT_TENANT
from schemas.errors import ConfigError, InputError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,199}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


class RecipientError(InputError):
    """A recipient document is invalid; ``position`` is its 1-based place in the file."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class Recipient(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    tenant: str = DEFAULT_TENANT
    name: str | None = None
    locale: str = "en"
    timezone: str = "UTC"
    contacts: dict[str, str] = Field(default_factory=dict)
    opt_out: frozenset[str] = frozenset()
    quiet_hours: QuietHours | None = None

    @field_validator("id", "tenant")
    @classmethod
    def _ident(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"{value!r} is not a valid identifier (letters, digits, _.@:+-; at most 200)")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        if not _LOCALE.match(value):
            raise ValueError(f"{value!r} is not a BCP 47 language tag")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @field_validator("contacts")
    @classmethod
    def _strip(cls, value: dict[str, str]) -> dict[str, str]:
        return {k: v.strip() for k, v in value.items()}

    @model_validator(mode="after")
    def _contacts(self) -> Recipient:
        for channel, address in self.contacts.items():
            problem = contact_problem(channel, address)
            if problem:
                raise ValueError(f"contacts.{channel}: {problem}")
        return self

    def address(self, channel: str) -> str | None:
        return self.contacts.get(channel)

    def opted_out(self, channel: str) -> bool:
        return channel in self.opt_out

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Recipient:
        return cls.model_validate_json(raw)


def contact_problem(channel: str, address: str) -> str | None:
    """A structural problem with a contact point, or None."""
    if not address.strip():
        return "empty contact point"
    if channel == "email":
        if address.count("@") != 1 or any(c.isspace() for c in address.strip()):
            return "an email address needs exactly one '@' and no spaces"
    elif channel == "webhook":
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "a webhook contact must be an http(s) URL with a host"
    return None


def parse_documents(raw: Any, origin: str) -> list[Recipient]:
    """Validate every entry; raise :class:`RecipientError` naming the first bad one's position."""
    entries = raw.get("recipients") if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise RecipientError(f"{origin}: expected a list of recipients (or a mapping with 'recipients')")
    out: list[Recipient] = []
    seen: set[tuple[str, str]] = set()
    for position, entry in enumerate(entries, start=1):
        try:
            recipient = Recipient.model_validate(entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "entry"
            ident = entry.get("id") if isinstance(entry, dict) else None
            label = f" (id {ident!r})" if ident else ""
            raise RecipientError(
                f"{origin}: entry #{position}{label}: {where}: {err['msg']}", position
            ) from None
        key = (recipient.tenant, recipient.id)
        if key in seen:
            raise RecipientError(f"{origin}: entry #{position}: duplicate id {recipient.id!r}", position)
        seen.add(key)
        out.append(recipient)
    return out


def read_file(path: Path) -> list[Recipient]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RecipientError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    return parse_documents(raw, str(path))


class RecipientStore:
    """Recipients in Redis (see :mod:`router.keys`)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def put_many(self, recipients: Sequence[Recipient]) -> int:
        """Write all of them in one transaction: all or none."""
        pipe = self.redis.pipeline(transaction=True)
        for r in recipients:
            pipe.set(keys.recipient(r.tenant, r.id), r.to_json())
            pipe.sadd(keys.recipient_index(r.tenant), r.id)
        pipe.execute()
        return len(recipients)

    def load_file(self, path: Path) -> int:
        return self.put_many(read_file(path))

    def get(self, tenant: str, user: str) -> Recipient | None:
        raw = self.redis.get(keys.recipient(tenant, user))
        return Recipient.from_json(raw) if raw else None

    def remove(self, tenant: str, user: str) -> bool:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.recipient(tenant, user))
        pipe.srem(keys.recipient_index(tenant), user)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def ids(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        return sorted(m.decode() if isinstance(m, bytes) else str(m)
                      for m in self.redis.smembers(keys.recipient_index(tenant)))

