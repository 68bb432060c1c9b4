from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import Catalog, Delivery, Priority, State, Status, delivery_id
from schemas.avro import SCHEMA_DIR, SINGLE_OBJECT_MAGIC
from schemas.errors import DecodeError, SchemaMismatchError
from schemas.models import event_key

BASE = ("/jobs/matcher", "evt-1", "job-match", "u-ada", "email")
T0 = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)


def _ms(value: datetime) -> datetime:
    """What survives the wire: timestamp-millis."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def _delivery(**overrides: object) -> Delivery:
    fields: dict[str, object] = {
        "delivery_id": delivery_id(*BASE),
        "event_id": "evt-1",
        "event_source": "/jobs/matcher",
        "event_type": "jobs.match.found",
        "event_time": T0,
        "tenant": "default",
        "rule": "job-match",
        "channel": "email",
        "recipient_id": "u-ada",
        "address": "ada@example.com",
        "locale": "de-AT",
        "priority": Priority.high,
        "subject": "New match: Engineer at Acme (80%)",
        "text": "Hello Ada,\n\nÜbereinstimmung 80 %\n",
        "html": "<p>Hello &lt;Ada&gt;</p>",
        "payload": '{"id":"x"}',
        "created_at": T0 + timedelta(seconds=1),
        "deadline": T0 + timedelta(days=1),
        "attempt": 2,
        "metadata": {"trace": "abc", "k": ""},
    }
    fields.update(overrides)
    return Delivery.model_validate(fields)


# -- delivery_id ---------------------------------------------------------------


def test_delivery_id_is_deterministic_uuid5() -> None:
    first = delivery_id(*BASE)
    assert first == delivery_id(*BASE)
    parsed = uuid.UUID(first)
    assert parsed.version == 5
    assert str(parsed) == first


@pytest.mark.parametrize("parts", [BASE, ("s", "é", "r", "u-ü", "email"), ("", "", "", "", ""), ("x" * 300,) * 5])
def test_delivery_id_is_exactly_the_standard_uuid5(parts: tuple[str, ...]) -> None:
    # computed by hand for speed: must stay byte for byte what uuid.uuid5 gives (ids are persistent)
    namespace = uuid.UUID("6f1c2a54-7d0e-4b8e-9a51-3b2f0c8e9d17")
    assert delivery_id(*parts) == str(uuid.uuid5(namespace, "\x1f".join(parts)))


@pytest.mark.parametrize("position", range(5))
def test_delivery_id_changes_with_each_part(position: int) -> None:
    changed = list(BASE)
    changed[position] = changed[position] + "x"
    assert delivery_id(*changed) != delivery_id(*BASE)


def test_delivery_id_parts_cannot_be_shifted_into_each_other() -> None:
    # "ab" + "c" must not collide with "a" + "bc".
    assert delivery_id("/s", "ab", "c", "u", "email") != delivery_id("/s", "a", "bc", "u", "email")


def test_delivery_ids_are_all_distinct_across_combinations() -> None:
    ids = {
        delivery_id(src, eid, rule, user, channel)
        for src in ("/a", "/b")
        for eid in ("1", "2")
        for rule in ("r1", "r2")
        for user in ("u1", "u2")
        for channel in ("email", "webhook")
    }
    assert len(ids) == 32


def test_event_key_is_stable_and_distinguishes_identities() -> None:
    key = event_key("/s", "1")
    assert key == event_key("/s", "1")
    assert len(key) == 24
    int(key, 16)
    assert key != event_key("/s", "2")
    assert key != event_key("/t", "1")
    assert event_key("/s1", "") != event_key("/s", "1")


# -- Delivery ------------------------------------------------------------------


def test_delivery_round_trip(catalog: Catalog) -> None:
    original = _delivery()
    value = original.encode(catalog)
    assert value[:2] == SINGLE_OBJECT_MAGIC
    assert value[2:10] == catalog.named("tidings.internal.Delivery").fingerprint
    back = Delivery.decode(catalog, value)
    expected = original.model_copy(update={
        "event_time": _ms(original.event_time),
        "created_at": _ms(original.created_at),
        "deadline": _ms(original.deadline),  # type: ignore[arg-type]
    })
    assert back == expected
    assert back.priority is Priority.high
    assert back.metadata == {"trace": "abc", "k": ""}
    assert back.event_time.tzinfo is not None


def test_delivery_round_trip_with_defaults(catalog: Catalog) -> None:
    original = _delivery(html=None, payload=None, deadline=None, attempt=0, metadata={},
                         priority=Priority.normal, locale="en")
    back = Delivery.decode(catalog, original.encode(catalog))
    assert back.html is None
    assert back.payload is None
    assert back.deadline is None
    assert back.metadata == {}
    assert back.attempt == 0
    assert back.priority is Priority.normal


def test_delivery_time_precision_is_milliseconds_on_the_wire(catalog: Catalog) -> None:
    back = Delivery.decode(catalog, _delivery().encode(catalog))
    assert back.event_time == datetime(2024, 5, 17, 9, 30, 15, 123000, tzinfo=UTC)
    assert back.event_time != T0


def test_delivery_created_at_defaults_to_now() -> None:
    before = datetime.now(UTC)
    d = Delivery(
        delivery_id="d", event_id="e", event_source="/s", event_type="t", event_time=T0, tenant="default",
        rule="r", channel="email", recipient_id="u", address="a@b", subject="s", text="t",
    )
    assert before <= d.created_at <= datetime.now(UTC)
    assert d.locale == "en"
    assert d.priority is Priority.normal


def test_delivery_is_frozen_and_strict() -> None:
    d = _delivery()
    with pytest.raises(ValidationError):
        d.attempt = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        _delivery(surprise=1)
    with pytest.raises(ValidationError, match="priority"):
        _delivery(priority="whenever")


def test_to_avro_gives_enum_values_that_are_their_symbols() -> None:
    data = _delivery().to_avro()
    assert isinstance(data["priority"], str) and data["priority"] == "high"
    data = Status(state=State.routed, event_id="e", event_source="/s", event_type="t").to_avro()
    assert isinstance(data["state"], str) and data["state"] == "routed"


def test_to_avro_is_a_copy() -> None:
    delivery = _delivery()
    data = delivery.to_avro()
    data["subject"] = "changed"
    assert delivery.subject != "changed"


# -- Status --------------------------------------------------------------------


def test_status_round_trip(catalog: Catalog) -> None:
    original = Status(
        state=State.dead_lettered, event_id="evt-1", event_source="/s", event_type="t",
        delivery_id="d-1", channel="webhook", recipient_id="u-1", rule="r", reason="PermanentError",
        detail="410 Gone", attempt=3, provider_id="p-9", at=T0,
    )
    back = Status.decode(catalog, original.encode(catalog))
    assert back == original.model_copy(update={"at": _ms(T0)})
    assert back.state is State.dead_lettered


@pytest.mark.parametrize("state", list(State))
def test_every_state_survives_the_wire(catalog: Catalog, state: State) -> None:
    original = Status(state=state, event_id="e", event_source="/s", event_type="t", at=T0)
    back = Status.decode(catalog, original.encode(catalog))
    assert back.state is state
    assert back.delivery_id is None
    assert back.reason is None
    assert back.at == _ms(T0)


def test_status_for_delivery_copies_the_delivery_fields() -> None:
    d = _delivery()
    s = Status.for_delivery(d, State.delivered, provider_id="msg-1", at=T0, reason="ok")
    assert s.state is State.delivered
    assert (s.event_id, s.event_source, s.event_type) == (d.event_id, d.event_source, d.event_type)
    assert (s.delivery_id, s.channel, s.recipient_id, s.rule) == (
        d.delivery_id, d.channel, d.recipient_id, d.rule,
    )
    assert s.attempt == d.attempt == 2
    assert s.provider_id == "msg-1"
    assert s.reason == "ok"
    assert s.at == T0
    assert s.detail is None


def test_status_for_delivery_takes_an_explicit_attempt() -> None:
    # A retry reports the attempt it is about to make, not the one the delivery carries.
    assert Status.for_delivery(_delivery(), State.retrying, attempt=5).attempt == 5
    assert Status.for_delivery(_delivery(attempt=1), State.retrying).attempt == 1


# -- decoding failures ---------------------------------------------------------


@pytest.mark.parametrize("value", [b"", None, b"garbage", b"\x00\x00", SINGLE_OBJECT_MAGIC + b"\x01" * 8])
def test_decoding_garbage_is_a_decode_error(catalog: Catalog, value: bytes | None) -> None:
    with pytest.raises(DecodeError):
        Delivery.decode(catalog, value)
    with pytest.raises(DecodeError):
        Status.decode(catalog, value)


def test_truncated_delivery_is_a_decode_error(catalog: Catalog) -> None:
    value = _delivery().encode(catalog)
    with pytest.raises(DecodeError, match=r"cannot decode body as tidings\.internal\.Delivery"):
        Delivery.decode(catalog, value[:30])


def test_status_bytes_are_not_a_delivery(catalog: Catalog) -> None:
    value = Status(state=State.routed, event_id="e", event_source="/s", event_type="t").encode(catalog)
    with pytest.raises(SchemaMismatchError, match=r"expected a tidings\.internal\.Delivery record"):
        Delivery.decode(catalog, value)


def test_record_that_does_not_validate_is_a_decode_error(catalog: Catalog, tmp_path: Path) -> None:
    # A catalog whose Status schema grew a field the model does not know: Avro decodes it,
    # the model (extra="forbid") refuses it, and that must surface as a DecodeError.
    raw = json.loads((SCHEMA_DIR / "tidings.status.avsc").read_text())
    raw["fields"].append({"name": "surprise", "type": "string", "default": "boo"})
    (tmp_path / "tidings.status.avsc").write_text(json.dumps(raw))
    grown = Catalog.load(tmp_path)
    value = Status(state=State.routed, event_id="e", event_source="/s", event_type="t").encode(grown)
    with pytest.raises(DecodeError, match=r"tidings\.internal\.Status record does not validate") as info:
        Status.decode(grown, value)
    assert isinstance(info.value.__cause__, ValidationError)
    assert "surprise" in str(info.value)
