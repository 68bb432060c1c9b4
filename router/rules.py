"""Notification rules: which events notify whom, on which channels, with which template.

The rules file is YAML::

    rules:
      - name: job-match                 # unique; part of every delivery id
        event_type: jobs.match.found    # the CloudEvents type it answers
        when: "score >= 75"             # optional condition over the event data
        channels: [email, webhook]
        template: job_match             # a directory under the template dir
        priority: normal                # low | normal | high | urgent
        audience: subject               # the event's ce_subject user, or "subscribers"

Routing features (docs/routing.md): ``audience: subscribers`` with ``topic``,
``category``, ``required``, ``dedup``, ``over_cap``, ``quiet_hours``,
``stale_after``, ``delay``, ``digests`` and ``digest_template``, channel
``fallback`` and ``unread_fallback`` (router/fallback.py); frequency
``caps`` are declared once at the top of the file.

A condition is a Jinja2 expression evaluated in the sandbox. It sees the
event's data fields by name (``score``), the whole data as ``data`` and the
CloudEvents attributes as ``event`` (``event.source``, ``event.tenant``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.caps import CapLimit
from router.dedup import DedupPolicy
from router.digest import Cadence
from router.durations import Duration
from router.fallback import UnreadFallback, check_chains
from router.templates import Sandbox
from schemas import Priority
from schemas.errors import ConfigError, InputError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_CONDITIONS = Sandbox(undefined=StrictUndefined)


class ConditionError(InputError):
    """A rule's condition could not be evaluated for this event."""


def _checked(source: str | None, what: str, compile_it: Callable[[str], object]) -> str | None:
    """``source`` unchanged if it compiles (or is None); else a ValueError naming ``what``."""
    if source is not None:
        try:
            compile_it(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"{what} {source!r} does not parse: {exc.message}") from exc
    return source


class Action(BaseModel):
    """The link an in-app notification offers (seed 003's action URL and label); both are templates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1)
    """For example ``https://jobs.example.com/matches/{{ match_id }}`` or ``/matches/{{ match_id }}``."""
    label: str | None = None
    """The button text, for example ``View the job``."""

    @field_validator("url", "label")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        return _checked(value, "action template", _CONDITIONS.from_string)


class ActionError(InputError):
    """A rule's action link could not be rendered for this event."""


class Rule(BaseModel):
    """One notification rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    event_type: str
    channels: tuple[str, ...] = Field(min_length=1)
    template: str
    priority: Priority = Priority.normal
    when: str | None = None
    audience: Literal["subject", "subscribers"] = "subject"
    topic: str | None = None
    """Subscribers' topic, a template over the event; default: the event type."""
    category: str | None = None
    """Preference category; default: the ``category`` of the event's schema."""
    required: bool = False
    """No preference turns it off (security alerts)."""
    dedup: DedupPolicy | None = None
    over_cap: Literal["drop", "digest"] = "drop"
    quiet_hours: Literal["hold", "digest", "ignore"] = "hold"
    stale_after: Duration | None = None
    delay: Duration | None = None
    digests: tuple[Cadence, ...] = ()
    digest_template: str = "digest"
    fallback: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Channel fallback chains, ``{webhook: [sms, email]}`` in YAML (router/fallback.py)."""
    unread_fallback: UnreadFallback | None = None
    """Send an in-app notification through another channel when it is still unread after a while."""
    action: Action | None = None
    """A link (and its label) shown with the in-app notification."""

    @field_validator("fallback", mode="before")
    @classmethod
    def _chains(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return tuple((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in value.items())
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        check_chains(self.channels, dict(self.fallback), self.unread_fallback, lambda c: bool(_NAME.match(c)))
        if self.topic is not None and self.audience != "subscribers":
            raise ValueError("topic applies to audience: subscribers")
        _checked(self.topic, "topic", _CONDITIONS.from_string)
        seen = [c.channel for c in self.digests]
        for channel in seen:
            if channel not in self.channels:
                raise ValueError(f"digest channel {channel!r} is not one of the rule's channels")
        if len(set(seen)) != len(seen):
            raise ValueError("one digest cadence per channel")
        if not _NAME.match(self.digest_template):
            raise ValueError(f"digest_template {self.digest_template!r} is not a template name")
        return self

    @property
    def chains(self) -> dict[str, tuple[str, ...]]:
        return dict(self.fallback)

    @property
    def fallback_channels(self) -> tuple[str, ...]:
        """Channels reached only as a fallback, in order of first mention."""
        named = [c for _, chain in self.fallback for c in chain]
        if self.unread_fallback is not None:
            named.append(self.unread_fallback.channel)
        return tuple(dict.fromkeys(c for c in named if c not in self.channels))

    def digest_for(self, channel: str) -> Cadence | None:
        for cadence in self.digests:
            if cadence.channel == channel:
                return cadence
        return None

    @field_validator("name", "template")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} must be lower-case letters, digits, '.', '_' or '-'")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for channel in value:
            if not _NAME.match(channel):
                raise ValueError(f"channel name {channel!r} is not valid")
        if len(set(value)) != len(value):
            raise ValueError("a channel is listed twice")
        return value

    @field_validator("when")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        return _checked(value, "condition", _CONDITIONS.compile_expression)


class TopicError(InputError):
    """A rule's subscription topic could not be rendered for this event."""


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    condition: Callable[..., Any] | None
    dedup_key: Callable[[Mapping[str, Any]], str] | None = None
    topic_template: Any = None
    action_templates: tuple[Any, Any] | None = None

    def action(self, data: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, str]:
        """``action_url`` and ``action_label`` rendered for this event (empty when the rule has no action)."""
        if self.action_templates is None or self.rule.action is None:
            return {}
        url, label = self.action_templates
        context = self.context(data, event)
        try:
            out = {"action_url": str(url.render(context)).strip()}
            if label is not None:
                out["action_label"] = str(label.render(context)).strip()
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError) as exc:
            raise ActionError(f"rule {self.rule.name}: action failed: {exc}") from exc
        if not out["action_url"]:
            raise ActionError(f"rule {self.rule.name}: action url {self.rule.action.url!r} rendered empty")
        return {k: v for k, v in out.items() if v}

    def context(self, data: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
        return {**data, "data": data, "event": event}

    def key(self, data: Mapping[str, Any], event: Mapping[str, Any]) -> str | None:
        """The rendered dedup key, or None when the rule has no key-based strategy."""
        if self.dedup_key is None:
            return None
        return self.dedup_key(self.context(data, event))

    def topic(self, data: Mapping[str, Any], event: Mapping[str, Any]) -> str:
        if self.topic_template is None:
            return self.rule.event_type
        try:
            text = str(self.topic_template.render(self.context(data, event))).strip()
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError) as exc:
            raise TopicError(f"rule {self.rule.name}: topic {self.rule.topic!r} failed: {exc}") from exc
        if not text:
            raise TopicError(f"rule {self.rule.name}: topic {self.rule.topic!r} rendered empty")
        return text

    def matches(self, data: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        """Evaluate the condition; raise :class:`ConditionError` when it cannot be."""
        if self.condition is None:
            return True
        try:
            # One mapping, not keyword arguments: a data field named "data" or "event" must not
            # make the call fail; the documented names win over same-named fields.
            return bool(self.condition({**data, "data": data, "event": event}))
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError) as exc:
            raise ConditionError(
                f"rule {self.rule.name}: condition {self.rule.when!r} failed: {exc}"
            ) from exc


