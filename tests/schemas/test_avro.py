from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas import Catalog
from schemas.avro import SCHEMA_DIR, SINGLE_OBJECT_MAGIC, crc64_avro, fingerprint
from schemas.errors import ConfigError, DecodeError, SchemaMismatchError
from schemas.models import Priority, State

MATCH = {
    "user_id": "u-1", "match_id": "m-1", "job_title": "Engineer", "company": "Acme",
    "score": 80.0, "location": None, "is_remote": False,
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def test_crc64_avro_matches_the_spec_vector() -> None:
    # The Avro specification's fingerprint of the schema "null".
    assert crc64_avro(b'"null"') == 7195948357588979594


def test_fingerprint_agrees_with_fastavro(catalog: Catalog) -> None:
    for schema in catalog.current.values():
        canonical = to_parsing_canonical_form(schema.parsed)
        assert fingerprint(schema.parsed) == bytes.fromhex(fastavro_fingerprint(canonical, "CRC-64-AVRO"))


def test_catalog_has_the_demo_event_types(catalog: Catalog) -> None:
    assert set(catalog.by_type) == {
        "jobs.match.found", "applications.status.changed", "bookgen.job.completed", "system.alert",
    }
    assert "tidings.internal.Delivery" in catalog.current
    assert "tidings.internal.Status" in catalog.current


def test_single_object_round_trip(catalog: Catalog) -> None:
    schema = catalog.for_type("jobs.match.found")
    value = catalog.encode(schema, MATCH)
    assert value[:2] == SINGLE_OBJECT_MAGIC
    assert value[2:10] == schema.fingerprint
    reader, data = catalog.decode(value)
    assert reader is schema
    assert data == MATCH


def test_old_writer_decodes_with_the_new_field_default(catalog: Catalog) -> None:
    old = next(s for s in catalog.by_fingerprint.values() if s.path and s.path.name == "jobs.match.found.v1.avsc")
    assert "is_remote" not in old.field_names
    v1 = {k: v for k, v in MATCH.items() if k != "is_remote"}
    value = catalog.encode(old, v1)
    _, data = catalog.decode(value, reader=catalog.for_type("jobs.match.found"))
    assert data["is_remote"] is False
    assert data["job_title"] == "Engineer"


def test_confluent_framing_is_recognised(catalog: Catalog) -> None:
    schema = catalog.for_type("system.alert")
    value = catalog.encode_confluent(schema, 7, {"severity": "critical", "component": "x", "message": "y"})
    assert value[:5] == struct.pack(">bI", 0, 7)
    with pytest.raises(DecodeError, match=r"schema id 7.*no schema registry"):
        catalog.decode(value)


class _Registry:
    def __init__(self, raw: dict[str, object]) -> None:
        self.raw = raw

    def schema_by_id(self, schema_id: int) -> dict[str, object]:
        assert schema_id == 3
        return self.raw


def test_confluent_framing_resolves_through_a_registry() -> None:
    raw = json.loads((SCHEMA_DIR / "system.alert.avsc").read_text())
    catalog = Catalog.load(registry=_Registry(raw))
    schema = catalog.for_type("system.alert")
    value = catalog.encode_confluent(schema, 3, {"severity": "info", "component": "c", "message": "m"})
    _, data = catalog.decode(value)
    assert data == {"severity": "info", "component": "c", "message": "m"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty value"),
        (b"\x01\x02\x03", "unknown framing: first byte 0x01"),
        (SINGLE_OBJECT_MAGIC + b"\x00" * 3, "truncated single-object header"),
        (SINGLE_OBJECT_MAGIC + b"\xde\xad\xbe\xef\x00\x00\x00\x00body", "unknown schema fingerprint deadbeef"),
    ],
)
def test_bad_bytes_are_named(catalog: Catalog, value: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        catalog.decode(value)


def test_truncated_body_is_a_decode_error(catalog: Catalog) -> None:
    value = catalog.encode(catalog.for_type("jobs.match.found"), MATCH)
    with pytest.raises(DecodeError, match="cannot decode body"):
        catalog.decode(value[:14])


def test_body_of_another_type_is_a_schema_mismatch(catalog: Catalog) -> None:
    value = catalog.encode(catalog.for_type("system.alert"),
                           {"severity": "info", "component": "c", "message": "m"})
    with pytest.raises(SchemaMismatchError, match=r"written as tidings\.events\.SystemAlert"):
        catalog.decode(value, reader=catalog.for_type("jobs.match.found"))


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({**MATCH, "score": "high"}, "score", "field 'score' does not fit type double"),
        ({k: v for k, v in MATCH.items() if k != "company"}, "company", "missing required field 'company'"),
        ({**MATCH, "salary": 1}, "salary", "unknown field 'salary'"),
        ({**MATCH, "location": 5}, "location", "'location' does not fit type null or string"),
    ],
)
def test_data_that_does_not_fit_names_the_field(catalog: Catalog, data: dict[str, object], field: str,
                                                message: str) -> None:
    with pytest.raises(SchemaMismatchError, match=message) as info:
        catalog.encode(catalog.for_type("jobs.match.found"), data)
    assert info.value.field == field


