"""Publishing domain events, for upstream Python services and ``tidings publish``.

::

    from consumers.publisher import Publisher

    with Publisher() as pub:
        pub.publish("jobs.match.found", {...}, subject="u-ada", source="jobscout/matcher")

Data is checked against the event type's schema before anything is sent;
data that does not fit raises :class:`~schemas.errors.SchemaMismatchError`
naming the field. The record key is ``<tenant>:<subject>`` (so one consumer owns
each recipient's order and state), or the event id when there is no subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from consumers.kafka import BatchProducer
from consumers.settings import Settings
from schemas import Catalog, CloudEvent
from schemas.errors import ConfigError
from schemas.registry import RegistryClient

DEFAULT_SOURCE = "tidings/cli"


class Publisher:
    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings or Settings()
        self.registry = (
            RegistryClient(self.settings.schema_registry_url) if self.settings.schema_registry_url else None
        )
        self.catalog = catalog or Catalog.load(registry=self.registry)
        self.producer = BatchProducer.create(self.settings)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def encode(self, event_type: str, data: Mapping[str, Any], topic: str) -> bytes:
        schema = self.catalog.for_type(event_type)
        if self.registry is None:
            return self.catalog.encode(schema, data)
        if schema.definition is None:
            raise ConfigError(f"{schema.name} has no definition to register")
        schema_id = self.registry.register(f"{topic}-value", schema.definition)
        return self.catalog.encode_confluent(schema, schema_id, data)

    def publish(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        subject: str | None = None,
        source: str = DEFAULT_SOURCE,
        id: str | None = None,
        tenant: str | None = None,
        time: datetime | None = None,
        topic: str | None = None,
        key: str | None = None,
    ) -> CloudEvent:
        """Validate, then queue one event. Call :meth:`flush` (or leave the ``with``) to wait for Kafka."""
        target = topic or self.settings.input_topic
        value = self.encode(event_type, data, target)
        event = CloudEvent.new(event_type, source=source, subject=subject, id=id, tenant=tenant, time=time)
        partition_key = key or (f"{event.tenant}:{subject}" if subject else event.id)
        self.producer.send(target, value, key=partition_key, headers=event.to_headers())
        return event

    def send_raw(self, topic: str, value: bytes, headers: list[tuple[str, bytes]],
                 key: str | None = None) -> None:
        """Queue a record as is (tests and tools that must write malformed input)."""
        self.producer.send(topic, value, key=key, headers=headers)

    def flush(self) -> None:
        """Wait until Kafka acknowledged everything queued; raise if anything failed."""
        self.producer.commit_point()

    def close(self) -> None:
        """Wait for Kafka's acknowledgement of everything queued (raise if any failed), then release the client."""
        try:
            self.flush()
        finally:
            self.producer.close(0)
            if self.registry is not None:
                self.registry.close()


_default: Publisher | None = None


def publish(event_type: str, data: Mapping[str, Any], **attrs: Any) -> CloudEvent:
    """Publish one event with a process-wide publisher and wait for Kafka's acknowledgement."""
    global _default
    if _default is None:
        _default = Publisher()
    event = _default.publish(event_type, data, **attrs)
    _default.flush()
    return event
