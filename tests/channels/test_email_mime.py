"""The email composer's bytes, read back with the standard library's parser.

Each message is checked three ways: against the delivery it came from (every
header, both bodies after decoding, every attachment's name, type and bytes),
against the message the standard library's ``EmailMessage`` builds for the same
delivery (the composer this one replaced), and for the shape of the bytes
themselves (ASCII, CRLF, line lengths, boundaries).
"""

from __future__ import annotations

import email.policy
import email.utils
import random
import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtplib.email import flatten_message
from pydantic import ValidationError

from channels.email import EmailChannel, EmailConfig
from channels.email.attachments import Attachment
from channels.email.mime import Composer, encode_subject
from schemas import Delivery
from schemas.errors import PermanentError

FROM = "Tidings <notify@tidings.example>"
DOMAIN = "mail.tidings.example"
RECIPIENT = "alice@example.com"

GERMAN = "Grüße aus Köln: Ihre Bestellung über 3 Bücher ist unterwegs"
JAPANESE = "東京の会議室の予約が確定しました"
EMOJI = "Party time 🎉🎂 — see you there ✓"


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def compose(delivery: Delivery, attachments: Sequence[Attachment] = (), from_address: str = FROM) -> bytes:
    channel = EmailChannel(EmailConfig(from_address=from_address, message_id_domain=DOMAIN))
    return channel.compose(delivery, RECIPIENT, attachments)


def stdlib_message(delivery: Delivery, attachments: Sequence[Attachment] = (), from_address: str = FROM) -> bytes:
    """What the channel sent before: the standard library's EmailMessage, flattened for SMTP."""
    message = EmailMessage()
    message["Subject"] = " ".join(delivery.subject.split())
    message["From"] = from_address
    message["To"] = RECIPIENT
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = f"<{delivery.delivery_id}@{DOMAIN}>"
    message["X-Tidings-Delivery-Id"] = delivery.delivery_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(delivery.text)
    if delivery.html is not None:
        message.add_alternative(delivery.html, subtype="html")
    for item in attachments:
        message.add_attachment(item.data, maintype=item.maintype, subtype=item.subtype, filename=item.filename)
    message["Content-Language"] = delivery.locale
    return flatten_message(message, cte_type="7bit")


def as_text(value: str) -> str:
    """A body as a reader gets it back: every line break a newline, and a final one."""
    lines = value.encode("utf-8").splitlines()
    return "\n".join(line.decode("utf-8") for line in lines) + "\n"


def content(part: EmailMessage) -> Any:
    value = part.get_content()
    return value.replace("\r\n", "\n") if isinstance(value, str) else value


