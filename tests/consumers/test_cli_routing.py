"""``tidings preferences``, ``subscriptions`` and ``templates check`` as real processes on real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture
def env(redis_url: str, redis_client: Redis) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return {**clean, "TIDINGS_REDIS_URL": redis_url, "TIDINGS_RULES": str(REPO / "config" / "rules.yaml")}


def tidings(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_preferences_set_get_list_remove(env: dict[str, str], redis_client: Redis) -> None:
    done = tidings(env, "preferences", "set", "--user", "u-ada", "--tenant", "acme",
                   "email/category:marketing=off", "*/type:system.alert=on")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "set 2 user preference(s)"
    assert tidings(env, "preferences", "set", "--global", "*/category:marketing=off").returncode == 0
    listed = json.loads(tidings(env, "preferences", "list", "--user", "u-ada", "--tenant", "acme").stdout)
    assert listed == {"email/category:marketing": "off", "*/type:system.alert": "on"}
    eff = tidings(env, "preferences", "get", "--user", "u-ada", "--tenant", "acme", "--channel", "email",
                  "--type", "promo.sent", "--category", "marketing")
    assert json.loads(eff.stdout) == {"allowed": False, "decided_by": "user email/category:marketing"}
    gone = tidings(env, "preferences", "remove", "--user", "u-ada", "--tenant", "acme", "email/category:marketing")
    assert gone.returncode == 0 and gone.stdout.strip() == "removed 1 user preference(s)"
    assert tidings(env, "preferences", "remove", "--user", "u-ada", "--tenant", "acme",
                   "email/category:marketing").returncode == 1


def test_a_bad_preference_command_changes_nothing(env: dict[str, str], redis_client: Redis) -> None:
    bad = tidings(env, "preferences", "set", "--user", "u-ada", "email/*=off", "email/kind:x=on")
    assert bad.returncode == 2 and "scope 'kind:x'" in bad.stderr
    missing = tidings(env, "preferences", "set", "--user", "u-ada", "email/*")
    assert missing.returncode == 2 and "CHANNEL/SCOPE=on or =off" in missing.stderr
    both = tidings(env, "preferences", "list", "--user", "u-ada", "--global")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    assert redis_client.dbsize() == 0


def test_subscriptions_set_get_list_remove(env: dict[str, str], redis_client: Redis) -> None:
    for user in ("u-b", "u-a"):
        assert tidings(env, "subscriptions", "set", user, "company:Acme", "--tenant", "acme").returncode == 0
    assert tidings(env, "subscriptions", "get", "u-a", "--tenant", "acme").stdout.split() == ["company:Acme"]
    assert tidings(env, "subscriptions", "list", "company:Acme", "--tenant", "acme").stdout.split() == [
        "u-a", "u-b"]
    assert tidings(env, "subscriptions", "remove", "u-a", "company:Acme", "--tenant", "acme").returncode == 0
    assert tidings(env, "subscriptions", "list", "company:Acme", "--tenant", "acme").stdout.split() == ["u-b"]
    bad = tidings(env, "subscriptions", "set", "u-a", "bad topic", "--tenant", "acme")
    assert bad.returncode == 2 and "topic 'bad topic'" in bad.stderr
    assert tidings(env, "subscriptions", "set", "u-a").returncode == 2


def test_templates_check_passes_on_the_shipped_config(env: dict[str, str]) -> None:
    done = tidings(env, "templates", "check")
    assert done.returncode == 0, done.stderr
    assert "job_match (rule job-match, locale de, nulls sample)" in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("ok: ")


def test_templates_check_fails_on_a_template_that_breaks_on_sample_data(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    # Breaks only when the optional location is null: a filled sample alone would not find it.
    (config / "templates" / "job_match" / "text.de.j2").write_text("Ort: {{ data.location.upper() }}\n")
    done = tidings({**env, "TIDINGS_RULES": str(config / "rules.yaml")}, "templates", "check")
    assert done.returncode == 1
    assert "job_match (rule job-match, locale de, nulls sample)" in done.stderr
    assert "text.de.j2" in done.stderr


def test_recipients_set_validates_and_writes_one(env: dict[str, str], redis_client: Redis) -> None:
    done = tidings(env, "recipients", "set", "u-new", "--tenant", "acme", "--data",
                   '{"timezone": "Europe/Vienna", "contacts": {"email": "new@example.com"}, '
                   '"quiet_hours": {"start": "22:00", "end": "06:30"}}')
    assert done.returncode == 0, done.stderr
    got = json.loads(tidings(env, "recipients", "get", "u-new", "--tenant", "acme").stdout)
    assert (got["tenant"], got["timezone"], got["quiet_hours"]) == ("acme", "Europe/Vienna",
                                                                     {"start": "22:00:00", "end": "06:30:00"})
    bad = tidings(env, "recipients", "set", "u-bad", "--data", '{"timezone": "Nowhere/Land"}')
    assert bad.returncode == 2 and "not an IANA time zone" in bad.stderr
    assert tidings(env, "recipients", "get", "u-bad").returncode == 1
