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

Decoding is compiled the same way (:func:`compile_reader`): when a record was
written with the schema that reads it (the usual case), one generated function
reads the body and returns what ``fastavro.schemaless_reader`` returns for the
same bytes. A record written with an older or different schema is resolved by
fastavro. Either way, bytes after the end of the record are ignored (fastavro
reads only what the schema asks for), and anything wrong with the body is a
DecodeError naming the schema and the problem.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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


# -- a compiled reader ---------------------------------------------------------
#
# The generated code reads ``buf`` (bytes) from ``pos`` with one local per field. Every
# int, long, length, count and index is a zig-zag varint; nearly all of them fit in one
# byte, so that case is inlined (``b < 128``) and only longer ones call :func:`_varint`.
# Running off the end of the body raises IndexError (``buf[pos]``) or struct.error
# (``unpack_from``), and a string or bytes length is checked against the body's size,
# so a truncated body never decodes to a short value. Problems found in the bytes
# raise :class:`_Corrupt`; :meth:`Catalog.decode` turns all of these into DecodeError.


_ZIGZAG = tuple((b >> 1) ^ -(b & 1) for b in range(128))
"""The value of each one-byte zig-zag varint."""
_NO_LENGTH = 1 << 64
_LENGTH = tuple(_NO_LENGTH if b & 1 else b >> 1 for b in range(128))
"""A one-byte string or bytes length; a negative one is 2^64, more than any body (no varint gives it)."""


class _Corrupt(ValueError):
    """The bytes cannot be a record of the schema (the message says why)."""


class _Uncovered(Exception):
    """A schema the compiled reader does not handle: fastavro reads it."""