def summary(message: EmailMessage) -> dict[str, Any]:
    """Everything a reader sees, without what differs between two composers by design.

    The subject is left out: ``check`` compares it with the delivery's, which the standard
    library's message does not always give back (it drops the space in "🎂 —", and sends a
    subject that looks like an encoded-word as is, so a reader decodes it).
    """
    headers: dict[str, str] = {}
    for name, value in message.items():
        if name.lower() not in ("subject", "date", "content-type", "content-transfer-encoding", "mime-version"):
            headers[name.lower()] = str(value)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    return {
        "headers": headers,
        "structure": [part.get_content_type() for part in message.walk()],
        "text": content(text) if isinstance(text, EmailMessage) else None,
        "html": content(html) if isinstance(html, EmailMessage) else None,
        "attachments": [
            (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
            for part in message.iter_attachments()
        ],
    }


def check_bytes(raw: bytes) -> None:
    """ASCII, CRLF line ends only, header lines within 78 characters, body lines within 998."""
    assert raw.isascii()
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    head, _, _ = raw.partition(b"\r\n\r\n")
    lines = raw.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert all(len(line) <= 78 for line in lines if line.lower().startswith((b"content-", b" ")))


def check(delivery: Delivery, attachments: Sequence[Attachment] = (), from_address: str = FROM) -> EmailMessage:
    """Compose, check the bytes, check against the delivery and against the standard library; return the parse."""
    raw = compose(delivery, attachments, from_address)
    check_bytes(raw)
    ours = parse(raw)
    name, mailbox = email.utils.parseaddr(from_address)

    assert ours["Subject"] == " ".join(delivery.subject.split())
    [sender] = ours["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (name, mailbox)
    assert ours["To"] == RECIPIENT
    assert ours["Message-ID"] == f"<{delivery.delivery_id}@{DOMAIN}>"
    assert ours["X-Tidings-Delivery-Id"] == delivery.delivery_id
    assert ours["Auto-Submitted"] == "auto-generated"
    assert ours["Content-Language"] == delivery.locale
    assert ours["MIME-Version"] == "1.0"
    assert abs(email.utils.parsedate_to_datetime(ours["Date"]).timestamp() - delivery.created_at.timestamp()) < 600
    assert all(len(ours.get_all(name, [])) == 1 for name in ours)

    got = summary(ours)
    assert got["text"] == as_text(delivery.text)
    assert got["html"] == (None if delivery.html is None else as_text(delivery.html))
    assert got["attachments"] == [(a.filename, a.content_type, a.data) for a in attachments]
    assert got == summary(parse(stdlib_message(delivery, attachments, from_address)))
    for body in (ours.get_body(("plain",)), ours.get_body(("html",))):
        assert body is None or body.get_param("charset") == "utf-8"
    return ours


# ------------------------------------------------------------------ shapes


def test_text_only_is_a_single_text_part(make_delivery: Any) -> None:
    message = check(make_delivery(html=None))
    assert message.get_content_type() == "text/plain"
    assert message["Content-Transfer-Encoding"] == "7bit"


def test_text_and_html_are_alternatives(make_delivery: Any) -> None:
    message = check(make_delivery(subject="Your order has shipped", text="It is on its way.", html="<p>Yes</p>"))
    assert [p.get_content_type() for p in message.walk()] == ["multipart/alternative", "text/plain", "text/html"]


@pytest.mark.parametrize("html", [None, "<p>and HTML</p>"], ids=["text", "text+html"])
def test_attachments_make_a_mixed_message(make_delivery: Any, html: str | None) -> None:
    files = [
        Attachment("report.pdf", "application/pdf", b"%PDF-1.4\x00\xff\xfe" + bytes(range(256)) * 40),
        Attachment("notes.txt", "text/plain", "plain words\r\nzweite Zeile ü\n".encode()),
        Attachment("empty.bin", "application/octet-stream", b""),
    ]
    message = check(make_delivery(html=html), files)
    assert message.get_content_type() == "multipart/mixed"
    for part in message.iter_attachments():
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_content_disposition() == "attachment"


@pytest.mark.parametrize(
    "filename",
    ["Grüße.pdf", "東京の会議室の予約が確定しました-議事録と資料一式-最終版-2026年11月21日.pdf", "🎉 party.png",
     'a "quoted" name; with = signs.txt', "x" * 200],
)
def test_attachment_names_survive(make_delivery: Any, filename: str) -> None:
    check(make_delivery(), [Attachment(filename, "application/octet-stream", b"data")])


# ------------------------------------------------------------------ non-ASCII


@pytest.mark.parametrize("subject", [GERMAN, JAPANESE, EMOJI, JAPANESE * 4, f"{GERMAN} {EMOJI} {JAPANESE}"])
def test_non_ascii_subjects(make_delivery: Any, subject: str) -> None:
    check(make_delivery(subject=subject))


@pytest.mark.parametrize("body", [GERMAN, JAPANESE, EMOJI, f"{GERMAN}\n\n{JAPANESE}\n{EMOJI}\n" * 30])
def test_non_ascii_bodies(make_delivery: Any, body: str) -> None:
    message = check(make_delivery(text=body, html=f"<p>{body}</p>"))
    for part in message.walk():
        if not part.is_multipart():
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")


def test_mostly_ascii_text_is_quoted_printable_and_cjk_is_base64(make_delivery: Any) -> None:
    message = check(make_delivery(text=GERMAN, html=f"<p>{JAPANESE * 3}</p>"))
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "base64"


@pytest.mark.parametrize(
    "from_address",
    ["Büro Köln <notify@tidings.example>", "東京オフィス <notify@tidings.example>", "Tidings 🎉 <a@tidings.example>",
     '"Smith, John" <notify@tidings.example>', '"He said \\"hi\\"" <notify@tidings.example>',
     "notify@tidings.example", "Tidings Notifications From The Platform Team Of Acme Incorporated <n@tidings.example>"],
)
def test_sender_names(make_delivery: Any, from_address: str) -> None:
    check(make_delivery(), from_address=from_address)


# ------------------------------------------------------------------ awkward text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "From the start\nFrom here\n>From there",
        ".\n..\n. leading dots\n.",
        "a line of " + "x" * 2000 + " that is long",
        "exactly 78: " + "y" * 66 + "\nexactly 79: " + "z" * 67,
        "trailing spaces   \nand tabs\t\t\nend",
        "windows\r\nline\r\nends\r\nand a lone\rCR",
        "=?utf-8?q?not_an_encoded_word?= and = signs =3D",
        "--=_000000000000000000000000\n--=_ boundary-like lines --\n",
    ],
    ids=["empty", "newline", "from", "dots", "long-line", "78-79", "trailing-space", "crlf", "equals", "boundary"],
)
def test_awkward_bodies(make_delivery: Any, text: str) -> None:
    check(make_delivery(text=text, html=text))