def test_enum_symbols_are_checked(catalog: Catalog) -> None:
    with pytest.raises(SchemaMismatchError, match="one of info/warning/critical"):
        catalog.encode(catalog.for_type("system.alert"), {"severity": "meh", "component": "c", "message": "m"})


def test_unknown_event_type(catalog: Catalog) -> None:
    with pytest.raises(SchemaMismatchError, match="no schema declares event type 'nope'"):
        catalog.for_type("nope")


def test_encoding_matches_fastavro_schemaless(catalog: Catalog) -> None:
    schema = catalog.for_type("jobs.match.found")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, MATCH)
    assert catalog.encode(schema, MATCH)[10:] == buf.getvalue()


def test_two_current_schemas_for_one_type_are_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.avsc").write_text(json.dumps(
            {"type": "record", "name": name.upper(), "ce_type": "same.type", "fields": []}))
    with pytest.raises(ConfigError, match=r"two current schemas declare ce_type same\.type"):
        Catalog.load(tmp_path)


def test_the_shipped_schemas_evolve_compatibly(catalog: Catalog) -> None:
    assert catalog.evolution_problems() == []


def _record(name: str, fields: list[dict[str, object]]) -> dict[str, object]:
    return {"type": "record", "name": name, "namespace": "t", "fields": fields}


@pytest.mark.parametrize(
    ("old_fields", "new_fields", "problem"),
    [
        ([{"name": "a", "type": "string"}],
         [{"name": "a", "type": "string"}, {"name": "b", "type": "int"}],
         "t.E.b was added without a default"),
        ([{"name": "a", "type": "string"}], [{"name": "a", "type": "int"}],
         "t.E.a changed type from string to int"),
        ([{"name": "a", "type": ["null", "string"]}], [{"name": "a", "type": "string"}],
         "t.E.a changed type from null or string to string"),
    ],
)
def test_incompatible_evolution_is_named(tmp_path: Path, old_fields: list[dict[str, object]],
                                         new_fields: list[dict[str, object]], problem: str) -> None:
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "e.v1.avsc").write_text(json.dumps(_record("E", old_fields)))
    (tmp_path / "e.avsc").write_text(json.dumps(_record("E", new_fields)))
    assert [p.split(": ", 1)[1] for p in Catalog.load(tmp_path).evolution_problems()] == [problem]


@pytest.mark.parametrize(
    ("old_type", "new_type"),
    [("int", "long"), ("float", "double"), ("string", ["null", "string"]),
     (["null", "string"], ["null", "string", "int"])],
)
def test_compatible_changes_pass(tmp_path: Path, old_type: object, new_type: object) -> None:
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "e.v1.avsc").write_text(json.dumps(_record("E", [{"name": "a", "type": old_type}])))
    (tmp_path / "e.avsc").write_text(json.dumps(_record("E", [
        {"name": "a", "type": new_type}, {"name": "b", "type": "boolean", "default": False}])))
    assert Catalog.load(tmp_path).evolution_problems() == []


