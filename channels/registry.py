"""Which channel classes exist, by name, without importing them all.

Three sources, merged in this order:

1. the built-in channels below, as lazy ``module:Class`` import strings;
2. the ``tidings.channels`` entry-point group of installed distributions, where
   the entry-point name is the channel name::

       [project.entry-points."tidings.channels"]
       sms = "acme_tidings.sms:SmsChannel"

3. an explicit list ``"module:Class,module2:Class2"`` (the consumers pass the
   ``TIDINGS_CHANNEL_MODULES`` environment variable). These classes are
   imported at once, since their ``name`` attribute is the only place the
   channel name is written.

Two sources naming the same channel with different classes is a
:class:`~schemas.errors.ConfigError`, as is a class that cannot be imported,
is not a :class:`~channels.base.Channel` subclass, lacks ``name`` or
``config_model``, still has abstract methods, has a ``send`` that is not
``async``, or declares ``limits`` that are not a :class:`~channels.base.Limits`.
The processes call :func:`load_all` at start, so any of these stops them
before they consume anything. The same import string
registered twice (say, a built-in also declared as an entry point) is fine.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

from channels.base import Channel, ChannelConfig, Limits
from schemas.errors import ConfigError

__all__ = [
    "BUILTIN_CHANNELS",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "available_channels",
    "load_all",
    "load_channel_class",
]

BUILTIN_CHANNELS: dict[str, str] = {
    "discord": "channels.discord:DiscordChannel",
    "email": "channels.email:EmailChannel",
    "slack": "channels.slack:SlackChannel",
    "sms": "channels.sms:SmsChannel",
    "teams": "channels.teams:TeamsChannel",
    "telegram": "channels.telegram:TelegramChannel",
    "webhook": "channels.webhook:WebhookChannel",
    "inapp": "channels.inapp:InAppChannel",
}
ENTRY_POINT_GROUP = "tidings.channels"
ENV_VAR = "TIDINGS_CHANNEL_MODULES"


def available_channels(extra: str | None = None) -> dict[str, str]:
    """Every known channel as ``name -> "module:Class"``.

    ``extra`` is a comma-separated list of ``module:Class`` strings, normally
    the value of ``TIDINGS_CHANNEL_MODULES``.
    """
    found = dict(BUILTIN_CHANNELS)
    origin = dict.fromkeys(BUILTIN_CHANNELS, "built-in")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if not entry.attr:
            raise ConfigError(f"entry point {entry.name!r} = {entry.value!r} must be 'module:Class'")
        _add(found, origin, entry.name, f"{entry.module}:{entry.attr}", f"entry point {entry.value!r}")
    for target in _split(extra):
        cls = _import(target)
        name = _check(cls, target, expected_name=None)
        _add(found, origin, name, target, f"{ENV_VAR} entry {target!r}")
    return found


def load_channel_class(name: str, extra: str | None = None) -> type[Channel]:
    """Import and check the class of channel ``name``."""
    channels = available_channels(extra)
    target = channels.get(name)
    if target is None:
        known = ", ".join(sorted(channels)) or "none"
        raise ConfigError(f"unknown channel {name!r}; known channels: {known}")
    cls = _import(target)
    _check(cls, target, expected_name=name)
    return cls


def load_all(extra: str | None = None) -> dict[str, type[Channel]]:
    """Import and check every known channel: what the processes call at start, so a broken
    plugin fails there with its name rather than on the first delivery for it."""
    return {name: load_channel_class(name, extra) for name in available_channels(extra)}


def _split(extra: str | None) -> list[str]:
    if not extra:
        return []
    return [part.strip() for part in extra.split(",") if part.strip()]


def _add(found: dict[str, str], origin: dict[str, str], name: str, target: str, source: str) -> None:
    previous = found.get(name)
    if previous is not None and previous != target:
        raise ConfigError(
            f"channel {name!r} is defined twice: {origin[name]} {previous!r} and {source}; "
            "rename one of them or uninstall the duplicate"
        )
    found[name] = target
    origin.setdefault(name, source)


def _import(target: str) -> type[Channel]:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"channel import string {target!r} is not of the form 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"cannot import channel module {module_name!r} (from {target!r}): {type(exc).__name__}: {exc}"
        ) from exc
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Channel)):
        raise ConfigError(f"{target!r} is {obj!r}, not a subclass of channels.Channel")
    return obj


def _check(cls: type[Channel], target: str, expected_name: str | None) -> str:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"channel class {target!r} does not declare a 'name' string")
    config_model = getattr(cls, "config_model", None)
    if not (isinstance(config_model, type) and issubclass(config_model, ChannelConfig)):
        raise ConfigError(f"channel class {target!r} does not declare a 'config_model' (a ChannelConfig)")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ConfigError(f"channel class {target!r} leaves abstract methods unimplemented: {missing}")
    if not inspect.iscoroutinefunction(cls.send):
        raise ConfigError(f"channel class {target!r} must define 'async def send(self, delivery)'")
    if not isinstance(getattr(cls, "limits", None), Limits):
        raise ConfigError(f"channel class {target!r} declares 'limits' that is not a channels.Limits")
    if expected_name is not None and name != expected_name:
        raise ConfigError(f"channel {expected_name!r} points to {target!r}, whose name is {name!r}")
    return name
