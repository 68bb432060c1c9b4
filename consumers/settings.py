"""Every setting Tidings reads, typed, frozen and read in one place.

Each field maps to an environment variable with the ``TIDINGS_`` prefix, for
example ``kafka_bootstrap`` <- ``TIDINGS_KAFKA_BOOTSTRAP``. librdkafka options
pass through in two ways, merged in this order:

* ``TIDINGS_KAFKA_OPTIONS`` as a JSON object, ``{"security.protocol": "SASL_SSL"}``;
* one variable per option, ``TIDINGS_LIBRDKAFKA_SASL_MECHANISM=PLAIN`` becomes
  ``sasl.mechanism`` (underscores after the prefix become dots).

Secrets (SMTP password, webhook signing secret, inbox token secret, Telegram bot
token, Twilio auth token, passwords in URLs, librdkafka
options whose name mentions a password, secret or key) never show in ``repr``,
``str`` or :meth:`Settings.describe`.
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.retry import Tier, parse_ladder
from schemas.errors import ConfigError

ENV_PREFIX = "TIDINGS_"
LIBRDKAFKA_PREFIX = "TIDINGS_LIBRDKAFKA_"
_SECRET_OPTION = re.compile(r"password|secret|jaas|\.key$|key\.pem|token", re.I)
# The password runs to the LAST '@' before the host: redis-py accepts "p@ss" unencoded.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<pw>[^/]*)@", re.I)


def mask_url_password(url: str) -> str:
    """``redis://:pw@host`` -> ``redis://:***@host``."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)


def mask_options(options: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if _SECRET_OPTION.search(k) else v) for k, v in options.items()}