# -- the compiled body writer ---------------------------------------------------------

WRITER_CASES = [
    ("tidings.internal.Delivery", {
        "delivery_id": "d-1", "event_id": "e-1", "event_source": "s", "event_type": "jobs.match.found",
        "event_time": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC), "tenant": "default", "rule": "r",
        "channel": "webhook", "recipient_id": "u-1", "address": "https://example.com/h", "locale": "de-AT",
        "priority": Priority.urgent, "subject": "Grüße ✓", "text": "x" * 20_000, "html": None,
        "payload": '{"a":1}', "created_at": datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC),
        "deadline": None, "attempt": 70_000, "metadata": {"k": "v", "ü": "€"},
    }),
    ("tidings.internal.Delivery", {  # defaults left out, a non-UTC zone, a datetime as int millis
        "delivery_id": "d-2", "event_id": "e-2", "event_source": "s", "event_type": "t",
        "event_time": 1_700_000_000_123, "tenant": "t", "rule": "r", "channel": "email", "recipient_id": "u",
        "address": "a@example.com", "subject": "", "text": "",
        "created_at": datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5))),
        "deadline": datetime(2030, 1, 1, tzinfo=UTC), "attempt": -3,
    }),
    ("tidings.internal.Status", {
        "state": State.dead_lettered, "event_id": "e", "event_source": "s", "event_type": "t",
        "delivery_id": None, "reason": "x", "attempt": 2, "at": datetime.now(UTC),
    }),
    ("tidings.events.JobMatchFound", MATCH),
    ("tidings.events.JobMatchFound", {**MATCH, "location": "Berlin", "is_remote": True, "score": 1e300}),
    ("tidings.events.BookgenJobCompleted", {  # an array of nested records, defaults left out in one
        "user_id": "u", "job_id": "j", "title": "Grüße", "status": "completed",
        "attachments": [
            {"filename": "a.pdf", "content_type": "application/pdf", "url": "https://f.example/a", "content": None},
            {"filename": "b.bin", "content": b"\x00\xff"},
        ],
    }),
    ("tidings.events.BookgenJobCompleted", {"user_id": "u", "job_id": "j", "title": "t", "status": "failed"}),
]


@pytest.mark.parametrize(("name", "data"), WRITER_CASES)
def test_compiled_writer_writes_what_fastavro_writes(catalog: Catalog, name: str, data: dict[str, object]) -> None:
    schema = catalog.named(name)
    assert schema.writer is not None, f"{name} should be covered by the compiled writer"
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, data)
    assert schema.writer(data) == buf.getvalue()
    assert catalog.encode(schema, data, check=False) == SINGLE_OBJECT_MAGIC + schema.fingerprint + buf.getvalue()


def test_every_shipped_schema_is_compiled(catalog: Catalog) -> None:
    assert [s.name for s in catalog.by_fingerprint.values() if s.writer is None] == []


def test_a_datum_the_writer_does_not_take_goes_through_fastavro(catalog: Catalog) -> None:
    schema = catalog.named("tidings.internal.Status")
    data = {"state": "routed", "event_id": "e", "event_source": "s", "event_type": "t",
            "at": datetime(2026, 1, 1, 12, 0)}  # naive: fastavro reads it as local time
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, data)
    assert catalog.encode(schema, data, check=False)[10:] == buf.getvalue()
    with pytest.raises(ValueError, match="nope"):  # fastavro's own error for an unknown symbol
        catalog.encode(schema, {**data, "state": "nope"}, check=False)


def test_schemas_the_writer_does_not_cover_still_encode() -> None:
    nested = {"type": "record", "name": "Outer", "fields": [
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}},
        {"name": "fixed", "type": {"type": "fixed", "name": "F", "size": 2}},
    ]}
    catalog = Catalog()
    schema = catalog.add(nested, current=True)
    assert schema.writer is None
    value = catalog.encode(schema, {"inner": {"x": 5}, "fixed": b"ab"}, check=False)
    assert catalog.decode(value)[1] == {"inner": {"x": 5}, "fixed": b"ab"}
