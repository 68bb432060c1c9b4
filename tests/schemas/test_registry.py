"""The schema registry client against a real HTTP server speaking the registry's two calls."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from schemas import Catalog
from schemas.errors import ConfigError, DecodeError
from schemas.registry import RegistryClient


class _Registry(BaseHTTPRequestHandler):
    schemas: ClassVar[dict[int, str]] = {}
    subjects: ClassVar[dict[str, list[int]]] = {}
    calls: ClassVar[list[str]] = []

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.calls.append(f"GET {self.path}")
        ident = int(self.path.rsplit("/", 1)[1])
        if ident in self.schemas:
            self._reply(200, {"schema": self.schemas[ident]})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def do_POST(self) -> None:
        self.calls.append(f"POST {self.path}")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        subject = self.path.split("/")[2]
        if subject == "refused-value":
            self._reply(409, {"error_code": 409, "message": "incompatible"})
            return
        known = {text: ident for ident, text in self.schemas.items()}
        ident = known.get(body["schema"], len(self.schemas) + 1)
        self.schemas[ident] = body["schema"]
        self.subjects.setdefault(subject, []).append(ident)
        self._reply(200, {"id": ident})

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def registry_url() -> Iterator[str]:
    _Registry.schemas, _Registry.subjects, _Registry.calls = {}, {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_register_then_decode_confluent_framing(registry_url: str) -> None:
    client = RegistryClient(registry_url)
    try:
        catalog = Catalog.load(registry=client)
        schema = catalog.for_type("system.alert")
        assert schema.path is not None
        raw = json.loads(schema.path.read_text())
        ident = client.register("events-value", raw)
        assert client.register("events-value", raw) == ident  # cached: one POST
        value = catalog.encode_confluent(schema, ident, {"severity": "warning", "component": "c", "message": "m"})
        # A fresh reader knows nothing yet and fetches the id once.
        reader_client = RegistryClient(registry_url)
        reader = Catalog.load(registry=reader_client)
        for _ in range(2):
            _, data = reader.decode(value)
            assert data == {"severity": "warning", "component": "c", "message": "m"}
        reader_client.close()
        assert _Registry.calls.count("POST /subjects/events-value/versions") == 1
        assert _Registry.calls.count(f"GET /schemas/ids/{ident}") == 1
    finally:
        client.close()


def test_unknown_id_and_refusal_are_clear_errors(registry_url: str) -> None:
    client = RegistryClient(registry_url)
    try:
        with pytest.raises(DecodeError, match="schema id 99 is not in the registry"):
            client.schema_by_id(99)
        with pytest.raises(ConfigError, match="schema registry refused refused-value: 409"):
            client.register("refused-value", {"type": "string"})
    finally:
        client.close()


def test_unreachable_registry_names_the_problem() -> None:
    client = RegistryClient("http://127.0.0.1:9", timeout=1.0)
    try:
        with pytest.raises(DecodeError, match="schema registry unreachable"):
            client.schema_by_id(1)
    finally:
        client.close()


@pytest.mark.integration
def test_the_publisher_registers_the_schema_as_written(registry_url: str, kafka_bootstrap: str) -> None:
    # Registering the canonical form would drop defaults, docs and our ce_type attribute:
    # a registry compatibility check would then refuse every field added with a default.
    from consumers.publisher import Publisher
    from consumers.settings import Settings

    data = {"user_id": "u", "match_id": "m", "job_title": "t", "company": "c", "score": 80.0}
    with Publisher(Settings(kafka_bootstrap=kafka_bootstrap, schema_registry_url=registry_url)) as pub:
        value = pub.encode("jobs.match.found", data, "t-events")
    registered = json.loads(_Registry.schemas[1])
    assert registered["ce_type"] == "jobs.match.found"
    assert {f["name"]: f.get("default", "-") for f in registered["fields"]}["is_remote"] is False
    reader = RegistryClient(registry_url)
    try:
        _, decoded = Catalog.load(registry=reader).decode(value)
    finally:
        reader.close()
    assert decoded == {**data, "location": None, "is_remote": False}
