from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from consumers.settings import Settings, mask_options, mask_url_password
from schemas.errors import ConfigError

SECRETS = {
    "TIDINGS_SMTP_PASSWORD": "smtp-pw-7d1e",
    "TIDINGS_WEBHOOK_SIGNING_SECRET": "whsec-9b2c",
    "TIDINGS_REDIS_URL": "redis://app:redis-pw-4f0a@redis.internal:6380/2",
    "TIDINGS_SCHEMA_REGISTRY_URL": "https://sr-user:registry-pw-55aa@registry.internal",
    "TIDINGS_LIBRDKAFKA_SASL_PASSWORD": "sasl-pw-c3d4",
    "TIDINGS_LIBRDKAFKA_SSL_KEY_PASSWORD": "keypass-e5f6",
    "TIDINGS_KAFKA_OPTIONS": json.dumps({
        "sasl.oauthbearer.client.secret": "oauth-secret-a7b8",
        "sasl.jaas.config": "jaas-secret-1122",
        "ssl.key.pem": "pem-secret-3344",
        "security.protocol": "SASL_SSL",
    }),
}
SECRET_VALUES = [
    "smtp-pw-7d1e", "whsec-9b2c", "redis-pw-4f0a", "registry-pw-55aa", "sasl-pw-c3d4", "keypass-e5f6",
    "oauth-secret-a7b8", "jaas-secret-1122", "pem-secret-3344",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees only the TIDINGS_ variables it sets itself."""
    for name in list(os.environ):
        if name.startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    yield


# -- defaults --------------------------------------------------------------------------


def test_defaults() -> None:
    s = Settings()
    assert s.kafka_bootstrap == "localhost:9092"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.topic_prefix == "tidings."
    assert s.group_prefix == "tidings-"
    assert s.kafka_options == {}
    assert s.librdkafka == {}
    assert s.schema_registry_url is None
    assert s.rules == Path("config/rules.yaml")
    assert s.template_dir == Path("config/templates")
    assert s.dedup_ttl_seconds == 7 * 86400
    assert s.delivery_deadline_seconds == 86400
    assert s.smtp_password is None
    assert s.webhook_signing_secret is None
    assert s.smtp_security == "none"


@pytest.mark.parametrize(
    ("env", "topic", "group"),
    [
        ({}, "tidings.", "tidings-"),
        ({"TIDINGS_TOPIC_PREFIX": "t1_x-", "TIDINGS_GROUP_PREFIX": "g1-"}, "t1_x-", "g1-"),
    ],
)
def test_topic_and_group_names_follow_the_prefixes(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                    topic: str, group: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.input_topic == f"{topic}events"
    assert s.status_topic == f"{topic}status"
    assert s.router_dlq_topic == f"{topic}router.dlq"
    for channel in ("email", "webhook", "sms"):
        assert s.deliver_topic(channel) == f"{topic}deliver.{channel}"
        assert s.channel_dlq_topic(channel) == f"{topic}deliver.{channel}.dlq"
    assert s.topic("anything") == f"{topic}anything"
    assert s.group("router") == f"{group}router"
    assert s.group("deliver-email") == f"{group}deliver-email"


def test_events_topic_overrides_the_input_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_EVENTS_TOPIC", "domain.events")
    s = Settings()
    assert s.input_topic == "domain.events"
    assert s.status_topic == "tidings.status"


def test_empty_prefix_is_allowed() -> None:
    assert Settings(topic_prefix="").status_topic == "status"


@pytest.mark.parametrize("prefix", ["tidings/", "ti dings.", "tidings:", "täglich."])
def test_invalid_topic_prefix_is_refused(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_TOPIC_PREFIX", prefix)
    with pytest.raises(ValidationError, match="topic prefix may hold only letters, digits"):
        Settings()


# -- environment ----------------------------------------------------------------------------


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIDINGS_KAFKA_BOOTSTRAP", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("TIDINGS_REDIS_URL", "redis://cache:6379/3")
    monkeypatch.setenv("TIDINGS_PARTITIONS", "12")
    monkeypatch.setenv("TIDINGS_POLL_TIMEOUT", "0.25")
    monkeypatch.setenv("TIDINGS_SMTP_VALIDATE_CERTS", "false")
    monkeypatch.setenv("TIDINGS_SMTP_SECURITY", "starttls")
    monkeypatch.setenv("TIDINGS_RULES", str(tmp_path / "rules.yaml"))
    s = Settings()
    assert s.kafka_bootstrap == "kafka-1:9093,kafka-2:9093"
    assert s.redis_url == "redis://cache:6379/3"
    assert s.partitions == 12
    assert s.poll_timeout == 0.25
    assert s.smtp_validate_certs is False
    assert s.smtp_security == "starttls"
    assert s.template_dir == tmp_path / "templates"


def test_explicit_template_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIDINGS_TEMPLATES", str(tmp_path))
    assert Settings().template_dir == tmp_path


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("tidings_kafka_bootstrap", "lower:1")
    assert Settings().kafka_bootstrap == "lower:1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIDINGS_PARTITIONS", "0"),
        ("TIDINGS_BATCH_SIZE", "100001"),
        ("TIDINGS_DEDUP_TTL_SECONDS", "59"),
        ("TIDINGS_SMTP_SECURITY", "ssl"),
        ("TIDINGS_METRICS_PORT", "70000"),
        ("TIDINGS_POLL_TIMEOUT", "0"),
        ("TIDINGS_RETRY_MAX_ATTEMPTS", "many"),
        ("TIDINGS_RETRY_TIERS", "10s,soon"),
        ("TIDINGS_RETRY_JITTER", "2"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.kafka_bootstrap = "elsewhere:9092"  # type: ignore[misc]


def test_unknown_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_NO_SUCH_SETTING", "x")
    assert not hasattr(Settings(), "no_such_setting")


# -- librdkafka pass-through -------------------------------------------------------------------


def test_per_option_variable_becomes_a_dotted_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_LIBRDKAFKA_SASL_PASSWORD", "sasl-pw")
    monkeypatch.setenv("TIDINGS_LIBRDKAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("TIDINGS_LIBRDKAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION", "false")
    s = Settings()
    assert s.librdkafka == {
        "sasl.password": "sasl-pw",
        "sasl.mechanism": "PLAIN",
        "enable.ssl.certificate.verification": "false",
    }
    assert s.kafka_options == {}


def test_kafka_options_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_KAFKA_OPTIONS", '{"security.protocol": "SASL_SSL", "linger.ms": "5"}')
    s = Settings()
    assert s.kafka_options == {"security.protocol": "SASL_SSL", "linger.ms": "5"}
    assert s.librdkafka == {"security.protocol": "SASL_SSL", "linger.ms": "5"}


def test_per_option_variables_win_over_the_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_KAFKA_OPTIONS", '{"sasl.mechanism": "PLAIN", "client.id": "json"}')
    monkeypatch.setenv("TIDINGS_LIBRDKAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    assert Settings().librdkafka == {"sasl.mechanism": "SCRAM-SHA-512", "client.id": "json"}


def test_kafka_options_json_must_be_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_KAFKA_OPTIONS", "{not json")
    with pytest.raises(SettingsError, match="kafka_options"):
        Settings()


def test_kafka_options_values_must_be_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_KAFKA_OPTIONS", '{"linger.ms": 5}')
    with pytest.raises(ValidationError, match=r"linger\.ms"):
        Settings()


# -- secrets -----------------------------------------------------------------------------------


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_secrets_are_read(secret_settings: Settings) -> None:
    s = secret_settings
    assert isinstance(s.smtp_password, SecretStr)
    assert s.smtp_password.get_secret_value() == "smtp-pw-7d1e"
    assert s.webhook_signing_secret is not None
    assert s.webhook_signing_secret.get_secret_value() == "whsec-9b2c"
    assert s.redis_url == SECRETS["TIDINGS_REDIS_URL"]
    assert s.librdkafka["sasl.password"] == "sasl-pw-c3d4"
    assert s.librdkafka["ssl.key.password"] == "keypass-e5f6"
    assert s.librdkafka["sasl.oauthbearer.client.secret"] == "oauth-secret-a7b8"
    assert s.channel_config("email")["password"] == s.smtp_password
    assert s.channel_config("webhook")["signing_secret"] == s.webhook_signing_secret


@pytest.mark.parametrize("render", [repr, str, lambda s: json.dumps(s.describe()), lambda s: f"{s!r} {s}"])
def test_secrets_never_show(secret_settings: Settings, render: object) -> None:
    text = render(secret_settings)  # type: ignore[operator]
    assert isinstance(text, str)
    for value in SECRET_VALUES:
        assert value not in text


def test_describe_masks_but_keeps_the_rest(secret_settings: Settings) -> None:
    d = secret_settings.describe()
    assert d["smtp_password"] == "***"
    assert d["webhook_signing_secret"] == "***"
    assert d["redis_url"] == "redis://app:***@redis.internal:6380/2"
    assert d["schema_registry_url"] == "https://sr-user:***@registry.internal"
    assert d["kafka_options"] == {
        "sasl.oauthbearer.client.secret": "***",
        "sasl.jaas.config": "***",
        "ssl.key.pem": "***",
        "security.protocol": "SASL_SSL",
    }
    assert d["librdkafka"]["sasl.password"] == "***"
    assert d["librdkafka"]["ssl.key.password"] == "***"
    assert d["librdkafka"]["security.protocol"] == "SASL_SSL"
    assert d["kafka_bootstrap"] == "localhost:9092"
    assert d["rules"] == "config/rules.yaml"
    json.dumps(d)  # safe to log as JSON


def test_describe_leaves_absent_secrets_as_none() -> None:
    d = Settings().describe()
    assert d["smtp_password"] is None
    assert d["webhook_signing_secret"] is None
    assert d["schema_registry_url"] is None
    assert d["redis_url"] == "redis://localhost:6379/0"


def test_repr_does_not_list_librdkafka(secret_settings: Settings) -> None:
    assert "librdkafka" not in repr(secret_settings)
    assert "redis_url='redis://app:***@redis.internal:6380/2'" in repr(secret_settings)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:pw@host", "rediss://user:***@host"),
        ("redis://user:pa:ss@host/0", "redis://user:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host:6379", "redis://user@host:6379"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_mask_url_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


def test_mask_url_password_with_an_at_sign_in_the_password() -> None:
    # redis-py reads "redis://:p@ss@host" as password "p@ss" (the last '@' ends the userinfo).
    assert "ss" not in mask_url_password("redis://:p@ss@host:6379/0").split("@host")[0]


def test_mask_options() -> None:
    assert mask_options({
        "sasl.password": "a", "ssl.key.password": "b", "sasl.oauthbearer.client.secret": "c",
        "sasl.jaas.config": "d", "ssl.key.pem": "e", "ssl.key": "f", "sasl.oauthbearer.token": "g",
        "sasl.username": "alice", "ssl.key.location": "/etc/key.pem", "bootstrap.servers": "k:9092",
    }) == {
        "sasl.password": "***", "ssl.key.password": "***", "sasl.oauthbearer.client.secret": "***",
        "sasl.jaas.config": "***", "ssl.key.pem": "***", "ssl.key": "***", "sasl.oauthbearer.token": "***",
        "sasl.username": "alice", "ssl.key.location": "/etc/key.pem", "bootstrap.servers": "k:9092",
    }


# -- channel configuration ----------------------------------------------------------------------


def test_channel_config_for_builtin_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_SMTP_HOST", "mail.internal")
    monkeypatch.setenv("TIDINGS_SMTP_PORT", "2525")
    monkeypatch.setenv("TIDINGS_WEBHOOK_TIMEOUT", "3.5")
    s = Settings()
    email = s.channel_config("email")
    assert (email["host"], email["port"], email["password"], email["security"]) == (
        "mail.internal", 2525, None, "none",
    )
    assert email["from_address"] == "Tidings <notifications@localhost>"
    assert s.channel_config("webhook") == {
        "signing_secret": None, "timeout": 3.5, "auth": {}, "allow_networks": (), "max_redirects": 0,
        "per_second": None,
    }


def test_webhook_auth_and_allow_list_reach_the_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_WEBHOOK_AUTH", '{"https://api.example.com/": {"type": "bearer", "token": "tok-123"}}')
    monkeypatch.setenv("TIDINGS_WEBHOOK_ALLOW_PRIVATE", "10.0.0.0/8, 127.0.0.1")
    s = Settings()
    config = s.channel_config("webhook")
    assert config["allow_networks"] == ("10.0.0.0/8", "127.0.0.1")
    assert config["auth"]["https://api.example.com/"]["token"] == "tok-123"
    assert "tok-123" not in repr(s) + str(s.describe())


def test_webhook_auth_that_is_not_json_names_the_setting_not_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_WEBHOOK_AUTH", "{token: s3cret-value")
    with pytest.raises(ConfigError, match="TIDINGS_WEBHOOK_AUTH is not valid JSON") as caught:
        Settings().channel_config("webhook")
    assert "s3cret" not in str(caught.value)


def test_channel_config_for_other_channels_reads_their_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_PAGER_TOKEN", "xoxb-1")
    monkeypatch.setenv("TIDINGS_PAGER_DEFAULT_CHANNEL", "#alerts")
    monkeypatch.setenv("TIDINGS_PAGERX_TOKEN", "other")
    assert Settings().channel_config("pager") == {"token": "xoxb-1", "default_channel": "#alerts"}


def test_provider_channels_get_typed_settings_and_hide_their_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_TELEGRAM_BOT_TOKEN", "123:telegram-secret-token-value-000")
    monkeypatch.setenv("TIDINGS_TELEGRAM_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TIDINGS_SMS_AUTH_TOKEN", "twilio-secret-token")
    monkeypatch.setenv("TIDINGS_SMS_ACCOUNT_SID", "AC" + "1" * 32)
    monkeypatch.setenv("TIDINGS_SMS_FROM", "+15550001111")
    s = Settings()
    telegram = s.channel_config("telegram")
    assert telegram["base_url"] == "http://127.0.0.1:9"
    assert telegram["bot_token"].get_secret_value() == "123:telegram-secret-token-value-000"
    sms = s.channel_config("sms")
    assert (sms["account_sid"], sms["from_number"], sms["max_segments"]) == ("AC" + "1" * 32, "+15550001111", 4)
    assert "messaging_service_sid" not in sms  # unset values leave the channel's own default
    assert s.channel_config("teams") == {"timeout": 10.0}
    shown = repr(s) + str(s.describe())
    assert "telegram-secret-token" not in shown
    assert "twilio-secret-token" not in shown
