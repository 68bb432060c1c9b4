from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas import CloudEvent
from schemas.cloudevents import (
    CONTENT_TYPE,
    DEFAULT_TENANT,
    REQUIRED,
    SPECVERSION,
    format_time,
    parse_time,
)
from schemas.errors import InputError, MissingHeaderError

WHEN = datetime(2024, 5, 17, 9, 30, 15, 123000, tzinfo=UTC)


def _headers(**overrides: bytes | None) -> list[tuple[str, bytes | str | None]]:
    base: dict[str, bytes | None] = {
        "ce_specversion": b"1.0",
        "ce_id": b"evt-1",
        "ce_source": b"/jobs/matcher",
        "ce_type": b"jobs.match.found",
        "ce_time": b"2024-05-17T09:30:15.123Z",
    }
    base.update(overrides)
    return [(k, v) for k, v in base.items() if v is not None]


# -- new ----------------------------------------------------------------------


def test_new_fills_id_time_and_default_tenant() -> None:
    before = datetime.now(UTC)
    ce = CloudEvent.new("jobs.match.found", source="/jobs/matcher")
    after = datetime.now(UTC)
    assert uuid.UUID(ce.id).version == 4
    assert before <= ce.time <= after
    assert ce.time.tzinfo is not None
    assert ce.tenant == DEFAULT_TENANT == "default"
    assert ce.subject is None
    assert ce.specversion == SPECVERSION == "1.0"
    assert ce.identity == ("/jobs/matcher", ce.id)


def test_new_ids_differ() -> None:
    ids = {CloudEvent.new("t", source="/s").id for _ in range(50)}
    assert len(ids) == 50


def test_new_keeps_what_it_is_given() -> None:
    ce = CloudEvent.new("system.alert", source="/mon", subject="oncall", id="a-1", tenant="acme", time=WHEN)
    assert (ce.type, ce.source, ce.subject, ce.id, ce.tenant, ce.time) == (
        "system.alert", "/mon", "oncall", "a-1", "acme", WHEN,
    )


def test_new_with_empty_tenant_uses_the_default() -> None:
    assert CloudEvent.new("t", source="/s", tenant="").tenant == DEFAULT_TENANT


def test_cloud_event_is_frozen() -> None:
    ce = CloudEvent.new("t", source="/s")
    with pytest.raises(AttributeError):
        ce.id = "other"  # type: ignore[misc]


# -- to_headers ---------------------------------------------------------------


def test_to_headers_writes_binary_mode_attributes() -> None:
    ce = CloudEvent.new("jobs.match.found", source="/jobs/matcher", subject="u-1", id="evt-1", time=WHEN)
    headers = ce.to_headers()
    assert headers == [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"evt-1"),
        ("ce_source", b"/jobs/matcher"),
        ("ce_type", b"jobs.match.found"),
        ("ce_time", b"2024-05-17T09:30:15.123Z"),
        ("content-type", CONTENT_TYPE.encode()),
        ("ce_subject", b"u-1"),
    ]
    assert CONTENT_TYPE == "application/avro"
    assert all(isinstance(v, bytes) for _, v in headers)


def test_default_tenant_is_not_written_as_a_header() -> None:
    ce = CloudEvent.new("t", source="/s", tenant=DEFAULT_TENANT)
    names = [k for k, _ in ce.to_headers()]
    assert "ce_tenant" not in names
    assert "ce_subject" not in names


def test_other_tenant_is_written_as_a_header() -> None:
    ce = CloudEvent.new("t", source="/s", tenant="acme")
    assert ("ce_tenant", b"acme") in ce.to_headers()


def test_to_headers_writes_time_in_utc() -> None:
    vienna = timezone(timedelta(hours=2))
    ce = CloudEvent.new("t", source="/s", time=datetime(2024, 5, 17, 11, 30, 15, 123456, tzinfo=vienna))
    assert dict(ce.to_headers())["ce_time"] == b"2024-05-17T09:30:15.123Z"


def test_non_ascii_attributes_are_utf8() -> None:
    ce = CloudEvent.new("t", source="/ünïcode", subject="Kurt Gödel", time=WHEN)
    assert ("ce_subject", "Kurt Gödel".encode()) in ce.to_headers()
    assert CloudEvent.from_headers(ce.to_headers()) == ce


# -- round trip ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "tenant"),
    [(None, DEFAULT_TENANT), ("u-1", DEFAULT_TENANT), ("u-1", "acme"), (None, "acme")],
)
def test_round_trip(subject: str | None, tenant: str) -> None:
    ce = CloudEvent.new("jobs.match.found", source="/jobs/matcher", subject=subject, tenant=tenant, time=WHEN)
    back = CloudEvent.from_headers(ce.to_headers())
    assert back == ce
    assert back.identity == ce.identity


