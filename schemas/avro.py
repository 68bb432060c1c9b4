"""Avro framing, fingerprints and the schema catalog.

Two framings are read, told apart by the first byte:

* single-object encoding (the Avro spec): ``C3 01``, the 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema, then the binary body. This is
  the default; the writer schema is found in the catalog by fingerprint.
* Confluent framing: ``00``, a 4-byte big-endian schema id, then the body. It
  needs a schema registry (see :mod:`schemas.registry`) to find the writer.

Decoding always resolves the writer schema against the catalog's current
(reader) schema of the same name, so an event written before a field was added
still decodes, with the field's default.

Encoding is on the router's hot path (four records per routed event), so a
flat record schema (primitives, enums, nullable unions, timestamp-millis,
maps and arrays of those, nested records) is compiled once into a Python function that
writes the body directly; it gives the same bytes as fastavro's
``schemaless_writer`` in about a third of the time. Anything it does not
cover, and any datum it cannot write, goes through fastavro as before.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate

from schemas.errors import ConfigError, DecodeError, SchemaMismatchError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
SCHEMA_DIR = Path(__file__).resolve().parent

_EMPTY64 = 0xC15D213AA4D7A795


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint the Avro spec calls CRC-64-AVRO."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: Any) -> bytes:
    """The 8 little-endian bytes that identify a (parsed) schema in single-object framing."""
    canonical = to_parsing_canonical_form(schema)
    return struct.pack("<Q", crc64_avro(canonical.encode()))


class SchemaLookup(Protocol):
    """Finds writer schemas by Confluent schema id (a schema registry)."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]: ...


# -- a compiled writer for flat records ----------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SMALL = 16384


