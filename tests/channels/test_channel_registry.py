"""The channel registry: built-ins, entry points and TIDINGS_CHANNEL_MODULES strings."""

from __future__ import annotations

import asyncio
import importlib
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest

from channels import Channel, ChannelConfig, Sent, available_channels, load_channel_class
from channels.email import EmailChannel
from channels.registry import BUILTIN_CHANNELS, ENTRY_POINT_GROUP, load_all
from channels.webhook import WebhookChannel
from schemas import Delivery
from schemas.errors import ConfigError

# --- channel classes referenced by import string in the tests below ----------


class EchoConfig(ChannelConfig):
    prefix: str = "echo"


class EchoChannel(Channel):
    """A third-party style channel: it 'sends' by naming what it got."""

    name: ClassVar[str] = "echo"
    config_model: ClassVar[type[ChannelConfig]] = EchoConfig

    def __init__(self, config: EchoConfig) -> None:
        self.config = config

    async def send(self, delivery: Delivery) -> Sent:
        return Sent(provider_id=f"{self.config.prefix}:{delivery.delivery_id}")


class OtherEchoChannel(EchoChannel):
    """Same name as EchoChannel, different class: a conflict."""


class FakeEmailChannel(EchoChannel):
    name: ClassVar[str] = "email"


class NotAChannel:
    name = "impostor"
    config_model = EchoConfig


class NamelessChannel(Channel):
    config_model: ClassVar[type[ChannelConfig]] = EchoConfig

    def __init__(self, config: Any) -> None: ...

    async def send(self, delivery: Delivery) -> Sent:
        return Sent()


class ConfiglessChannel(Channel):
    name: ClassVar[str] = "configless"

    def __init__(self, config: Any) -> None: ...

    async def send(self, delivery: Delivery) -> Sent:
        return Sent()


class AbstractChannel(Channel):
    name: ClassVar[str] = "abstract"
    config_model: ClassVar[type[ChannelConfig]] = EchoConfig

    def __init__(self, config: Any) -> None: ...


class BlockingChannel(Channel):
    name: ClassVar[str] = "blocking"
    config_model: ClassVar[type[ChannelConfig]] = EchoConfig

    def __init__(self, config: Any) -> None: ...

    def send(self, delivery: Delivery) -> Sent:  # type: ignore[override]
        return Sent()


class BadLimitsChannel(EchoChannel):
    name: ClassVar[str] = "badlimits"
    limits: ClassVar[Any] = {"per_second": 3}


HERE = __name__  # the module name this file was imported under


def ref(cls: type) -> str:
    return f"{HERE}:{cls.__name__}"


# --- built-ins ----------------------------------------------------------------


def test_builtins_are_listed_as_lazy_import_strings() -> None:
    channels = available_channels()
    assert channels["email"] == "channels.email:EmailChannel"
    assert channels["webhook"] == "channels.webhook:WebhookChannel"
    assert BUILTIN_CHANNELS.items() <= channels.items()


def test_builtins_load() -> None:
    assert load_channel_class("email") is EmailChannel
    assert load_channel_class("webhook") is WebhookChannel


def test_every_builtin_satisfies_the_contract() -> None:
    loaded = load_all()
    assert set(loaded) >= {"email", "webhook", "slack", "discord", "telegram", "teams", "sms"}
    for name, cls in loaded.items():
        assert cls.name == name
        assert cls.limits.max_in_flight >= 1


def test_load_all_fails_at_start_on_a_broken_plugin(plugin_root: Path) -> None:
    install_plugin(plugin_root, {"text": "tidings_test_plugin:PagerChannel"})

    with pytest.raises(ConfigError, match=r"'text' points to .*whose name is 'pager'"):
        load_all()


def test_unknown_channel_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown channel 'pigeon'.*email.*webhook"):
        load_channel_class("pigeon")


# --- TIDINGS_CHANNEL_MODULES strings -------------------------------------------


def test_extra_string_adds_a_channel(make_delivery: Any) -> None:
    extra = f" {ref(EchoChannel)} , "
    assert available_channels(extra)["echo"] == ref(EchoChannel)

    cls = load_channel_class("echo", extra)
    assert cls is EchoChannel
    channel = cls.from_config({"prefix": "p"})
    sent = asyncio.run(channel.send(make_delivery()))
    assert sent.provider_id is not None
    assert sent.provider_id.startswith("p:")


def test_extra_string_with_several_classes() -> None:
    extra = f"{ref(EchoChannel)},channels.webhook:WebhookChannel"
    assert set(available_channels(extra)) >= {"echo", "email", "webhook"}


