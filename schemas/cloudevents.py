"""CloudEvents 1.0 binary mode over Kafka headers.

Attributes travel as headers with the ``ce_`` prefix (the Kafka protocol
binding); the value is the Avro-encoded data. ``ce_tenant`` is our extension
attribute. ``content-type`` says ``application/avro``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.errors import MissingHeaderError

CONTENT_TYPE = "application/avro"
SPECVERSION = "1.0"
REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type")
DEFAULT_TENANT = "default"

Headers = Sequence[tuple[str, bytes | str | None]]


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """The context attributes of one event; ``data`` travels separately as Avro."""

    id: str
    source: str
    type: str
    time: datetime
    subject: str | None = None
    tenant: str = DEFAULT_TENANT
    specversion: str = SPECVERSION

    @classmethod
    def new(
        cls,
        type: str,
        *,
        source: str,
        subject: str | None = None,
        id: str | None = None,
        tenant: str | None = None,
        time: datetime | None = None,
    ) -> CloudEvent:
        return cls(
            id=id or str(uuid.uuid4()),
            source=source,
            type=type,
            time=time or datetime.now(UTC),
            subject=subject,
            tenant=tenant or DEFAULT_TENANT,
        )

    @property
    def identity(self) -> tuple[str, str]:
        """``(source, id)``: unique per distinct event by the CloudEvents rule."""
        return (self.source, self.id)

    def to_headers(self) -> list[tuple[str, bytes]]:
        headers = [
            ("ce_specversion", self.specversion.encode()),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", format_time(self.time).encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ]
        if self.subject is not None:
            headers.append(("ce_subject", self.subject.encode()))
        if self.tenant != DEFAULT_TENANT:
            headers.append(("ce_tenant", self.tenant.encode()))
        return headers

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | str | None]] | None) -> CloudEvent:
        """Read the attributes; raise :class:`MissingHeaderError` naming what is absent."""
        found: dict[str, str] = {}
        for key, value in headers or ():
            if key.startswith("ce_") and value is not None:
                found[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not all(found.get(name) for name in REQUIRED):
            missing = [name for name in REQUIRED if not found.get(name)]
            raise MissingHeaderError(f"missing CloudEvents header(s): {', '.join(missing)}")
        if found["ce_specversion"] != SPECVERSION:
            raise MissingHeaderError(
                f"unsupported ce_specversion {found['ce_specversion']!r}, expected {SPECVERSION}"
            )
        raw_time = found.get("ce_time")
        try:
            time = _parse_time_cached(raw_time) if raw_time else datetime.now(UTC)
        except ValueError:
            raise MissingHeaderError(f"ce_time {raw_time!r} is not an RFC 3339 timestamp") from None
        return cls(
            id=found["ce_id"],
            source=found["ce_source"],
            type=found["ce_type"],
            time=time,
            subject=found.get("ce_subject") or None,
            tenant=found.get("ce_tenant") or DEFAULT_TENANT,
        )


@functools.lru_cache(maxsize=4096)
def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def _parse_time_cached(text: str) -> datetime:
    # Events published together share a millisecond timestamp more often than not.
    return parse_time(text)