def test_empty_html_is_still_an_alternative(make_delivery: Any) -> None:
    message = check(make_delivery(text="words", html=""))
    assert message.get_content_type() == "multipart/alternative"


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "A long subject line that goes on and on about an order that has shipped and will arrive on Tuesday",
        "Averyveryveryveryveryveryveryveryveryveryveryveryveryveryveryveryverylongwordwithoutanyspaces ok",
        "=?utf-8?q?looks_encoded?=",
        "tabs\tand  double  spaces",
        "control \x07 bell \x00 nul \x7f del",
    ],
)
def test_awkward_subjects(make_delivery: Any, subject: str) -> None:
    check(make_delivery(subject=subject))


def test_encoded_subject_words_hold_whole_characters() -> None:
    for text in (JAPANESE * 5, EMOJI * 5, GERMAN * 3):
        line = encode_subject(text)
        words = re.findall(r"=\?utf-8\?([bq])\?(.*?)\?=", line)
        assert len(words) > 1
        for kind, payload in words:
            raw = email.header.decode_header(f"=?utf-8?{kind}?{payload}?=")[0][0]
            assert isinstance(raw, bytes)
            raw.decode("utf-8")  # raises if a character was split between two words
        assert all(len(row) <= 78 for row in line.split("\r\n"))


def test_boundary_that_occurs_in_the_content_is_not_used(make_delivery: Any) -> None:
    random.seed(7)
    first_draw = f"=_{random.getrandbits(96):024x}"
    random.seed(7)
    text = f"--{first_draw}\nThis line would end the part early.\n--{first_draw}--\n"

    message = check(make_delivery(text=text, html=text))

    assert message.get_boundary() != first_draw


# ------------------------------------------------------------------ header injection


def test_line_breaks_in_the_subject_become_spaces(make_delivery: Any) -> None:
    delivery = make_delivery(subject="Hello\r\nBcc: mallory@evil.example\nX-Evil: 1\r\n\r\nbody")

    message = check(delivery)

    assert message["Subject"] == "Hello Bcc: mallory@evil.example X-Evil: 1 body"
    assert message["Bcc"] is None and message["X-Evil"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("delivery_id", "d-1\r\nBcc: mallory@evil.example"), ("delivery_id", "d 1"), ("delivery_id", "d<1>"),
     ("delivery_id", "dé-1"), ("locale", "en\r\nBcc: mallory@evil.example"), ("locale", "en us")],
)
def test_header_values_that_cannot_be_sent_raw_are_refused(make_delivery: Any, field: str, value: str) -> None:
    with pytest.raises(PermanentError, match=field) as caught:
        compose(make_delivery(**{field: value}))
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)


def test_an_empty_locale_leaves_content_language_out(make_delivery: Any) -> None:
    raw = compose(make_delivery(locale=""))
    assert parse(raw)["Content-Language"] is None


@pytest.mark.parametrize(
    "from_address",
    ["Tidings <notify@tidings.example>\r\nBcc: mallory@evil.example", "Tidings\n <notify@tidings.example>",
     "Tidings <nötify@tidings.example>"],
)
def test_sender_with_line_breaks_or_non_ascii_mailbox_is_refused_at_startup(from_address: str) -> None:
    with pytest.raises(ValidationError, match="from_address"):
        EmailConfig(from_address=from_address)


@pytest.mark.parametrize("domain", ["mail.example\r\nBcc: x", "", "a b", "<x>"])
def test_message_id_domain_must_be_a_domain(domain: str) -> None:
    with pytest.raises(ValidationError, match="message_id_domain"):
        EmailConfig(message_id_domain=domain)


def test_surrogates_are_refused_with_the_field_named(make_delivery: Any) -> None:
    composer = Composer(FROM, DOMAIN)
    common: dict[str, Any] = {"recipient": RECIPIENT, "html": None, "delivery_id": "d-1", "locale": "en"}
    with pytest.raises(PermanentError, match="subject"):
        composer.compose(subject="bad \ud800", text="ok", **common)
    with pytest.raises(PermanentError, match="text body"):
        composer.compose(subject="ok", text="bad \ud800", **common)