def _zigzag_bytes(n: int) -> bytes:
    """Avro's zig-zag varint encoding of an int or long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# Encoded non-negative ints below _SMALL: string lengths, counts and small numbers.
_UINT = [_zigzag_bytes(n) for n in range(_SMALL)]


def _long(n: int) -> bytes:
    if not isinstance(n, int):
        raise TypeError(f"expected an int, got {type(n).__name__}")
    return _UINT[n] if 0 <= n < _SMALL else _zigzag_bytes(n)


_MILLIS: dict[datetime, bytes] = {}


def _millis(value: Any) -> bytes:
    # The same arithmetic as fastavro's prepare_timestamp_millis for aware datetimes;
    # naive ones (local time in fastavro) are left to fastavro. A batch's records share
    # a few instants (its clock reading, its events' times), so the bytes are kept.
    if isinstance(value, datetime):
        known = _MILLIS.get(value)
        if known is not None:
            return known
        if value.tzinfo is None:
            raise TypeError("naive datetime")
        delta = value - _EPOCH
        encoded = _long((delta.days * 86400 + delta.seconds) * 1000 + int(delta.microseconds / 1000))
        if len(_MILLIS) >= 4096:
            _MILLIS.clear()
        _MILLIS[value] = encoded
        return encoded
    return _long(value)


def _text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    raw = value.encode()
    n = len(raw)
    return (_UINT[n] if n < _SMALL else _zigzag_bytes(n)) + raw


def _blob(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    n = len(value)
    return (_UINT[n] if n < _SMALL else _zigzag_bytes(n)) + bytes(value)


_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack


def _double(value: Any) -> bytes:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return _DOUBLE(value)


def _float(value: Any) -> bytes:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return _FLOAT(value)


def _boolean(value: Any) -> bytes:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return b"\x01" if value else b"\x00"


_PRIMITIVES: dict[str, Callable[[Any], bytes]] = {
    "string": _text, "bytes": _blob, "int": _long, "long": _long,
    "double": _double, "float": _float, "boolean": _boolean,
}


def _writer_for(avro_type: Any) -> Callable[[Any], bytes] | None:
    """A function writing one value of ``avro_type``, or None when it is not covered."""
    if isinstance(avro_type, str):
        return _PRIMITIVES.get(avro_type)
    if isinstance(avro_type, list):
        if len(avro_type) != 2 or "null" not in avro_type:
            return None
        null_index = avro_type.index("null")
        other = _writer_for(avro_type[1 - null_index])
        if other is None:
            return None
        none_tag, value_tag = _UINT[null_index], _UINT[1 - null_index]

        def nullable(value: Any) -> bytes:
            return none_tag if value is None else value_tag + other(value)

        return nullable
    if not isinstance(avro_type, dict):
        return None
    kind = avro_type.get("type")
    logical = avro_type.get("logicalType")
    if kind == "long" and logical == "timestamp-millis":
        return _millis
    if logical is not None:
        return None
    if kind == "enum":
        symbols = {symbol: _long(i) for i, symbol in enumerate(avro_type["symbols"])}

        def enum(value: Any) -> bytes:
            return symbols[value]

        return enum
    if kind in ("map", "array"):
        item = _writer_for(avro_type["values" if kind == "map" else "items"])
        if item is None:
            return None
        if kind == "map":
            def mapping(value: Any) -> bytes:
                if not value:
                    return b"\x00"
                return b"".join([_long(len(value)), *(_text(k) + item(v) for k, v in value.items()), b"\x00"])

            return mapping

        def array(value: Any) -> bytes:
            if not value:
                return b"\x00"
            return b"".join([_long(len(value)), *(item(v) for v in value), b"\x00"])

        return array
    if kind == "record":  # a nested record, e.g. the items of an array of records
        fields: list[tuple[str, Callable[[Any], bytes], bool, Any]] = []
        for fld in avro_type["fields"]:
            write = _writer_for(fld["type"])
            if write is None:
                return None
            fields.append((str(fld["name"]), write, "default" in fld, fld.get("default")))

        def record(value: Any) -> bytes:
            return b"".join([w(value.get(n, d) if has else value[n]) for n, w, has, d in fields])

        return record
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    return None


def compile_writer(parsed: Any) -> Callable[[Mapping[str, Any]], bytes] | None:
    """A function that writes the Avro body of a flat record, or None when the schema is not covered.

    The function is generated as one expression, ``b"".join([w0(d["a"]), w1(d.get("b", default)), ...])``:
    no per-field loop, one call per field.
    """
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return None
    names: dict[str, Any] = {}
    parts: list[str] = []
    for i, fld in enumerate(parsed["fields"]):
        write = _writer_for(fld["type"])
        if write is None:
            return None
        names[f"w{i}"] = write
        key = repr(str(fld["name"]))
        if "default" in fld:
            names[f"d{i}"] = fld["default"]
            parts.append(f"w{i}(datum.get({key}, d{i}))")
        else:
            parts.append(f"w{i}(datum[{key}])")
    source = f"def write_record(datum):\n    return b''.join([{', '.join(parts)}])\n"
    exec(compile(source, f"<avro writer {parsed.get('name')}>", "exec"), names)  # noqa: S102 - our own schema
    writer: Callable[[Mapping[str, Any]], bytes] = names["write_record"]
    return writer


@dataclass(frozen=True)
class Schema:
    """One parsed schema with its identity."""

    name: str
    parsed: Any
    fingerprint: bytes
    ce_type: str | None
    category: str | None
    path: Path | None = None
    definition: dict[str, Any] | None = None
    """The schema as written (defaults, docs and our attributes included): what a registry gets."""
    writer: Callable[[Mapping[str, Any]], bytes] | None = field(default=None, compare=False, repr=False)
    """The compiled body writer (see :func:`compile_writer`), when the schema is covered."""

    def body(self, data: Mapping[str, Any]) -> bytes:
        """The Avro binary body of ``data`` (no framing)."""
        if self.writer is not None:
            try:
                return self.writer(data)
            except (TypeError, KeyError, AttributeError, ValueError, OverflowError):
                pass  # fastavro decides what to do with a datum the fast path does not take
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, data)
        return buf.getvalue()

    @cached_property
    def header(self) -> bytes:
        """Single-object framing: the magic bytes and this schema's fingerprint."""
        return SINGLE_OBJECT_MAGIC + self.fingerprint

    @property
    def field_names(self) -> list[str]:
        return [str(f["name"]) for f in self.fields]

    @property
    def fields(self) -> list[dict[str, Any]]:
        parsed: dict[str, Any] = self.parsed
        return list(parsed["fields"])


