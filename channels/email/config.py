"""Configuration of the email channel (built from the ``TIDINGS_SMTP_*`` settings)."""

from __future__ import annotations

import email.utils
from typing import Literal

from pydantic import SecretStr, field_validator

from channels.base import ChannelConfig


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
    pool_size: int = 4
    """At most this many SMTP sessions open at once; more sends wait for one."""
    max_idle: float = 60.0
    """A session idle for longer is closed instead of reused."""

    @field_validator("from_address")
    @classmethod
    def _from_has_mailbox(cls, value: str) -> str:
        _, addr = email.utils.parseaddr(value)
        if "@" not in addr:
            raise ValueError(f"from_address {value!r} has no mailbox (expected 'Name <user@domain>')")
        return value

    @field_validator("pool_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("pool_size must be at least 1")
        return value
