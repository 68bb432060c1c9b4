"""Rendering notifications with sandboxed Jinja2.

A template is a directory under the template dir, named by the rule::

    templates/job_match/
        subject.j2        one line: email subject, chat title
        text.j2           plain-text body
        html.j2           optional HTML body (autoescaped)
        subject.de.j2     optional per-locale variants, chosen by the recipient's
        text.de.j2        locale ("de-AT" tries de-AT, then de, then the default)
        text@sms.j2       optional per-channel variants: a channel with files of its own
        text@sms.de.j2    tries them first (with the same locale fallback), then the
                          shared files; so a template is per (rule, channel, locale)

Templates run in Jinja2's sandbox with ``StrictUndefined``: a reference to a
field the event does not have is an error (the event is dead-lettered with
the template's name and the missing name), never an empty string. HTML parts
are autoescaped; subject and text are not.

Context: ``data`` (the event data), ``event`` (``id``, ``source``, ``type``,
``time``, ``subject``, ``tenant``), ``recipient`` (``id``, ``name``,
``locale``, ``timezone``) and ``rule`` (``name``, ``priority``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    meta,
)
from jinja2 import (
    TemplateError as JinjaTemplateError,
)
from jinja2.sandbox import SandboxedEnvironment

from schemas.errors import ConfigError, TemplateError

PARTS = ("subject", "text", "html")
_VARIANT = re.compile(r"^(?:subject|text|html)@([a-z0-9_-]+)(?:\.[A-Za-z0-9_-]+)?\.j2$")
REQUIRED_PARTS = ("subject", "text")
DEFAULT_LOCALE = "en"


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def _autoescape(name: str | None) -> bool:
    # Called on every render: keep it to string operations.
    return name is not None and name.rpartition("/")[2].startswith("html.")


def locale_chain(locale: str | None) -> tuple[str, ...]:
    """``de-AT`` -> (``de-AT``, ``de``); the default file needs no locale."""
    if not locale:
        return ()
    norm = locale.replace("_", "-")
    base = norm.split("-", 1)[0]
    return (norm, base) if base != norm else (norm,)


_DICT_ATTRIBUTES = frozenset(dir(dict))


class Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, cheaper per render and per condition, with the same results.

    * Flat globals: Jinja chains each template's globals to the environment's (a
      ChainMap) and copies them into every render's context; ours never change after
      start, so a template gets a plain dict (about half the cost of a small render).
    * ``data.field`` on plain dicts (every context value is one): Jinja tries
      ``getattr(obj, name)`` first, which raises for a dict key, and then ``obj[name]``.
      For a plain dict and a name that is no dict attribute the answer is always the
      item, so it is read directly. Everything else goes through the sandbox's checks.
    """

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


class Renderer:
    """Finds, compiles once and renders the parts of each template."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ConfigError(f"template directory {directory} does not exist")
        self.directory = directory
        self.env = Sandbox(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=_autoescape,
            keep_trailing_newline=False,
            auto_reload=False,
            cache_size=-1,
        )
        self._resolved: dict[tuple[str, str, str | None, str | None], Template | None] = {}
        self._recipient_free: dict[tuple[str, str | None, str | None], bool] = {}
        self._variants: dict[str, frozenset[str]] = {}

    def check(self, names: set[str]) -> None:
        """Fail at start when a template directory or a required part is missing or does not parse."""
        for name in sorted(names):
            folder = self.directory / name
            if not folder.is_dir():
                raise ConfigError(f"template {name!r}: no directory {folder}")
            for path in sorted(folder.glob("*.j2")):
                try:
                    self.env.get_template(f"{name}/{path.name}")
                except JinjaTemplateError as exc:
                    raise ConfigError(f"template {name}/{path.name} does not parse: {exc}") from exc
            for part in REQUIRED_PARTS:
                if not (folder / f"{part}.j2").exists():
                    raise ConfigError(f"template {name!r}: missing required part {part}.j2")

    def variants(self, name: str) -> frozenset[str]:
        """Channels that have their own files in template ``name`` (``text@sms.j2``)."""
        found = self._variants.get(name)
        if found is None:
            found = frozenset(m.group(1) for p in (self.directory / name).glob("*@*.j2")
                              if (m := _VARIANT.match(p.name)))
            self._variants[name] = found
        return found

    def variant(self, name: str, channel: str | None) -> str | None:
        """``channel`` when the template has files of its own for it, else None (the shared files)."""
        return channel if channel is not None and channel in self.variants(name) else None

    def _template(self, name: str, part: str, locale: str | None, channel: str | None = None) -> Template | None:
        key = (name, part, locale, channel)
        if key in self._resolved:
            return self._resolved[key]
        found: Template | None = None
        chain = locale_chain(locale)
        candidates = [f"{name}/{part}.{loc}.j2" for loc in chain] + [f"{name}/{part}.j2"]
        if channel is not None:
            candidates = ([f"{name}/{part}@{channel}.{loc}.j2" for loc in chain] + [f"{name}/{part}@{channel}.j2"]
                          + candidates)
        for candidate in candidates:
            try:
                found = self.env.get_template(candidate)
                break
            except TemplateNotFound:
                continue
            except JinjaTemplateError as exc:
                raise TemplateError(f"template {candidate} does not parse: {exc}") from exc
        self._resolved[key] = found
        return found

    def recipient_free(self, name: str, locale: str | None, channel: str | None = None) -> bool:
        """True when no part of the template (as resolved for ``locale``) reads ``recipient``:
        its output is then the same for every recipient of one event, and a fan-out renders it
        once per locale. Templates that include, import or extend others count as reading it."""
        key = (name, locale, channel)
        found = self._recipient_free.get(key)
        if found is not None:
            return found
        free = True
        for part in PARTS:
            template = self._template(name, part, locale, channel)
            if template is None or template.filename is None:
                continue
            try:
                source = Path(template.filename).read_text()
                ast = self.env.parse(source)
            except (OSError, JinjaTemplateError):
                free = False
                break
            if "recipient" in meta.find_undeclared_variables(ast) or any(
                    True for _ in meta.find_referenced_templates(ast)):
                free = False
                break
        self._recipient_free[key] = free
        return free

    def render(self, name: str, context: Mapping[str, Any], locale: str | None = None,
               channel: str | None = None) -> Rendered:
        """Render every part (``channel``'s own files first, when it has any); raise
        :class:`TemplateError` naming the template and the problem."""
        out: dict[str, str | None] = {}
        channel = self.variant(name, channel)
        for part in PARTS:
            template = self._template(name, part, locale, channel)
            if template is None:
                if part in REQUIRED_PARTS:
                    raise TemplateError(f"template {name!r} has no {part}.j2")
                out[part] = None
                continue
            try:
                out[part] = template.render(context)
            except JinjaTemplateError as exc:
                raise TemplateError(f"template {template.name}: {exc}") from exc
            except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
                raise TemplateError(f"template {template.name}: {type(exc).__name__}: {exc}") from exc
        subject = " ".join((out["subject"] or "").split())
        if not subject:
            raise TemplateError(f"template {name!r}: subject rendered empty")
        return Rendered(subject=subject, text=(out["text"] or "").strip() + "\n", html=out["html"])