@dataclass
class Catalog:
    """Every schema under ``schemas/``: current ones by name and type, all by fingerprint.

    ``schemas/*.avsc`` are the current (reader) versions; ``schemas/history/``
    keeps older writer versions so that their records still decode.
    """

    current: dict[str, Schema] = field(default_factory=dict)
    by_type: dict[str, Schema] = field(default_factory=dict)
    by_fingerprint: dict[bytes, Schema] = field(default_factory=dict)
    registry: SchemaLookup | None = None
    _confluent_cache: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path = SCHEMA_DIR, registry: SchemaLookup | None = None) -> Catalog:
        catalog = cls(registry=registry)
        for path in sorted(directory.glob("*.avsc")):
            catalog.add(_read(path), current=True, path=path)
        history = directory / "history"
        for path in sorted(history.glob("*.avsc")) if history.is_dir() else []:
            catalog.add(_read(path), current=False, path=path)
        return catalog

    def add(self, raw: dict[str, Any], *, current: bool, path: Path | None = None) -> Schema:
        try:
            parsed: Any = fastavro.parse_schema(raw)
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise ConfigError(f"invalid Avro schema {path or raw.get('name')}: {exc}") from exc
        schema = Schema(
            name=parsed["name"],
            parsed=parsed,
            fingerprint=fingerprint(parsed),
            ce_type=raw.get("ce_type"),
            category=raw.get("category"),
            path=path,
            definition=raw,
            writer=compile_writer(parsed),
        )
        if current:
            if schema.name in self.current:
                raise ConfigError(f"two current schemas named {schema.name}")
            self.current[schema.name] = schema
            if schema.ce_type:
                if schema.ce_type in self.by_type:
                    raise ConfigError(f"two current schemas declare ce_type {schema.ce_type}")
                self.by_type[schema.ce_type] = schema
        self.by_fingerprint.setdefault(schema.fingerprint, schema)
        return schema

    def for_type(self, ce_type: str) -> Schema:
        try:
            return self.by_type[ce_type]
        except KeyError:
            raise SchemaMismatchError(f"no schema declares event type {ce_type!r}") from None

    def evolution_problems(self) -> list[str]:
        """Why some older writer schema could not be read by the current one (empty when all can).

        Checks the rule this project keeps: a field the reader has and an older
        writer lacks must have a default; a field both have must keep its type
        (unions may only gain branches). Written for the flat records we use.
        """
        problems: list[str] = []
        for old in self.by_fingerprint.values():
            current = self.current.get(old.name)
            if current is None or current is old:
                continue
            where = old.path.name if old.path else old.name
            theirs = {f["name"]: f for f in old.fields}
            for fld in current.fields:
                before = theirs.get(fld["name"])
                if before is None:
                    if "default" not in fld:
                        problems.append(f"{where}: {old.name}.{fld['name']} was added without a default")
                    continue
                if not _widens(before["type"], fld["type"]):
                    problems.append(
                        f"{where}: {old.name}.{fld['name']} changed type from "
                        f"{_type_name(before['type'])} to {_type_name(fld['type'])}"
                    )
        return problems

    def named(self, name: str) -> Schema:
        try:
            return self.current[name]
        except KeyError:
            raise ConfigError(f"no schema named {name!r} in the catalog") from None

    # -- encoding -------------------------------------------------------

    def encode(self, schema: Schema, data: Mapping[str, Any], *, check: bool = True) -> bytes:
        """Single-object encoding of ``data``; with ``check``, refuse data that does not fit."""
        if check:
            check_fits(schema, data)
        return schema.header + schema.body(data)

    def encode_confluent(self, schema: Schema, schema_id: int, data: Mapping[str, Any]) -> bytes:
        """Confluent framing: ``00``, the 4-byte big-endian registry id, then the body."""
        check_fits(schema, data)
        return struct.pack(">bI", CONFLUENT_MAGIC, schema_id) + schema.body(data)

    def decode(self, value: bytes | None, reader: Schema | None = None) -> tuple[Schema, dict[str, Any]]:
        """Decode a framed record; return the writer schema and the data as the reader sees it.

        Without ``reader``, the current schema with the writer's name reads it.
        """
        if not value:
            raise DecodeError("empty value: expected a framed Avro record")
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < 10:
                raise DecodeError(f"truncated single-object header ({len(value)} bytes)")
            fp = value[2:10]
            writer = self.by_fingerprint.get(fp)
            if writer is None:
                raise DecodeError(f"unknown schema fingerprint {fp.hex()}: not in the catalog")
            body = 10
            writer_parsed = writer.parsed
        elif value[0] == CONFLUENT_MAGIC:
            if len(value) < 5:
                raise DecodeError(f"truncated Confluent header ({len(value)} bytes)")
            schema_id = struct.unpack(">I", value[1:5])[0]
            writer_parsed = self._confluent_schema(schema_id)
            writer = self.current.get(writer_parsed["name"]) or Schema(
                writer_parsed["name"], writer_parsed, fingerprint(writer_parsed), None, None
            )
            body = 5
        else:
            raise DecodeError(
                f"unknown framing: first byte 0x{value[0]:02x} is neither single-object (c3 01) nor Confluent (00)"
            )
        if reader is None:
            reader = self.current.get(writer.name, writer)
        elif reader.name != writer.name:
            raise SchemaMismatchError(
                f"expected a {reader.name} record but the body was written as {writer.name}"
            )
        try:
            data = fastavro.schemaless_reader(
                io.BytesIO(value[body:]), writer_parsed, reader.parsed
            )
        except Exception as exc:  # fastavro raises EOFError, SchemaResolutionError, ...
            raise DecodeError(
                f"cannot decode body as {writer.name}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(data, dict):
            raise DecodeError(f"{writer.name} is not a record schema")
        return reader, data

    def _confluent_schema(self, schema_id: int) -> Any:
        cached = self._confluent_cache.get(schema_id)
        if cached is not None:
            return cached
        if self.registry is None:
            raise DecodeError(
                f"Confluent-framed record (schema id {schema_id}) but no schema registry is configured"
            )
        try:
            raw = self.registry.schema_by_id(schema_id)
            parsed = fastavro.parse_schema(raw)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} could not be fetched: {exc}") from exc
        self._confluent_cache[schema_id] = parsed
        return parsed


