"""Attachments named by an event become references on its email deliveries."""

from __future__ import annotations

import base64
import json

from router.attachments import attachment_metadata


def test_no_attachments_no_metadata() -> None:
    assert attachment_metadata({}) == {}
    assert attachment_metadata({"attachments": []}) == {}
    assert attachment_metadata({"attachments": "nope"}) == {}


def test_urls_and_inline_content_are_carried() -> None:
    data = {"attachments": [
        {"filename": "book.pdf", "content_type": "application/pdf", "url": "https://files.example.com/b.pdf",
         "content": None},
        {"filename": "note.txt", "content_type": "text/plain", "url": None, "content": b"hi"},
        {"filename": "", "content_type": "", "url": "https://files.example.com/x"},
        "not a mapping",
    ]}
    carried = json.loads(attachment_metadata(data)["attachments"])
    assert carried == [
        {"filename": "book.pdf", "content_type": "application/pdf", "url": "https://files.example.com/b.pdf"},
        {"filename": "note.txt", "content_type": "text/plain", "content": base64.b64encode(b"hi").decode()},
        {"filename": "attachment", "content_type": "application/octet-stream", "url": "https://files.example.com/x"},
    ]
