"""Seed 001 end to end: a book-generation event names its files; the email arrives with them."""

from __future__ import annotations

import pytest

from devstack.providers import ProviderSink

from .conftest import Pipeline

pytestmark = pytest.mark.integration


def test_a_finished_book_arrives_by_email_with_its_files(pipeline: Pipeline) -> None:
    with ProviderSink() as files:
        pipeline.settings = pipeline.settings.model_copy(update={"smtp_attachment_allow_private": "127.0.0.0/8"})
        pipeline.recipients({"id": "u-kurt", "name": "Kurt", "contacts": {"email": "kurt@example.com"}})
        pipeline.start_router()
        pipeline.start_channel("email")
        data = {
            "user_id": "u-kurt", "job_id": "j-42", "title": "On Formally Undecidable Propositions",
            "status": "completed",
            "attachments": [
                {"filename": "propositions.pdf", "content_type": "application/pdf",
                 "url": files.url("/files/propositions.pdf?size=40000"), "content": None},
                {"filename": "notes.txt", "content_type": "text/plain", "url": None, "content": b"Satz VI"},
            ],
        }
        pipeline.pub().publish("bookgen.job.completed", data, subject="u-kurt", source="tests/e2e")
        pipeline.pub().flush()

        [mail] = pipeline.smtp.wait_for(1, timeout=60)

    assert "On Formally Undecidable Propositions" in mail["subject"]
    assert mail["attachments"] == [
        {"filename": "propositions.pdf", "content_type": "application/pdf", "size": 40000},
        {"filename": "notes.txt", "content_type": "text/plain", "size": 7},
    ]