def _varint(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """The zig-zag long whose first byte ``first`` (>= 0x80) was at ``pos - 1``, and the position after it."""
    n = first & 0x7F
    shift = 7
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if n >> 64:
                raise _Corrupt(f"varint before byte {pos} does not fit in 64 bits")
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise _Corrupt(f"varint before byte {pos} is longer than 10 bytes")


def _uvarint(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """The varint's unsigned value (before zig-zag) and the position after it: union indexes compare it."""
    value, pos = _varint(buf, pos, first)
    return (value << 1) ^ (value >> 63), pos


def _bad_length(n: int, pos: int, size: int) -> _Corrupt:
    if n == _NO_LENGTH:
        return _Corrupt(f"negative length before byte {pos}")
    if n < 0:
        return _Corrupt(f"negative length {n} before byte {pos}")
    return _Corrupt(f"length {n} at byte {pos} runs past the end of the body ({size} bytes)")


def _bad_count(count: int, pos: int, size: int) -> _Corrupt:
    return _Corrupt(f"block count {count} before byte {pos} is more than the {size - pos} bytes left")


def _bad_index(raw: int, what: str, choices: int, pos: int) -> _Corrupt:
    index = (raw >> 1) ^ -(raw & 1)
    return _Corrupt(f"{what} index {index} before byte {pos} is out of range (0 to {choices - 1})")


def _enum_at(buf: bytes, pos: int, first: int, symbols: tuple[str, ...], what: str) -> tuple[str, int]:
    """An enum symbol whose index takes more than one byte."""
    index, pos = _varint(buf, pos, first)
    if not 0 <= index < len(symbols):
        raise _Corrupt(f"{what} index {index} before byte {pos} is out of range (0 to {len(symbols) - 1})")
    return symbols[index], pos


_DAYS_SHIFT = date(1970, 1, 1).toordinal()
_TIMES: dict[bytes, datetime] = {}
"""Timestamps already read, by their encoded bytes: a batch's records share a few instants."""


def _from_millis(millis: int) -> datetime:
    # fastavro's read_timestamp_millis: the epoch (timezone.utc) plus a timedelta.
    return _EPOCH + timedelta(microseconds=millis * 1000)


def _keep_time(encoded: bytes, value: datetime) -> None:
    if len(_TIMES) >= 4096:
        _TIMES.clear()
    _TIMES[encoded] = value


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _from_days(days: int) -> date:
    return date.fromordinal(days + _DAYS_SHIFT)


# The logical types read the way fastavro reads them (timestamp-millis has code of its own,
# _ReaderSource.millis); any other one goes to fastavro.
_LOGICAL: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("long", "timestamp-micros"): _from_micros,
    ("int", "date"): _from_days,
    ("string", "uuid"): uuid.UUID,
}


class _ReaderSource:
    """The Python source of one function reading a record schema, and the names it uses.

    Arrays, maps and nested records are read inline too (each with locals of its own),
    so a record is one function call however deep its types go.
    """

    def __init__(self) -> None:
        self.names: dict[str, Any] = {
            "_varint": _varint, "_uvarint": _uvarint, "_bad_length": _bad_length, "_bad_count": _bad_count,
            "_bad_index": _bad_index, "_enum_at": _enum_at, "_ZZ": _ZIGZAG, "_LEN": _LENGTH,
            "_f32": struct.Struct("<f").unpack_from, "_f64": struct.Struct("<d").unpack_from,
            "_TIMES": _TIMES, "_keep_time": _keep_time, "_from_millis": _from_millis,
        }
        self.count = 0
        self.named: dict[str, Any] = {}
        """Named types (records, enums, fixed) by full name, as their definitions are met."""
        self.open: set[str] = set()
        """Records being read: one that contains itself cannot be written out inline."""

    def constant(self, value: Any, prefix: str) -> str:
        name = f"{prefix}{len(self.names)}"
        self.names[name] = value
        return name

    def local(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def long(self, target: str, ind: str) -> list[str]:
        return [
            f"{ind}b = buf[pos]",
            f"{ind}pos += 1",
            f"{ind}if b < 128:",
            f"{ind}    {target} = _ZZ[b]",
            f"{ind}else:",
            f"{ind}    {target}, pos = _varint(buf, pos, b)",
        ]

    def read(self, avro_type: Any, target: str, ind: str) -> list[str]:
        """Lines that read one value of ``avro_type`` into ``target`` and move ``pos`` past it."""
        if isinstance(avro_type, list):
            return self.union(avro_type, target, ind)
        if isinstance(avro_type, dict):
            return self.complex(avro_type, target, ind)
        if avro_type == "null":
            return [f"{ind}{target} = None"]
        if avro_type == "boolean":
            return [f"{ind}{target} = buf[pos] != 0", f"{ind}pos += 1"]
        if avro_type in ("int", "long"):
            return self.long(target, ind)
        if avro_type in ("float", "double"):
            unpack, width = ("_f32", 4) if avro_type == "float" else ("_f64", 8)
            return [f"{ind}{target} = {unpack}(buf, pos)[0]", f"{ind}pos += {width}"]
        if avro_type in ("string", "bytes"):
            # One-byte lengths come from a table; a negative one (odd byte) is there as 2^64,
            # which no varint gives, so the single bounds check catches it too.
            decode = ".decode()" if avro_type == "string" else ""
            return [
                f"{ind}b = buf[pos]",
                f"{ind}pos += 1",
                f"{ind}if b < 128:",
                f"{ind}    end = pos + _LEN[b]",
                f"{ind}else:",
                f"{ind}    n, pos = _varint(buf, pos, b)",
                f"{ind}    if n < 0:",
                f"{ind}        raise _bad_length(n, pos, size)",
                f"{ind}    end = pos + n",
                f"{ind}if end > size:",
                f"{ind}    raise _bad_length(end - pos, pos, size)",
                f"{ind}{target} = buf[pos:end]{decode}",
                f"{ind}pos = end",
            ]
        if isinstance(avro_type, str) and avro_type in self.named:  # a named type used again by name
            return self.read(self.named[avro_type], target, ind)
        raise _Uncovered(f"type {avro_type!r}")

    def complex(self, avro_type: dict[str, Any], target: str, ind: str) -> list[str]:
        kind = avro_type.get("type")
        name = avro_type.get("name")
        if kind in ("record", "enum", "fixed") and isinstance(name, str):
            self.named.setdefault(name, avro_type)
        logical = avro_type.get("logicalType")
        if logical is not None:
            if kind == "long" and logical == "timestamp-millis":
                return self.millis(target, ind)
            convert = _LOGICAL.get((kind, logical)) if isinstance(kind, str) else None
            if convert is None:
                raise _Uncovered(f"logical type {logical}")
            function = self.constant(convert, "L")
            return [*self.read(kind, target, ind), f"{ind}{target} = {function}({target})"]
        if kind == "enum":
            return self.enum(avro_type, target, ind)
        if kind == "fixed":
            width = int(avro_type["size"])
            return [
                f"{ind}{target} = buf[pos:pos + {width}]",
                f"{ind}if len({target}) != {width}:",
                f"{ind}    raise _bad_length({width}, pos, size)",
                f"{ind}pos += {width}",
            ]
        if kind == "record":
            if name in self.open:
                raise _Uncovered(f"recursive record {name}")
            self.open.add(str(name))
            lines, result = self.fields(avro_type["fields"], ind)
            self.open.discard(str(name))
            return [*lines, f"{ind}{target} = {result}"]
        if kind in ("array", "map"):
            return self.blocks(avro_type, target, ind)
        if kind == "null" or kind in _PRIMITIVES:
            return self.read(kind, target, ind)
        raise _Uncovered(f"type {kind!r}")

    def millis(self, target: str, ind: str) -> list[str]:
        # Today's instants take 6 bytes (2^34 to 2^41 ms after the epoch: 1970 to 2039); seen
        # ones are found by those bytes (a varint ends itself, so 6 bytes that were a whole
        # varint are that varint wherever they appear). Others are read as a long.
        start = self.local("start")
        return [
            f"{ind}{target} = _TIMES.get(buf[pos:pos + 6])",
            f"{ind}if {target} is None:",
            f"{ind}    {start} = pos",
            *self.long(target, ind + "    "),
            f"{ind}    {target} = _from_millis({target})",
            f"{ind}    if pos - {start} == 6:",
            f"{ind}        _keep_time(buf[{start}:pos], {target})",
            f"{ind}else:",
            f"{ind}    pos += 6",
        ]

    def enum(self, avro_type: dict[str, Any], target: str, ind: str) -> list[str]:
        symbols = tuple(str(s) for s in avro_type["symbols"])
        # The symbol for each one-byte index (zig-zag: 0, 2, 4... are 0, 1, 2...), None where out of range.
        table = tuple(symbols[b >> 1] if not b & 1 and b >> 1 < len(symbols) else None for b in range(128))
        fast, full = self.constant(table, "E"), self.constant(symbols, "S")
        what = repr(f"enum {avro_type.get('name')}")
        return [
            f"{ind}b = buf[pos]",
            f"{ind}pos += 1",
            f"{ind}if b < 128:",
            f"{ind}    {target} = {fast}[b]",
            f"{ind}    if {target} is None:",
            f"{ind}        raise _bad_index(b, {what}, {len(symbols)}, pos)",
            f"{ind}else:",
            f"{ind}    {target}, pos = _enum_at(buf, pos, b, {full}, {what})",
        ]

    def union(self, branches: list[Any], target: str, ind: str) -> list[str]:
        if not branches:
            raise _Uncovered("an empty union")
        lines = [
            f"{ind}b = buf[pos]",
            f"{ind}pos += 1",
            f"{ind}if b > 127:",
            f"{ind}    b, pos = _uvarint(buf, pos, b)",
        ]
        for i, branch in enumerate(branches):  # the branch index i is the varint 2i
            lines.append(f"{ind}{'if' if i == 0 else 'elif'} b == {2 * i}:")
            lines.extend(self.read(branch, target, ind + "    "))
        lines.append(f"{ind}else:")
        lines.append(f"{ind}    raise _bad_index(b, 'union', {len(branches)}, pos)")
        return lines

    def fields(self, fields: list[dict[str, Any]], ind: str) -> tuple[list[str], str]:
        """Lines reading each field into a local, and the dict expression of the record."""
        lines: list[str] = []
        items: list[str] = []
        for fld in fields:
            name = self.local("f")
            lines.extend(self.read(fld["type"], name, ind))
            items.append(f"{str(fld['name'])!r}: {name}")
        return lines, "{" + ", ".join(items) + "}"

    def blocks(self, avro_type: dict[str, Any], target: str, ind: str) -> list[str]:
        """An array or a map: blocks of items, each a count (and a byte size when negative), then a zero."""
        is_map = avro_type["type"] == "map"
        item = avro_type["values" if is_map else "items"]
        if not is_map and _min_size(item) == 0:
            raise _Uncovered("an array of items that take no bytes")  # a count cannot be checked against the body
        count, key, value = self.local("count"), self.local("key"), self.local("item")
        inner = ind + "        "
        lines = [
            f"{ind}{target} = {'{}' if is_map else '[]'}",
            f"{ind}while True:",
            *self.long(count, ind + "    "),
            f"{ind}    if {count} == 0:",
            f"{ind}        break",
            f"{ind}    if {count} < 0:",
            f"{ind}        {count} = -{count}",
            *self.long("n", ind + "        "),  # the block's size in bytes, not needed
            f"{ind}    if {count} > size - pos:",
            f"{ind}        raise _bad_count({count}, pos, size)",
            f"{ind}    for _ in range({count}):",
        ]
        if is_map:
            lines.extend(self.read("string", key, inner))
            lines.extend(self.read(item, value, inner))
            lines.append(f"{inner}{target}[{key}] = {value}")
        else:
            lines.extend(self.read(item, value, inner))
            lines.append(f"{inner}{target}.append({value})")
        return lines


def _min_size(avro_type: Any) -> int:
    """The fewest bytes a value of ``avro_type`` takes."""
    if isinstance(avro_type, list):
        return 1
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind == "record":
            return sum(_min_size(f["type"]) for f in avro_type["fields"])
        if kind == "fixed":
            return int(avro_type["size"])
        return 0 if kind == "null" else _min_size(kind) if kind in _PRIMITIVES else 1
    return {"null": 0, "float": 4, "double": 8}.get(avro_type, 1)


def compile_reader(parsed: Any) -> Callable[[bytes, int], dict[str, Any]] | None:
    """A function ``read(buf, pos)`` that decodes the Avro body of a record starting at ``pos``.

    It returns what ``fastavro.schemaless_reader`` returns for the same bytes when the
    writer schema is the reader schema (equal values of the same types, keys in field
    order), and ignores bytes after the record as fastavro does. None when the schema has
    a type it does not cover (a record that contains itself, a logical type other than
    timestamp-millis, timestamp-micros, date and uuid, an array of nulls).
    """
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return None
    source = _ReaderSource()
    try:
        body = source.read(parsed, "record", "    ")
    except _Uncovered:
        return None
    text = "\n".join(["def read_record(buf, pos):", "    size = len(buf)", *body, "    return record"]) + "\n"
    exec(compile(text, f"<avro reader {parsed.get('name')}>", "exec"), source.names)  # noqa: S102 - our own schema
    reader: Callable[[bytes, int], dict[str, Any]] = source.names["read_record"]
    return reader


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
    body_reader: Callable[[bytes, int], dict[str, Any]] | None = field(default=None, compare=False, repr=False)
    """The compiled body reader (see :func:`compile_reader`), used when this schema both wrote and reads a record."""

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
            body_reader=compile_reader(parsed),
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
        if writer_parsed is reader.parsed and reader.body_reader is not None:
            return reader, _read_body(reader, value, body)
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
        current = self.current.get(str(parsed.get("name"))) if isinstance(parsed, dict) else None
        if current is not None and parsed == current.parsed:
            parsed = current.parsed  # the same schema: its records go through the compiled reader
        self._confluent_cache[schema_id] = parsed
        return parsed


def _read_body(schema: Schema, value: bytes, start: int) -> dict[str, Any]:
    """The record in ``value`` from ``start`` through the schema's compiled reader; DecodeError when it is not one."""
    read = schema.body_reader
    assert read is not None
    body = bytes(value[start:])  # positions in messages count from the body's first byte
    try:
        return read(body, 0)
    except _Corrupt as exc:
        problem = str(exc)
    except (IndexError, struct.error):
        problem = f"truncated: the body ({len(body)} bytes) ends before the record does"
    except UnicodeDecodeError as exc:
        problem = f"a string is not valid UTF-8: {exc}"
    except (ValueError, OverflowError) as exc:  # a timestamp, date or uuid out of range
        problem = f"{type(exc).__name__}: {exc}"
    raise DecodeError(f"cannot decode body as {schema.name}: {problem}")


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
