"""The compiled body reader (schemas/avro.py, compile_reader) against fastavro's schemaless_reader.

Every comparison encodes with fastavro, reads the same bytes both ways and requires the
same result: equal values of the same types, dict keys in the same order, floats with
the same bits (so -0.0, infinities and NaN count too).
"""

from __future__ import annotations

import io
import json
import math
import random
import string
import struct
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fastavro
import pytest

from schemas import Catalog
from schemas.avro import SCHEMA_DIR, Schema, compile_reader
from schemas.errors import DecodeError

SEED = 20261121

_TEXTS = [
    "", "a", "plain ascii", "Grüße aus Köln", "😀🎉 emoji 👍🏽", "漢字かなカナ 한국어", "e\u0301 combining",
    "nul \x00 inside", "line\nbreak\ttab", "\U0010ffff", "€" * 70, "x" * 5000,
]
_LONG_EDGES = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, 2**31 - 1, -(2**31), 2**53, 2**62, 2**63 - 1, -(2**63)]
_INT_EDGES = [0, 1, -1, 63, -64, 64, -65, 2**31 - 1, -(2**31)]
_DOUBLES = [0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, 1e-300]
_FLOATS = [0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan, 3.4e38, 1e-45, 0.1]
_MIN_MILLIS = -62135596800000  # 0001-01-01T00:00:00Z
_MAX_MILLIS = 253402300799999  # 9999-12-31T23:59:59.999Z


def _text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_TEXTS)
    alphabet = string.ascii_letters + "äöüß€😀漢字🎉 "
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 5, 40, 300])))


def _datum(avro_type: Any, rng: random.Random) -> Any:
    """A random valid value of ``avro_type`` (a parsed schema), leaning on edge cases."""
    if isinstance(avro_type, list):
        return _datum(rng.choice(avro_type), rng)
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        logical = avro_type.get("logicalType")
        if logical == "timestamp-millis":
            pick = rng.random()
            if pick < 0.3:
                return datetime.now(UTC) + timedelta(milliseconds=rng.randint(-10**6, 10**6))
            if pick < 0.5:
                return rng.choice([_MIN_MILLIS, _MAX_MILLIS, -1, 0, 1, -86_400_000 * 365 * 100])
            return rng.randint(_MIN_MILLIS, _MAX_MILLIS)
        if logical == "timestamp-micros":
            return rng.randint(_MIN_MILLIS * 1000, _MAX_MILLIS * 1000)
        if logical == "date":
            return date(1970, 1, 1) + timedelta(days=rng.randint(-719162, 2932896))
        if logical == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128)))
        if kind == "record":
            return {f["name"]: _datum(f["type"], rng) for f in avro_type["fields"]}
        if kind == "enum":
            return rng.choice(avro_type["symbols"])
        if kind == "fixed":
            return rng.randbytes(avro_type["size"])
        if kind in ("array", "map"):
            item = avro_type["items" if kind == "array" else "values"]
            n = rng.choice([0, 0, 1, 2, 5, 70, 300] if isinstance(item, str) else [0, 1, 3])
            if kind == "array":
                return [_datum(avro_type["items"], rng) for _ in range(n)]
            return {f"{_text(rng)}{i}": _datum(avro_type["values"], rng) for i in range(n)}
        return _datum(kind, rng)
    if avro_type == "null":
        return None
    if avro_type == "boolean":
        return rng.random() < 0.5
    if avro_type == "int":
        return rng.choice(_INT_EDGES) if rng.random() < 0.5 else rng.randint(-(2**31), 2**31 - 1)
    if avro_type == "long":
        return rng.choice(_LONG_EDGES) if rng.random() < 0.5 else rng.randint(-(2**63), 2**63 - 1)
    if avro_type == "double":
        return rng.choice(_DOUBLES) if rng.random() < 0.5 else rng.uniform(-1e12, 1e12)
    if avro_type == "float":
        return rng.choice(_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)
    if avro_type == "string":
        return _text(rng)
    if avro_type == "bytes":
        return rng.randbytes(rng.choice([0, 1, 63, 64, 200, 20_000]))
    raise AssertionError(f"no generator for {avro_type!r}")


def _same(ours: Any, theirs: Any, where: str = "record") -> None:
    """Fail unless the two values are equal, of the same types, with keys in the same order."""
    assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} against {type(theirs).__name__}"
    if isinstance(ours, dict):
        assert list(ours) == list(theirs), f"{where}: keys {list(ours)} against {list(theirs)}"
        for key in ours:
            _same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), f"{where}: {len(ours)} items against {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(ours, float):
        assert struct.pack("<d", ours) == struct.pack("<d", theirs), f"{where}: {ours!r} against {theirs!r}"
    else:
        assert ours == theirs, f"{where}: {ours!r} against {theirs!r}"
        if isinstance(ours, datetime):
            assert ours.tzinfo is theirs.tzinfo, f"{where}: tzinfo {ours.tzinfo!r} against {theirs.tzinfo!r}"