def test_round_trip_truncates_time_to_milliseconds() -> None:
    precise = datetime(2024, 5, 17, 9, 30, 15, 123999, tzinfo=UTC)
    ce = CloudEvent.new("t", source="/s", time=precise)
    back = CloudEvent.from_headers(ce.to_headers())
    assert back.time == precise.replace(microsecond=123000)
    assert back.time.tzinfo is not None


def test_from_headers_accepts_text_values_and_ignores_other_headers() -> None:
    headers: list[tuple[str, bytes | str | None]] = [
        ("ce_specversion", "1.0"), ("ce_id", "e"), ("ce_source", "/s"), ("ce_type", "t"),
        ("traceparent", b"00-abc"), ("content-type", b"application/avro"), ("ce_subject", None),
    ]
    ce = CloudEvent.from_headers(headers)
    assert (ce.id, ce.source, ce.type, ce.subject, ce.tenant) == ("e", "/s", "t", None, DEFAULT_TENANT)


def test_empty_subject_and_tenant_read_as_absent() -> None:
    ce = CloudEvent.from_headers(_headers(ce_subject=b"", ce_tenant=b""))
    assert ce.subject is None
    assert ce.tenant == DEFAULT_TENANT


def test_last_value_of_a_repeated_header_wins() -> None:
    headers = [*_headers(), ("ce_subject", b"first"), ("ce_subject", b"second")]
    assert CloudEvent.from_headers(headers).subject == "second"


def test_missing_ce_time_defaults_to_now() -> None:
    before = datetime.now(UTC)
    ce = CloudEvent.from_headers(_headers(ce_time=None))
    assert before <= ce.time <= datetime.now(UTC)


def test_time_without_offset_is_read_as_utc() -> None:
    ce = CloudEvent.from_headers(_headers(ce_time=b"2024-05-17T09:30:15"))
    assert ce.time == datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC)


def test_time_with_offset_is_kept_as_that_instant() -> None:
    ce = CloudEvent.from_headers(_headers(ce_time=b"2024-05-17T11:30:15.123+02:00"))
    assert ce.time == WHEN


# -- missing and invalid headers -----------------------------------------------


@pytest.mark.parametrize("name", REQUIRED)
def test_each_missing_required_header_is_named(name: str) -> None:
    with pytest.raises(MissingHeaderError) as info:
        CloudEvent.from_headers(_headers(**{name: None}))
    assert str(info.value) == f"missing CloudEvents header(s): {name}"
    assert info.value.reason == "MissingHeaderError"
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("name", REQUIRED)
def test_empty_required_header_counts_as_missing(name: str) -> None:
    with pytest.raises(MissingHeaderError, match=f"header\\(s\\): {name}$"):
        CloudEvent.from_headers(_headers(**{name: b""}))


def test_none_valued_required_header_counts_as_missing() -> None:
    headers = [*_headers(ce_id=None), ("ce_id", None)]
    with pytest.raises(MissingHeaderError, match="ce_id"):
        CloudEvent.from_headers(headers)


def test_all_missing_headers_are_named_together() -> None:
    with pytest.raises(MissingHeaderError) as info:
        CloudEvent.from_headers(_headers(ce_id=None, ce_type=None))
    assert str(info.value) == "missing CloudEvents header(s): ce_id, ce_type"


@pytest.mark.parametrize("headers", [None, []])
def test_no_headers_at_all(headers: list[tuple[str, bytes]] | None) -> None:
    with pytest.raises(MissingHeaderError) as info:
        CloudEvent.from_headers(headers)
    assert str(info.value) == "missing CloudEvents header(s): ce_specversion, ce_id, ce_source, ce_type"


@pytest.mark.parametrize("version", [b"0.3", b"2.0", b"1"])
def test_unsupported_specversion(version: bytes) -> None:
    with pytest.raises(MissingHeaderError) as info:
        CloudEvent.from_headers(_headers(ce_specversion=version))
    assert str(info.value) == f"unsupported ce_specversion {version.decode()!r}, expected 1.0"


@pytest.mark.parametrize("raw", [b"yesterday", b"2024-13-01T00:00:00Z", b"17/05/2024 09:30"])
def test_bad_ce_time(raw: bytes) -> None:
    with pytest.raises(MissingHeaderError) as info:
        CloudEvent.from_headers(_headers(ce_time=raw))
    assert str(info.value) == f"ce_time {raw.decode()!r} is not an RFC 3339 timestamp"
    assert info.value.__cause__ is None


# -- time helpers --------------------------------------------------------------


def test_format_time_is_utc_with_milliseconds_and_z() -> None:
    assert format_time(WHEN) == "2024-05-17T09:30:15.123Z"
    assert format_time(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00.000Z"


def test_parse_time_inverts_format_time() -> None:
    assert parse_time(format_time(WHEN)) == WHEN
    assert parse_time("2024-05-17T09:30:15.123Z").tzinfo is not None
