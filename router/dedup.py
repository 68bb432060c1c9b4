"""Dedup strategies per rule (seed 000), on top of exact event identity.

Exact identity, ``(ce_source, ce_id)``, is always on (:mod:`router.state`).
A rule may add one strategy::

    dedup:
      strategy: key_window          # the same key within the window is sent once
      key: "{{ event.subject }}:{{ data.match_id }}"
      window: 24h

    dedup: {strategy: once_ever, key: "{{ data.match_id }}"}      # never again for this key

    dedup:
      strategy: content_change      # send again only when the rendered content changed
      key: "{{ data.application_id }}"
      resend_after: 7d              # ... or when this long passed since the last send

Keys are per recipient (stored under the recipient's hash tag) and per rule;
the key template sees the same names as a rule condition. ``key_window`` and
``once_ever`` claim the key with ``SET NX`` in the batch's one round trip; the
claim's value is the event identity, so the same event processed again is
recognised as the owner and routed again. ``content_change`` compares a hash
of the rendered subject, text and HTML per channel with the hash stored when
it last went out.

Each suppression is a ``deduplicated`` status event whose reason names the
strategy: ``dedup_window``, ``once_ever`` or ``content_unchanged``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from router.durations import Duration
from schemas.errors import InputError

Strategy = Literal["key_window", "content_change", "once_ever"]
REASONS: dict[str, str] = {"key_window": "dedup_window", "once_ever": "once_ever",
                           "content_change": "content_unchanged"}
_KEYS = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class DedupKeyError(InputError):
    """A rule's dedup key template could not be rendered for this event."""


class DedupPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy
    key: str = "{{ event.subject }}"
    window: Duration | None = None
    resend_after: Duration | None = None

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        try:
            _KEYS.from_string(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"dedup key {value!r} does not parse: {exc.message}") from exc
        return value

    @model_validator(mode="after")
    def _fits(self) -> DedupPolicy:
        if self.strategy == "key_window" and self.window is None:
            raise ValueError("dedup strategy key_window needs a window (e.g. 24h)")
        if self.strategy != "key_window" and self.window is not None:
            raise ValueError(f"window applies to key_window, not {self.strategy}")
        if self.strategy != "content_change" and self.resend_after is not None:
            raise ValueError(f"resend_after applies to content_change, not {self.strategy}")
        return self

    @property
    def reason(self) -> str:
        return REASONS[self.strategy]

    def compile(self) -> Callable[[Mapping[str, Any]], str]:
        template = _KEYS.from_string(self.key)

        def render(context: Mapping[str, Any]) -> str:
            try:
                return template.render(context)
            except (UndefinedError, JinjaTemplateError, TypeError, ValueError, ArithmeticError) as exc:
                raise DedupKeyError(f"dedup key {self.key!r} failed: {exc}") from exc

        return render


def digest(text: str) -> str:
    """A short stable hash for keys and content."""
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def content_digest(subject: str, text: str, html: str | None) -> str:
    return digest("\x1f".join((subject, text, html or "")))


def content_unchanged(stored: str | None, current: str) -> bool:
    """True when the same content already went out (and its resend period has not passed:
    the stored hash expires with ``resend_after``)."""
    return stored is not None and stored == current
