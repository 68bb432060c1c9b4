"""Configuration of the email channel (built from the ``TIDINGS_SMTP_*`` settings)."""

from __future__ import annotations

import email.utils
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from channels.base import ChannelConfig
from channels.netguard import parse_networks

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


class EmailConfig(ChannelConfig):
    """SMTP relay settings. ``password`` is a SecretStr: hidden in repr and logs."""

    host: str = "localhost"
    port: int = 25
    username: str | None = None
    password: SecretStr | None = None
    security: Literal["none", "starttls", "tls"] = "none"
    """``none``: plain SMTP, no upgrade even if offered; ``starttls``: upgrade or
    fail; ``tls``: TLS from the first byte (implicit TLS, usually port 465)."""
    validate_certs: bool = True
    ca_file: str | None = None
    """PEM file of CA certificates to trust instead of the system store."""
    from_address: str = "Tidings <notifications@localhost>"
    message_id_domain: str = "tidings.local"
    local_hostname: str | None = None
    """Name sent in EHLO; default: this machine's fully qualified name."""
    timeout: float = 10.0
    """Seconds allowed for each SMTP command, and for connecting."""
    pool_size: int = 8
    """At most this many SMTP sessions open at once; more sends wait for one. Relays often
    limit the connections one client may hold open: lower it to theirs."""
    max_idle: float = 60.0
    """A session idle for longer is closed instead of reused."""
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    """Attachments per message, in total; a delivery over it is dead-lettered."""
    max_attachments: int = Field(default=10, ge=0)
    attachment_timeout: float = Field(default=30.0, gt=0)
    """Seconds to fetch one attachment by URL."""
    attachment_allow_networks: tuple[str, ...] = ()
    """CIDR networks attachment URLs may point into although not public (the SSRF guard)."""

    @field_validator("attachment_allow_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)
        return value

    @field_validator("from_address")
    @classmethod
    def _from_has_mailbox(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("from_address contains a line break or another control character")
        _, addr = email.utils.parseaddr(value)
        if "@" not in addr:
            raise ValueError(f"from_address {value!r} has no mailbox (expected 'Name <user@domain>')")
        if not addr.isascii() or " " in addr:
            raise ValueError(f"from_address {value!r}: the mailbox must be ASCII, without spaces")
        return value

    @field_validator("message_id_domain")
    @classmethod
    def _domain_is_a_token(cls, value: str) -> str:
        if not _DOMAIN.fullmatch(value):
            raise ValueError(f"message_id_domain {value!r} must be a domain name (letters, digits, dots, hyphens)")
        return value

    @field_validator("pool_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("pool_size must be at least 1")
        return value
