"""A minimal Confluent Schema Registry client (two calls, cached).

Used only when ``TIDINGS_SCHEMA_REGISTRY_URL`` is set: publishers register the
writer schema under ``<topic>-value`` and frame records as ``00`` + schema id;
readers fetch unknown ids once and cache them.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from schemas.errors import ConfigError, DecodeError


class RegistryClient:
    def __init__(self, url: str, timeout: float = 5.0, auth: tuple[str, str] | None = None) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, auth=auth,
                                    headers={"Accept": "application/vnd.schemaregistry.v1+json"})
        self._by_id: dict[int, dict[str, Any]] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        if schema_id in self._by_id:
            return self._by_id[schema_id]
        try:
            resp = self._client.get(f"/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            raise DecodeError(f"schema registry unreachable: {type(exc).__name__}") from exc
        if resp.status_code == 404:
            raise DecodeError(f"schema id {schema_id} is not in the registry")
        if resp.status_code != 200:
            raise DecodeError(f"schema registry answered {resp.status_code} for id {schema_id}")
        schema = json.loads(resp.json()["schema"])
        self._by_id[schema_id] = schema
        return dict(schema)

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        text = json.dumps(schema, sort_keys=True)
        cached = self._ids.get((subject, text))
        if cached is not None:
            return cached
        try:
            resp = self._client.post(
                f"/subjects/{subject}/versions",
                json={"schema": text},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
        except httpx.HTTPError as exc:
            raise ConfigError(f"schema registry unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise ConfigError(f"schema registry refused {subject}: {resp.status_code} {resp.text[:200]}")
        schema_id = int(resp.json()["id"])
        self._ids[(subject, text)] = schema_id
        self._by_id[schema_id] = schema
        return schema_id

    def close(self) -> None:
        self._client.close()