def check_fits(schema: Schema, data: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaMismatchError` naming the first field that does not fit."""
    if not isinstance(data, Mapping):
        raise SchemaMismatchError(f"{schema.name}: data must be an object, got {type(data).__name__}")
    known = set(schema.field_names)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SchemaMismatchError(
            f"{schema.name}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})",
            field=unknown[0],
        )
    for fld in schema.fields:
        name = fld["name"]
        if name not in data:
            if "default" in fld:
                continue
            raise SchemaMismatchError(f"{schema.name}: missing required field {name!r}", field=name)
        if not validate(data[name], fld["type"], raise_errors=False):
            raise SchemaMismatchError(
                f"{schema.name}: field {name!r} does not fit type {_type_name(fld['type'])}: "
                f"got {_preview(data[name])}",
                field=name,
            )


def _branches(avro_type: Any) -> list[str]:
    types = avro_type if isinstance(avro_type, list) else [avro_type]
    return [json.dumps(t, sort_keys=True) for t in types]


def _widens(before: Any, after: Any) -> bool:
    """True when every value of type ``before`` is a value of type ``after`` (same, or union grew)."""
    return set(_branches(before)) <= set(_branches(after)) or _promotes(before, after)


def _promotes(before: Any, after: Any) -> bool:
    promotions = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
                  "string": {"bytes"}, "bytes": {"string"}}
    return isinstance(before, str) and isinstance(after, str) and after in promotions.get(before, set())


def _type_name(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return " or ".join(_type_name(t) for t in avro_type)
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "enum":
            return "one of " + "/".join(avro_type["symbols"])
        return str(avro_type.get("logicalType") or avro_type.get("type"))
    return str(avro_type)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read schema {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"schema {path} is not a JSON object")
    return raw