def _networks(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


class Settings(BaseSettings):
    """Configuration of every Tidings process."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = "localhost:9092"
    kafka_options: dict[str, str] = Field(default_factory=dict, repr=False)
    topic_prefix: str = "tidings."
    events_topic: str | None = None
    """Domain events topic; default ``<prefix>events``."""
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    schema_registry_url: str | None = None
    group_prefix: str = "tidings-"

    # Redis
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)

    # Routing
    rules: Path = Path("config/rules.yaml")
    templates: Path | None = None
    """Template directory; default ``templates/`` beside the rules file."""
    dedup_ttl_seconds: int = Field(default=7 * 86400, ge=60)
    delivery_deadline_seconds: int = Field(default=24 * 3600, ge=1)
    fanout_page_size: int = Field(default=1000, ge=1, le=50_000)
    """Subscribers read, decided and acknowledged per fan-out step (one checkpoint each)."""
    release_interval: float = Field(default=1.0, gt=0)
    """Seconds between two looks for held deliveries and digests that are due."""
    release_lease_seconds: int = Field(default=60, ge=1)
    """How long a claimed release stays invisible to other router replicas."""
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8088, ge=0, le=65535)

    # Consumer runtime
    batch_size: int = Field(default=500, ge=1, le=100_000)
    poll_timeout: float = Field(default=0.5, gt=0)
    batch_linger: float = Field(default=0.0, ge=0, le=1.0)
    """Seconds a batch waits for more records once the first has arrived (unless it is full):
    fewer, larger batches cost less CPU per record, but each hop's latency grows by more than the
    linger (B4 in docs/performance.md)."""
    max_in_flight: int = Field(default=64, ge=1)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The channel consumers' event loop: uvloop (libuv, a quarter to a third less CPU per webhook
    delivery, docs/performance.md) or the standard library's."""
    retry_tiers: str = "10s,1m,10m,1h"
    """Delays of the retry topics ``<prefix>deliver.<channel>.retry.<delay>``, comma-separated."""
    retry_max_attempts: int = Field(default=5, ge=1, le=100)
    """Attempts (the first one included) before a transiently failing delivery is dead-lettered."""
    retry_jitter: float = Field(default=0.1, ge=0, le=1)
    """Up to this fraction of a tier's delay is added at random, to spread retries."""
    stale_to_dlq: bool = False
    """Dead-letter deliveries past their deadline instead of dropping them (with a status) as stale."""
    breaker_threshold: int = Field(default=5, ge=1)
    """Consecutive transient failures of one provider endpoint that open its circuit breaker."""
    breaker_cooldown: float = Field(default=30.0, gt=0)
    """Seconds an open breaker waits before letting one probe through (half-open)."""
    sent_ttl_seconds: int = Field(default=30 * 86400, ge=60)
    shutdown_timeout: float = Field(default=20.0, gt=0)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the pod
    metrics_port: int = Field(default=9400, ge=-1, le=65535)
    """0 picks a free port; -1 serves no HTTP endpoints (tests, embedded use)."""
    log_level: str = "INFO"
    channel_modules: str | None = None
    """Extra channels, ``module:Class,module:Class``."""

    # Email (SMTP)
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_from: str = "Tidings <notifications@localhost>"
    smtp_timeout: float = 10.0
    smtp_pool_size: int = Field(default=8, ge=1)
    smtp_validate_certs: bool = True
    smtp_local_hostname: str | None = None
    """EHLO name; default: this machine's name, looked up once."""
    smtp_message_id_domain: str = "tidings.local"
    smtp_max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    """Attachments per email, in total; a delivery over it is dead-lettered."""
    smtp_max_attachments: int = Field(default=10, ge=0)
    smtp_attachment_allow_private: str = ""
    """Comma-separated CIDR networks attachment URLs may point into although not public."""

    # Webhook
    webhook_signing_secret: SecretStr | None = None
    webhook_timeout: float = 10.0
    webhook_auth: SecretStr | None = None
    """JSON: URL prefix -> credential (bearer, basic or an API-key header); see docs/channels.md."""
    webhook_allow_private: str = ""
    """Comma-separated CIDR networks the SSRF guard lets through although they are not public."""
    webhook_max_redirects: int = Field(default=0, ge=0, le=5)
    webhook_per_second: float | None = Field(default=None, gt=0)
    """Requests a second to one receiver (scheme, host, port); unset: only 429 pauses space them."""

    # In-app inbox (channels.inapp): the store, the API server and its user tokens
    inbox_max_items: int = Field(default=200, ge=1, le=10_000)
    """Entries kept per inbox; the oldest are dropped beyond it."""
    inbox_max_age_seconds: int = Field(default=30 * 86400, ge=60)
    """Default and longest lifetime of an inbox entry (an event's expires_at may shorten it)."""
    inbox_stream_length: int = Field(default=1000, ge=10)
    """Change events kept per inbox for live clients that reconnect."""
    inbox_secret: SecretStr | None = None
    """HMAC key that signs user tokens for the inbox API (at least 16 characters)."""
    inbox_token_ttl_seconds: int = Field(default=12 * 3600, ge=60)
    """Lifetime of a token made by ``tidings inbox token``."""
    inbox_host: str = "127.0.0.1"
    inbox_port: int = Field(default=8070, ge=0, le=65535)
    inbox_heartbeat_seconds: float = Field(default=15.0, gt=0)
    """Longest silence on a live stream before a keep-alive comment is sent."""
    inbox_max_streams: int = Field(default=500, ge=1)
    """Live streams one inbox server holds open at once (each waits on its own Redis connection)."""
    # Chat and SMS providers (each base URL points at the provider's API; tests and make run use local stand-ins)
    slack_base_url: str = "https://hooks.slack.com"
    slack_timeout: float = Field(default=10.0, gt=0)
    discord_base_url: str = "https://discord.com"
    discord_timeout: float = Field(default=10.0, gt=0)
    discord_username: str | None = None
    telegram_base_url: str = "https://api.telegram.org"
    telegram_bot_token: SecretStr | None = None
    telegram_timeout: float = Field(default=10.0, gt=0)
    teams_base_url: str | None = None
    """Unset: post to each Teams address as given; set: replace its scheme and host (a local stand-in)."""
    teams_timeout: float = Field(default=10.0, gt=0)
    sms_base_url: str = "https://api.twilio.com"
    sms_account_sid: str | None = None
    sms_auth_token: SecretStr | None = None
    sms_api_key_sid: str | None = None
    sms_from: str | None = None
    sms_messaging_service_sid: str | None = None
    sms_max_segments: int = Field(default=4, ge=1, le=10)
    sms_per_second: float | None = Field(default=None, gt=0)
    sms_timeout: float = Field(default=10.0, gt=0)

    @field_validator("retry_tiers")
    @classmethod
    def _tiers(cls, value: str) -> str:
        parse_ladder(value)
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]*", value):
            raise ValueError("topic prefix may hold only letters, digits, '.', '_' and '-'")
        return value

    # -- derived ----------------------------------------------------------

    @cached_property
    def librdkafka(self) -> dict[str, str]:
        """Pass-through options: the JSON object, then per-option variables."""
        options = dict(self.kafka_options)
        for name, value in os.environ.items():
            if name.startswith(LIBRDKAFKA_PREFIX):
                options[name[len(LIBRDKAFKA_PREFIX) :].lower().replace("_", ".")] = value
        return options

    @property
    def template_dir(self) -> Path:
        return self.templates or self.rules.parent / "templates"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def input_topic(self) -> str:
        return self.events_topic or self.topic("events")

    @property
    def status_topic(self) -> str:
        return self.topic("status")

    @property
    def router_dlq_topic(self) -> str:
        return self.topic("router.dlq")

    def deliver_topic(self, channel: str, lane: str = "normal") -> str:
        """``deliver.<channel>``, or ``deliver.<channel>.urgent`` for the urgent lane."""
        return self.topic(f"deliver.{channel}" if lane == "normal" else f"deliver.{channel}.{lane}")

    def channel_dlq_topic(self, channel: str) -> str:
        return self.topic(f"deliver.{channel}.dlq")

    @property
    def retry_ladder(self) -> tuple[Tier, ...]:
        # not cached: model_copy(update=...) would carry a cached ladder over
        return parse_ladder(self.retry_tiers)

    def retry_topic(self, channel: str, tier: str) -> str:
        return self.topic(f"deliver.{channel}.retry.{tier}")

    def retry_topics(self, channel: str) -> list[str]:
        return [self.retry_topic(channel, t.label) for t in self.retry_ladder]

    def group(self, role: str) -> str:
        return f"{self.group_prefix}{role}"

    def channel_config(self, channel: str) -> dict[str, Any]:
        """Configuration handed to a built-in channel's ``from_config``."""
        if channel == "email":
            return {
                "host": self.smtp_host,
                "port": self.smtp_port,
                "username": self.smtp_username,
                "password": self.smtp_password,
                "security": self.smtp_security,
                "from_address": self.smtp_from,
                "timeout": self.smtp_timeout,
                "pool_size": self.smtp_pool_size,
                "validate_certs": self.smtp_validate_certs,
                "local_hostname": self.smtp_local_hostname,
                "message_id_domain": self.smtp_message_id_domain,
                "max_attachment_bytes": self.smtp_max_attachment_bytes,
                "max_attachments": self.smtp_max_attachments,
                "attachment_allow_networks": _networks(self.smtp_attachment_allow_private),
            }
        if channel == "webhook":
            return {
                "signing_secret": self.webhook_signing_secret,
                "timeout": self.webhook_timeout,
                "auth": self._webhook_auth(),
                "allow_networks": _networks(self.webhook_allow_private),
                "max_redirects": self.webhook_max_redirects,
                "per_second": self.webhook_per_second,
            }
        if channel == "inapp":
            return {
                "redis_url": SecretStr(self.redis_url),
                "max_items": self.inbox_max_items,
                "max_age_seconds": self.inbox_max_age_seconds,
                "stream_length": self.inbox_stream_length,
            }
        provider = self._provider_config(channel)
        if provider is not None:
            return {k: v for k, v in provider.items() if v is not None}
        prefix = f"{ENV_PREFIX}{channel.upper()}_"
        return {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}

    def _webhook_auth(self) -> dict[str, Any]:
        if self.webhook_auth is None or not self.webhook_auth.get_secret_value().strip():
            return {}
        try:
            value = json.loads(self.webhook_auth.get_secret_value())
        except ValueError:
            # The text is a secret: say where the JSON breaks, never what it holds.
            raise ConfigError("TIDINGS_WEBHOOK_AUTH is not valid JSON") from None
        if not isinstance(value, dict):
            raise ConfigError("TIDINGS_WEBHOOK_AUTH must be a JSON object: URL prefix -> credential")
        return value

    def _provider_config(self, channel: str) -> dict[str, Any] | None:
        if channel == "slack":
            return {"base_url": self.slack_base_url, "timeout": self.slack_timeout}
        if channel == "discord":
            return {"base_url": self.discord_base_url, "timeout": self.discord_timeout,
                    "username": self.discord_username}
        if channel == "telegram":
            return {"base_url": self.telegram_base_url, "timeout": self.telegram_timeout,
                    "bot_token": self.telegram_bot_token}
        if channel == "teams":
            return {"base_url": self.teams_base_url, "timeout": self.teams_timeout}
        if channel == "sms":
            return {
                "base_url": self.sms_base_url,
                "timeout": self.sms_timeout,
                "account_sid": self.sms_account_sid,
                "auth_token": self.sms_auth_token,
                "api_key_sid": self.sms_api_key_sid,
                "from_number": self.sms_from,
                "messaging_service_sid": self.sms_messaging_service_sid,
                "max_segments": self.sms_max_segments,
                "per_second": self.sms_per_second,
            }
        return None

    def describe(self) -> dict[str, Any]:
        """Every setting with secrets masked: safe to log."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***"
            elif name == "redis_url" or (name == "schema_registry_url" and value):
                value = mask_url_password(value)
            elif name == "kafka_options":
                value = mask_options(value)
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["librdkafka"] = mask_options(self.librdkafka)
        return out

    def __repr_args__(self) -> Any:
        return [(k, v) for k, v in self.describe().items() if k not in {"librdkafka"}]
