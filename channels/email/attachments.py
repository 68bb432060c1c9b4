"""Email attachments: read the references a delivery carries, fetch or decode them, within limits.

A delivery's ``metadata["attachments"]`` is a JSON list (written by the router,
see :mod:`router.attachments`) of ``{"filename", "content_type", "url" | "content"}``:

* ``content``: the file itself, base64 (small files: it travelled through Kafka);
* ``url``: fetched with ``GET`` when the message is composed, through the SSRF
  guard (:mod:`channels.netguard`; private addresses only when allow-listed
  with ``TIDINGS_SMTP_ATTACHMENT_ALLOW_PRIVATE``), without following redirects,
  reading at most the remaining size budget.

Limits: at most ``max_attachments`` files and ``max_attachment_bytes`` in total
per message. Outcomes:

=============================================  ==========================================
too many files, over the size limit, a         :class:`PermanentError`: the message cannot
malformed list, bad base64, a URL that is not   be sent as asked (the delivery is
http(s), a refused host, 4xx from the file      dead-lettered with the reason)
server
5xx, timeout or connection error fetching       :class:`TransientError`
=============================================  ==========================================

Filenames lose any directory part and control characters; a content type that
is not ``type/subtype``, or is ``multipart/*`` or ``message/*`` (types MIME
does not allow in base64, which every attachment is sent in), becomes
``application/octet-stream``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from channels.base import mask_url
from channels.netguard import NetworkGuard
from schemas import Delivery
from schemas.errors import InvalidAddressError, PermanentError, TransientError

__all__ = ["Attachment", "load_attachments", "safe_filename"]

_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"\\\\]")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes

    @property
    def maintype(self) -> str:
        return self.content_type.split("/", 1)[0]

    @property
    def subtype(self) -> str:
        return self.content_type.split("/", 1)[1]


def safe_filename(name: str) -> str:
    """The last path component, without control characters or quotes, at most 200 characters."""
    base = re.split(r"[/\\\\]", name)[-1]
    base = _UNSAFE.sub("", base).strip().lstrip(".")
    return base[:200] or "attachment"


def _content_type(value: Any) -> str:
    text = str(value or "").strip().lower()
    if not _CONTENT_TYPE.match(text) or text.startswith(("multipart/", "message/")):
        return "application/octet-stream"
    return text


def _specs(delivery: Delivery, max_attachments: int) -> list[dict[str, Any]]:
    raw = delivery.metadata.get("attachments")
    if not raw:
        return []
    try:
        specs = json.loads(raw)
    except ValueError as exc:
        raise PermanentError("attachments: the list is not valid JSON") from exc
    if not isinstance(specs, list) or not all(isinstance(item, dict) for item in specs):
        raise PermanentError("attachments: expected a list of {filename, content_type, url | content}")
    if len(specs) > max_attachments:
        raise PermanentError(f"attachments: {len(specs)} files, more than the limit of {max_attachments}")
    return specs


async def load_attachments(
    delivery: Delivery,
    client: httpx.AsyncClient | None,
    guard: NetworkGuard,
    max_bytes: int,
    max_attachments: int,
    timeout: float,
) -> list[Attachment]:
    """Every attachment of ``delivery`` with its bytes; raises as the module's table says."""
    out: list[Attachment] = []
    budget = max_bytes
    for spec in _specs(delivery, max_attachments):
        filename = safe_filename(str(spec.get("filename") or "attachment"))
        content_type = _content_type(spec.get("content_type"))
        if spec.get("content") is not None:
            try:
                data = base64.b64decode(str(spec["content"]), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise PermanentError(f"attachment {filename!r}: content is not valid base64") from exc
        elif spec.get("url"):
            if client is None:
                raise PermanentError(f"attachment {filename!r}: no HTTP client to fetch it")
            data = await _fetch(client, guard, str(spec["url"]), budget, timeout, filename)
        else:
            raise PermanentError(f"attachment {filename!r} has neither a url nor content")
        if len(data) > budget:
            raise PermanentError(
                f"attachments exceed {max_bytes} bytes in total (at {filename!r}); "
                "raise TIDINGS_SMTP_MAX_ATTACHMENT_BYTES or link to the file instead"
            )
        budget -= len(data)
        out.append(Attachment(filename, content_type, data))
    return out


async def _fetch(
    client: httpx.AsyncClient, guard: NetworkGuard, address: str, budget: int, timeout: float, filename: str
) -> bytes:
    where = f"attachment {filename!r} from {mask_url(address)}"
    try:
        url = httpx.URL(address)
    except (httpx.InvalidURL, ValueError) as exc:
        raise PermanentError(f"{where}: not a valid URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise PermanentError(f"{where}: not an http(s) URL")
    try:
        target = await guard.resolve(url)
    except InvalidAddressError as exc:
        raise PermanentError(f"{where}: {exc}") from exc
    headers = {"host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": target.host} if url.scheme == "https" else {}
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("GET", target.url, headers=headers, extensions=extensions) as response:
                status = response.status_code
                if 200 <= status < 300:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > budget:
                            break
                        chunks.append(chunk)
    except TimeoutError as exc:
        raise TransientError(f"{where} timed out after {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise TransientError(f"{where} failed: {type(exc).__name__}") from exc
    if status in (408, 425, 429) or status >= 500:
        raise TransientError(f"{where}: the file server answered {status}")
    if not 200 <= status < 300:
        raise PermanentError(f"{where}: the file server answered {status}")
    if size > budget:
        raise PermanentError(f"{where}: larger than the {budget} bytes left of the attachment limit")
    return b"".join(chunks)