def _encode(parsed: Any, datum: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


def _fastavro(parsed: Any, body: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(body), parsed, parsed)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def _every_schema() -> list[Schema]:
    return list(Catalog.load().by_fingerprint.values())


def test_every_shipped_schema_has_a_compiled_reader(catalog: Catalog) -> None:
    assert [s.path.name if s.path else s.name for s in catalog.by_fingerprint.values() if s.body_reader is None] == []


@pytest.mark.parametrize("schema", _every_schema(), ids=lambda s: s.path.name if s.path else s.name)
def test_random_records_read_as_fastavro_reads_them(schema: Schema) -> None:
    rng = random.Random(f"{SEED}:{schema.path.name if schema.path else schema.name}")
    read = schema.body_reader
    assert read is not None
    for i in range(300):
        body = _encode(schema.parsed, _datum(schema.parsed, rng))
        _same(read(body, 0), _fastavro(schema.parsed, body), f"{schema.name} #{i}")


def test_the_catalog_decodes_through_the_compiled_reader(catalog: Catalog) -> None:
    rng = random.Random(SEED)
    for schema in catalog.current.values():
        for _ in range(20):
            data = _datum(schema.parsed, rng)
            value = catalog.encode(schema, data, check=False)
            reader, decoded = catalog.decode(value)
            assert reader is schema
            _same(decoded, _fastavro(schema.parsed, value[10:]))


# Every type the reader covers, including those the catalog does not use (yet).
KITCHEN_SINK = {
    "type": "record", "name": "Sink", "namespace": "t", "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "value", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "nothing", "type": "null"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 16}},
        {"name": "empty_fixed", "type": {"type": "fixed", "name": "Nil", "size": 0}},
        {"name": "many", "type": {"type": "enum", "name": "Many", "symbols": [f"s{i}" for i in range(100)]}},
        {"name": "either", "type": ["null", "int", "string", "bytes", "double",
                                     {"type": "array", "items": "long"},
                                     {"type": "record", "name": "Pair", "fields": [
                                         {"name": "left", "type": "string"}, {"name": "right", "type": "float"}]}]},
        {"name": "nested", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
            {"name": "when", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
            {"name": "deeper", "type": {"type": "record", "name": "Deeper", "fields": [
                {"name": "flags", "type": {"type": "array", "items": "boolean"}}]}},
        ]}},
        {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "int"}}},
        {"name": "maybe_null_first", "type": ["string", "null"]},
        {"name": "micros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "millis", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def test_every_covered_type_reads_as_fastavro_reads_it() -> None:
    parsed = fastavro.parse_schema(KITCHEN_SINK)
    read = compile_reader(parsed)
    assert read is not None
    rng = random.Random(SEED)
    for i in range(200):
        body = _encode(parsed, _datum(parsed, rng))
        _same(read(body, 0), _fastavro(parsed, body), f"Sink #{i}")


_SINGLE = {"type": "record", "name": "One", "fields": []}


def _one(avro_type: Any) -> Any:
    return fastavro.parse_schema({**_SINGLE, "fields": [{"name": "x", "type": avro_type}]})


@pytest.mark.parametrize(
    ("avro_type", "body"),
    [
        # Valid encodings fastavro's writer does not produce: blocks with a negative count
        # (then a byte size), several blocks, varints longer than they need to be.
        ({"type": "array", "items": "int"}, b"\x03\x04\x02\x04\x02\x06\x00"),
        ({"type": "map", "values": "string"}, b"\x01\x08\x02a\x02b\x02\x02c\x02d\x00"),
        ("long", b"\x80\x80\x80\x00"),
        ("long", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
        ("long", b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
        ("string", b"\x86\x00abc"),
        (["null", "string"], b"\x82\x00\x02z"),
        ({"type": "enum", "name": "E", "symbols": ["a", "b"]}, b"\x82\x00"),
        ("boolean", b"\x02"),  # fastavro reads any non-zero byte as true
        ({"type": "long", "logicalType": "timestamp-millis"}, b"\x80\x80\x80\x80\x80\x00"),
    ],
)
def test_unusual_valid_encodings_read_as_fastavro_reads_them(avro_type: Any, body: bytes) -> None:
    parsed = _one(avro_type)
    read = compile_reader(parsed)
    assert read is not None
    _same(read(body, 0), _fastavro(parsed, body))


@pytest.mark.parametrize(
    "avro_type",
    [
        {"type": "string", "logicalType": "json"},  # a logical type it does not know
        {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
        {"type": "array", "items": "null"},  # items of no bytes: a count cannot be bounded
    ],
)
def test_schemas_it_does_not_cover_go_to_fastavro(avro_type: Any) -> None:
    assert compile_reader(_one(avro_type)) is None


def test_a_named_type_used_again_by_name_reads_as_fastavro_reads_it() -> None:
    parsed = fastavro.parse_schema({**_SINGLE, "namespace": "t", "fields": [
        {"name": "a", "type": {"type": "record", "name": "P", "fields": [
            {"name": "x", "type": "int"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["p", "q"]}}]}},
        {"name": "b", "type": "P"},
        {"name": "c", "type": ["null", "t.P"]},
        {"name": "d", "type": {"type": "array", "items": "E"}},
    ]})
    read = compile_reader(parsed)
    assert read is not None
    rng = random.Random(SEED)
    for _ in range(50):
        datum = {"a": {"x": rng.randint(-99, 99), "e": "q"}, "b": {"x": 2, "e": "p"},
                 "c": rng.choice([None, {"x": 3, "e": "q"}]), "d": rng.choice([[], ["p", "q", "q"]])}
        body = _encode(parsed, datum)
        _same(read(body, 0), _fastavro(parsed, body))


def test_a_record_that_contains_itself_goes_to_fastavro() -> None:
    linked = {"type": "record", "name": "Node", "fields": [
        {"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]}
    catalog = Catalog()
    schema = catalog.add(linked, current=True)
    assert schema.body_reader is None
    data = {"value": 1, "next": {"value": 2, "next": None}}
    assert catalog.decode(catalog.encode(schema, data, check=False))[1] == data


# -- bad bytes -----------------------------------------------------------------------

DELIVERY = {
    "delivery_id": "d-1", "event_id": "e-1", "event_source": "https://jobs.example", "event_type": "jobs.match.found",
    "event_time": datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC), "tenant": "default", "rule": "r",
    "channel": "webhook", "recipient_id": "u-1", "address": "https://example.com/h", "locale": "de-AT",
    "priority": "urgent", "subject": "Grüße ✓ 😀", "text": "x" * 300, "html": "<p>漢字</p>",
    "payload": '{"a":1}', "created_at": datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    "deadline": datetime(2030, 1, 1, tzinfo=UTC), "attempt": 3, "metadata": {"k": "v", "ü": "€"},
    "fallback": '["email"]',
}


def test_every_truncation_of_a_delivery_is_a_decode_error(catalog: Catalog) -> None:
    schema = catalog.named("tidings.internal.Delivery")
    value = catalog.encode(schema, DELIVERY)
    assert catalog.decode(value)[1] == DELIVERY
    for end in range(10, len(value)):
        with pytest.raises(DecodeError, match=r"cannot decode body as tidings\.internal\.Delivery: "):
            catalog.decode(value[:end])


def test_bytes_after_the_record_are_ignored_as_fastavro_ignores_them(catalog: Catalog) -> None:
    schema = catalog.named("tidings.internal.Delivery")
    value = catalog.encode(schema, DELIVERY)
    assert catalog.decode(value + b"\x00trailing")[1] == DELIVERY
    assert _fastavro(schema.parsed, value[10:] + b"\x00trailing") == DELIVERY


def test_corrupted_bodies_are_decode_errors_or_read_as_fastavro_reads_them(catalog: Catalog) -> None:
    rng = random.Random(SEED)
    schemas = [catalog.named("tidings.internal.Delivery"), catalog.named("tidings.internal.Status"),
               catalog.named("tidings.events.BookgenJobCompleted")]
    outcomes = {"error": 0, "same": 0}
    for i in range(1500):
        schema = rng.choice(schemas)
        datum = DELIVERY if schema.name == "tidings.internal.Delivery" and i % 3 == 0 else _datum(schema.parsed, rng)
        body = bytearray(_encode(schema.parsed, datum))
        for _ in range(rng.choice([1, 1, 2, 5])):
            at = rng.randrange(len(body))
            how = rng.random()
            if how < 0.6:
                body[at] = rng.randrange(256)
            elif how < 0.8:
                body[at] ^= 0x80
            else:
                del body[at:at + rng.randint(1, 8)]
        value = schema.header + bytes(body)
        try:
            _, ours = catalog.decode(value)
        except DecodeError as exc:
            assert str(exc).startswith(f"cannot decode body as {schema.name}: ")
            outcomes["error"] += 1
            continue
        _same(ours, _fastavro(schema.parsed, bytes(body)), f"corrupted {schema.name} #{i}")
        outcomes["same"] += 1
    assert outcomes["error"] > 100 and outcomes["same"] > 100, outcomes  # both paths were taken


def _sink_value(catalog: Catalog, fields: list[dict[str, Any]], body: bytes) -> bytes:
    schema = catalog.add({"type": "record", "name": "Bad", "namespace": "t", "fields": fields}, current=True)
    assert schema.body_reader is not None
    return schema.header + body


@pytest.mark.parametrize(
    ("fields", "body", "problem"),
    [
        ([{"name": "n", "type": "long"}], b"\xff" * 10 + b"\x01", "varint before byte 10 is longer than 10 bytes"),
        ([{"name": "n", "type": "long"}], b"\xff" * 9 + b"\x7f", "does not fit in 64 bits"),
        ([{"name": "s", "type": "string"}], b"\x05abc", "negative length"),
        ([{"name": "s", "type": "bytes"}], b"\xff\x01abc", "negative length -128"),
        ([{"name": "s", "type": "string"}], b"\x0aabc",
         r"length 5 at byte 1 runs past the end of the body \(4 bytes\)"),
        ([{"name": "s", "type": "string"}], b"\x04\xff\xfe", "not valid UTF-8"),
        ([{"name": "s", "type": "string"}], b"\x06\xed\xa0\x80", "not valid UTF-8"),  # an encoded surrogate
        ([{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}}], b"\x04",
         r"enum t\.E index 2 before byte 1 is out of range \(0 to 1\)"),
        ([{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}}], b"\x01",
         "enum t.E index -1"),
        ([{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}}], b"\x80\x01",
         "enum t.E index 64"),
        ([{"name": "u", "type": ["null", "string"]}], b"\x04",
         r"union index 2 before byte 1 is out of range \(0 to 1\)"),
        ([{"name": "u", "type": ["null", "string"]}], b"\x80\x01", "union index 64"),
        ([{"name": "m", "type": {"type": "map", "values": "string"}}], b"\xfe\xff\xff\xff\x0f",
         "block count 2147483647 before byte 5 is more than the 0 bytes left"),
        ([{"name": "a", "type": {"type": "array", "items": "long"}}], b"\x02", "block count 1 before byte 1 is more"),
        ([{"name": "a", "type": {"type": "array", "items": "long"}}], b"\x02\x80", r"truncated: the body \(2 bytes\)"),
        ([{"name": "d", "type": "double"}], b"\x00\x00\x00", "truncated"),
        ([{"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}}], b"ab", "runs past the end"),
        ([{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
         b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", "OverflowError"),
    ],
)
def test_bad_bodies_are_named(fields: list[dict[str, Any]], body: bytes, problem: str) -> None:
    catalog = Catalog()
    value = _sink_value(catalog, fields, body)
    with pytest.raises(DecodeError, match=r"cannot decode body as t\.Bad: .*" + problem):
        catalog.decode(value)


def test_schema_evolution_still_goes_through_fastavro(catalog: Catalog) -> None:
    old = next(s for s in catalog.by_fingerprint.values() if s.path and s.path.name == "tidings.delivery.v1.avsc")
    v1 = {k: v for k, v in DELIVERY.items() if k != "fallback"}
    reader, data = catalog.decode(catalog.encode(old, v1))
    assert reader is catalog.named("tidings.internal.Delivery")
    assert data == {**v1, "fallback": None}


class _Registry:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        return self.raw


def test_confluent_records_of_the_current_schema_go_through_the_compiled_reader() -> None:
    raw = json.loads((SCHEMA_DIR / "tidings.delivery.avsc").read_text())
    catalog = Catalog.load(registry=_Registry(raw))
    schema = catalog.named("tidings.internal.Delivery")
    value = catalog.encode_confluent(schema, 5, DELIVERY)
    assert catalog.decode(value) == (schema, DELIVERY)
    # The compiled reader's own words for a cut body (fastavro's would name an exception).
    with pytest.raises(DecodeError, match="runs past the end of the body"):
        catalog.decode(value[:-3])


def test_confluent_records_of_another_version_are_resolved_by_fastavro() -> None:
    raw = json.loads((SCHEMA_DIR / "history" / "tidings.delivery.v1.avsc").read_text())
    catalog = Catalog.load(registry=_Registry(raw))
    old = next(s for s in catalog.by_fingerprint.values() if s.path and s.path.name == "tidings.delivery.v1.avsc")
    v1 = {k: v for k, v in DELIVERY.items() if k != "fallback"}
    reader, data = catalog.decode(catalog.encode_confluent(old, 6, v1))
    assert reader is catalog.named("tidings.internal.Delivery")
    assert data == {**v1, "fallback": None}
