from __future__ import annotations

import pytest
from redis import Redis

from router import keys
from router.preferences import (
    PreferenceError,
    PreferenceStore,
    Switch,
    Verdict,
    field_name,
    parse_value,
    resolve,
)

TYPE = "jobs.match.found"


def _levels(user: dict[str, str] | None = None, tenant: dict[str, str] | None = None,
            glob: dict[str, str] | None = None) -> list[tuple[str, dict[str, str]]]:
    return [("user", user or {}), ("tenant", tenant or {}), ("global", glob or {})]


def test_nothing_set_means_allowed_by_default() -> None:
    assert resolve("email", TYPE, "jobs", _levels()) == Verdict(True, None)


def test_user_beats_tenant_beats_global() -> None:
    glob = {"email/*": "off"}
    tenant = {"email/*": "on"}
    user = {"email/*": "off"}
    assert resolve("email", TYPE, "jobs", _levels(glob=glob)).allowed is False
    assert resolve("email", TYPE, "jobs", _levels(tenant=tenant, glob=glob)) == Verdict(True, "tenant email/*")
    assert resolve("email", TYPE, "jobs", _levels(user, tenant, glob)) == Verdict(False, "user email/*")


def test_any_user_switch_that_matches_beats_a_more_specific_tenant_one() -> None:
    # The user turned email off; the tenant turned this event type on: the user wins.
    verdict = resolve("email", TYPE, "jobs", _levels({"email/*": "off"}, {f"email/type:{TYPE}": "on"}))
    assert verdict == Verdict(False, "user email/*")


def test_within_a_level_type_beats_category_beats_everything() -> None:
    user = {"email/*": "off", "email/category:jobs": "on"}
    assert resolve("email", TYPE, "jobs", _levels(user)) == Verdict(True, "user email/category:jobs")
    user[f"email/type:{TYPE}"] = "off"
    assert resolve("email", TYPE, "jobs", _levels(user)) == Verdict(False, f"user email/type:{TYPE}")
    assert resolve("email", "other.type", "jobs", _levels(user)).allowed is True
    assert resolve("email", "other.type", "news", _levels(user)).allowed is False


def test_named_channel_beats_wildcard_channel_at_the_same_scope() -> None:
    user = {"*/category:marketing": "off", "inapp/category:marketing": "on"}
    assert resolve("inapp", "promo", "marketing", _levels(user)).allowed is True
    assert resolve("email", "promo", "marketing", _levels(user)) == Verdict(False, "user */category:marketing")


def test_a_switch_for_another_channel_does_not_apply() -> None:
    assert resolve("webhook", TYPE, "jobs", _levels({"email/*": "off"})).allowed is True


def test_no_category_skips_category_switches() -> None:
    assert resolve("email", TYPE, None, _levels({"email/category:jobs": "off"})).allowed is True


@pytest.mark.parametrize(("channel", "scope", "problem"), [
    ("Email", "*", "channel"), ("email", "kind:x", "scope"), ("email", "type:", "scope"),
    ("email", "category:a b", "scope"), ("", "*", "channel"),
])
def test_bad_fields_are_named(channel: str, scope: str, problem: str) -> None:
    with pytest.raises(PreferenceError, match=problem):
        field_name(channel, scope)


def test_values() -> None:
    assert parse_value("on") is True and parse_value("OFF") is False and parse_value(True) is True
    with pytest.raises(PreferenceError, match="on or off"):
        parse_value("maybe")


def test_store_levels_are_separate_and_effective_merges_them(redis_client: Redis) -> None:
    store = PreferenceStore(redis_client)
    store.set("global", "acme", None, [Switch("*", "category:marketing", False)])
    store.set("tenant", "acme", None, [Switch("email", "*", True)])
    store.set("user", "acme", "u-1", [Switch("email", "category:marketing", True)])
    assert store.get("global", "anything", None) == {"*/category:marketing": "off"}
    assert store.get("tenant", "acme", None) == {"email/*": "on"}
    assert redis_client.hgetall(keys.prefs("acme", "u-1")) == {b"email/category:marketing": b"on"}
    assert store.effective("acme", "u-1", "email", "promo", "marketing") == Verdict(
        True, "user email/category:marketing")
    assert store.effective("acme", "u-2", "sms", "promo", "marketing") == Verdict(
        False, "global */category:marketing")
    assert store.remove("user", "acme", "u-1", "email", "category:marketing") is True
    assert store.remove("user", "acme", "u-1", "email", "category:marketing") is False
    assert store.get("user", "acme", "u-1") == {}


def test_store_user_level_needs_a_user(redis_client: Redis) -> None:
    with pytest.raises(PreferenceError, match="user id"):
        PreferenceStore(redis_client).set("user", "acme", None, [Switch("email", "*", True)])
    assert redis_client.dbsize() == 0
