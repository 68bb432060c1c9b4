"""The wire contract: Avro schemas, framing, CloudEvents headers and internal records.

This package imports nothing else of ours; every other package imports it.
"""

from schemas.avro import Catalog, Schema, check_fits, fingerprint
from schemas.cloudevents import CloudEvent
from schemas.models import Delivery, Priority, State, Status, delivery_id

__all__ = [
    "Catalog",
    "CloudEvent",
    "Delivery",
    "Priority",
    "Schema",
    "State",
    "Status",
    "check_fits",
    "delivery_id",
    "fingerprint",
]