class RuleSet:
    """The loaded rules, indexed by event type."""

    def __init__(self, rules: list[Rule], caps: tuple[CapLimit, ...] = ()) -> None:
        self.caps = caps
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"rule name(s) used twice: {', '.join(dupes)}")
        self.rules = tuple(rules)
        self._by_type: dict[str, list[CompiledRule]] = {}
        for rule in rules:
            compiled = CompiledRule(
                rule,
                # undefined_to_none=False: a condition that is only an unknown name must fail
                # like any other reference to it, not quietly evaluate to None (false).
                _CONDITIONS.compile_expression(rule.when, undefined_to_none=False) if rule.when else None,
                rule.dedup.compile() if rule.dedup is not None else None,
                _CONDITIONS.from_string(rule.topic) if rule.topic else None,
                (_CONDITIONS.from_string(rule.action.url),
                 _CONDITIONS.from_string(rule.action.label) if rule.action.label else None)
                if rule.action is not None else None,
            )
            self._by_type.setdefault(rule.event_type, []).append(compiled)

    def for_type(self, event_type: str) -> list[CompiledRule]:
        return self._by_type.get(event_type, [])

    @property
    def channels(self) -> set[str]:
        primary = {c for r in self.rules for c in r.channels}
        return primary | {c for r in self.rules for c in r.fallback_channels}

    @property
    def templates(self) -> set[str]:
        return {r.template for r in self.rules} | {r.digest_template for r in self.rules if r.digests}

    @classmethod
    def from_data(cls, raw: Any, origin: str = "rules") -> RuleSet:
        if not isinstance(raw, dict) or not isinstance(raw.get("rules"), list):
            raise ConfigError(f"{origin}: expected a mapping with a 'rules' list")
        caps: list[CapLimit] = []
        for position, item in enumerate(raw.get("caps") or [], start=1):
            try:
                caps.append(CapLimit.model_validate(item))
            except ValidationError as exc:
                raise ConfigError(f"{origin}: cap #{position}: {_first_error(exc)}") from None
        rules = []
        for position, item in enumerate(raw["rules"], start=1):
            try:
                rules.append(Rule.model_validate(item))
            except ValidationError as exc:
                raise ConfigError(f"{origin}: rule #{position}: {_first_error(exc)}") from None
        return cls(rules, tuple(caps))

    @classmethod
    def load(cls, path: Path) -> RuleSet:
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read rules file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"rules file {path} is not valid YAML: {exc}") from exc
        return cls.from_data(raw, origin=str(path))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(entry)"
    return f"{where}: {err['msg']}"
