"""Email attachments named by an event, carried to the email channel as references.

An event whose schema has an ``attachments`` field (a list of ``{filename,
content_type, url, content}``, see ``bookgen.job.completed``) gets them on its
email deliveries, in ``Delivery.metadata["attachments"]`` as a JSON list. A
``url`` is fetched by the email channel at send time (size-limited, through
the SSRF guard); ``content`` (small files only: it travels through Kafka) is
base64 in the JSON. Other channels ignore attachments.

Pure: no I/O, plain values in and out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["METADATA_KEY", "attachment_metadata"]

METADATA_KEY = "attachments"


def attachment_metadata(data: Mapping[str, Any]) -> dict[str, str]:
    """``{"attachments": "<json list>"}`` for an event's attachments, or ``{}`` without any."""
    items = data.get("attachments")
    if not isinstance(items, list) or not items:
        return {}
    out: list[dict[str, str]] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        entry = {"filename": str(item.get("filename") or "attachment")}
        entry["content_type"] = str(item.get("content_type") or "application/octet-stream")
        if item.get("url"):
            entry["url"] = str(item["url"])
        content = item.get("content")
        if isinstance(content, bytes | bytearray):
            entry["content"] = base64.b64encode(bytes(content)).decode("ascii")
        out.append(entry)
    return {METADATA_KEY: json.dumps(out, separators=(",", ":"))} if out else {}