def test_same_class_listed_twice_is_not_a_conflict() -> None:
    assert "echo" in available_channels(f"{ref(EchoChannel)},{ref(EchoChannel)}")


def test_two_classes_with_one_name_conflict() -> None:
    with pytest.raises(ConfigError, match="'echo' is defined twice"):
        available_channels(f"{ref(EchoChannel)},{ref(OtherEchoChannel)}")


def test_extra_class_may_not_take_a_builtin_name() -> None:
    with pytest.raises(ConfigError, match=r"'email' is defined twice.*built-in"):
        load_channel_class("webhook", ref(FakeEmailChannel))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (ref(NotAChannel), "not a subclass of channels.Channel"),
        ("builtins:dict", "not a subclass of channels.Channel"),
        (ref(NamelessChannel), "does not declare a 'name'"),
        (ref(ConfiglessChannel), "does not declare a 'config_model'"),
        (ref(AbstractChannel), "abstract methods unimplemented: send"),
        (ref(BlockingChannel), "must define 'async def send"),
        (ref(BadLimitsChannel), "'limits' that is not a channels.Limits"),
        ("no_such_module_for_tidings:Thing", "cannot import channel module"),
        (f"{HERE}:NoSuchClass", "has no attribute 'NoSuchClass'"),
        ("just_a_module", "not of the form 'module:Class'"),
        (":Thing", "not of the form 'module:Class'"),
    ],
)
def test_bad_extra_entries_are_config_errors(target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        available_channels(target)


def test_module_that_fails_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tidings_broken_channel.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError, match="RuntimeError: boom at import") as caught:
        available_channels("tidings_broken_channel:Whatever")
    assert isinstance(caught.value.__cause__, RuntimeError)


# --- entry points ---------------------------------------------------------------


@pytest.fixture
def plugin_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder on sys.path for one test's fake installed plugin."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tidings_test_plugin", raising=False)
    return tmp_path


def install_plugin(root: Path, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution (a .dist-info folder) plus its module, under root."""
    (root / "tidings_test_plugin.py").write_text(
        textwrap.dedent(
            f"""
            from {HERE} import EchoChannel


            class PagerChannel(EchoChannel):
                name = "pager"
            """
        )
    )
    info = root / "tidings_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tidings-test-plugin\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    importlib.invalidate_caches()  # the folder was already on sys.path before these files existed


def test_entry_point_channel_is_found_and_loaded(plugin_root: Path) -> None:
    install_plugin(plugin_root, {"pager": "tidings_test_plugin:PagerChannel"})

    assert available_channels()["pager"] == "tidings_test_plugin:PagerChannel"
    cls = load_channel_class("pager")
    assert cls.__name__ == "PagerChannel"
    assert cls.name == "pager"


def test_entry_point_may_not_shadow_a_builtin(plugin_root: Path) -> None:
    install_plugin(plugin_root, {"email": "tidings_test_plugin:PagerChannel"})

    with pytest.raises(ConfigError, match="'email' is defined twice"):
        available_channels()


def test_entry_point_repeating_a_builtin_target_is_fine(plugin_root: Path) -> None:
    install_plugin(plugin_root, {"email": "channels.email:EmailChannel"})

    assert load_channel_class("email") is EmailChannel


def test_entry_point_name_must_match_the_class_name(plugin_root: Path) -> None:
    install_plugin(plugin_root, {"text": "tidings_test_plugin:PagerChannel"})

    assert "text" in available_channels()  # listing stays lazy: nothing imported yet
    with pytest.raises(ConfigError, match=r"'text' points to .*whose name is 'pager'"):
        load_channel_class("text")


def test_entry_point_conflicting_with_extra(plugin_root: Path) -> None:
    install_plugin(plugin_root, {"echo": "tidings_test_plugin:PagerChannel"})

    with pytest.raises(ConfigError, match="'echo' is defined twice"):
        available_channels(ref(EchoChannel))


def test_entry_point_must_name_a_class(plugin_root: Path) -> None:
    install_plugin(plugin_root, {"bare": "tidings_test_plugin"})

    with pytest.raises(ConfigError, match="must be 'module:Class'"):
        available_channels()


def test_tidings_check_names_a_broken_plugin(tmp_path: Path) -> None:
    """What an operator sees: the command stops at start, naming the class and what is wrong with it."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["TIDINGS_CHANNEL_MODULES"] = ref(BlockingChannel)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-m", "consumers.cli", "check"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2
    assert "BlockingChannel" in done.stderr and "must define 'async def send" in done.stderr
