"""The error tree shared by every package.

::

    TidingsError
    ├── ConfigError                  bad settings, rules or templates found at start
    ├── InputError                   an event the router cannot process: dead-lettered
    │   ├── DecodeError              bytes that are not a framed Avro record we know
    │   ├── SchemaMismatchError      data that does not fit its schema
    │   ├── MissingHeaderError       a CloudEvents attribute the router needs is absent
    │   └── TemplateError            a template that fails for this event
    └── DeliveryError                a channel could not deliver (raised by channels)
        ├── TransientError           try again later: network, timeout, 5xx
        │   └── RateLimitedError     try again no sooner than ``retry_after`` seconds
        └── PermanentError           retrying cannot help: 4xx, invalid address
            └── InvalidAddressError  the contact point itself is unusable

The consumers pick the path from the class: transient goes to a retry,
rate-limited waits at least as long as asked, permanent and input errors go
straight to a dead-letter topic with the class name as the reason.
Messages never contain secrets: callers pass masked values.
"""

from __future__ import annotations


class TidingsError(Exception):
    """Root of every error Tidings raises on purpose."""

    @property
    def reason(self) -> str:
        """Short machine-readable reason, used in DLQ headers and status events."""
        return type(self).__name__


class ConfigError(TidingsError):
    """Settings, rules or templates are invalid; raised at start, never mid-stream."""


class InputError(TidingsError):
    """An input record cannot be processed; it is dead-lettered, never retried."""


class DecodeError(InputError):
    """The value is not a framed Avro record with a known writer schema."""


class SchemaMismatchError(InputError):
    """Data does not fit its schema; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MissingHeaderError(InputError):
    """A required CloudEvents header is absent or empty."""


class TemplateError(InputError):
    """A template failed to render for this event (missing field, bad syntax)."""


class DeliveryError(TidingsError):
    """A channel failed to deliver. Subclasses say whether to retry."""


class TransientError(DeliveryError):
    """A failure that may pass: network errors, timeouts, 5xx answers."""


class RateLimitedError(TransientError):
    """The provider asked us to slow down (429); wait at least ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Retrying cannot help: the provider refused the request for good."""


class InvalidAddressError(PermanentError):
    """The recipient's contact point is malformed or refused."""
