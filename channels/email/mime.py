"""The bytes of an email, written directly: RFC 5322 headers and MIME parts.

The standard library's ``EmailMessage`` parses every header it is given into
an object, then folds it back into text, and flattening walks the whole tree
again: about 3 ms a message here, more than the SMTP transaction costs. A
notification always has the same shape, so this module writes that shape
straight to bytes:

* ``text/plain``, or ``multipart/alternative`` (text, then HTML) when an HTML
  body is given, wrapped in ``multipart/mixed`` when there are attachments;
* text parts in UTF-8, ``7bit`` when they are ASCII with lines of at most 78
  octets, otherwise quoted-printable or base64, whichever the first ten lines
  say is shorter (the standard library's rule for a 7-bit transport). The
  message is ASCII from end to end, so it needs neither 8BITMIME nor SMTPUTF8;
* attachments in base64, the file name quoted, or in RFC 2231 form
  (``filename*0*=utf-8''...``) when it is not ASCII;
* a Subject or a display name that is not plain ASCII becomes RFC 2047
  encoded-words; every header line is folded at 78 characters;
* CRLF line ends, no line over 998 octets, boundaries that are checked not to
  occur in the parts they separate.

Header injection: a subject's line breaks, like all its other whitespace,
become single spaces (it is display text). Values that go into headers
verbatim (the delivery id, the locale) must be plain tokens; anything else is
a :class:`~schemas.errors.PermanentError` that names the field, so the
delivery is dead-lettered with the reason instead of being sent garbled.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import time
import urllib.parse
from collections.abc import Sequence
from email.utils import formatdate, parseaddr

from channels.email.attachments import Attachment
from schemas.errors import PermanentError

__all__ = ["Composer", "encode_phrase", "encode_subject"]

_MAX_LINE = 78
_MAX_WORD = 75  # RFC 2047: an encoded-word is at most 75 characters
_TEXT_LINE = 78  # a text line longer than this (in octets) is not sent as 7bit
_SNIFF_LINES = 10

_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")  # a phrase that needs no quotes
_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")  # dot-atom text: the left of a Message-ID
_LOCALE = re.compile(r"[A-Za-z0-9_.-]+")
_ADDR_SPEC = re.compile(r"[\x21-\x7e]+@[\x21-\x7e]+")

# RFC 2047 "Q" for unstructured text and phrases: these stay, space is "_", the rest "=XX".
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q = tuple("_" if b == 0x20 else chr(b) if b in _Q_SAFE else f"={b:02X}" for b in range(256))
_FILENAME_SAFE = "!#$&+^`|"  # RFC 2231 attribute-chars that urllib.parse.quote would otherwise escape


def _fold(name: str, tokens: Sequence[str]) -> str:
    """``name: token token ...``, a new line (starting with a space) whenever the next token would pass 78."""
    out = [name + ":"]
    width = len(out[0])
    first = True
    for token in tokens:
        if width + 1 + len(token) > _MAX_LINE and not first:
            out.append("\r\n ")
            width = 1
        else:
            out.append(" ")
            width += 1
        out.append(token)
        width += len(token)
        first = False
    return "".join(out)


def _encoded_words(text: str, first_room: int) -> list[str]:
    """``text`` as RFC 2047 encoded-words in UTF-8, each holding whole characters.

    The first word fits in ``first_room`` characters, the others in 75. "Q" or
    "B" is chosen for the whole text, whichever is shorter.
    """
    data = text.encode("utf-8")
    q_size = sum(len(_Q[b]) for b in data)
    use_b = q_size > (len(data) + 2) // 3 * 4
    prefix = "=?utf-8?b?" if use_b else "=?utf-8?q?"
    overhead = len(prefix) + 2
    words: list[str] = []
    room = first_room - overhead
    chunk: list[str] = []  # Q: encoded pieces; B: characters
    size = 0  # Q: encoded length so far; B: octets so far
    for char in text:
        raw = char.encode("utf-8")
        if use_b:
            grown = size + len(raw)
            fits = (grown + 2) // 3 * 4 <= room
            piece = char
        else:
            piece = "".join(_Q[b] for b in raw)
            grown = size + len(piece)
            fits = grown <= room
        if not fits and chunk:
            words.append(_word(prefix, chunk, use_b))
            chunk, size, room = [], 0, _MAX_WORD - overhead
            grown = len(raw) if use_b else len(piece)
        chunk.append(piece)
        size = grown
    if chunk or not words:
        words.append(_word(prefix, chunk, use_b))
    return words


def _word(prefix: str, chunk: list[str], use_b: bool) -> str:
    text = "".join(chunk)
    return prefix + (base64.b64encode(text.encode("utf-8")).decode("ascii") if use_b else text) + "?="


def encode_subject(subject: str) -> str:
    """The whole ``Subject:`` header line(s), without the final CRLF.

    All whitespace, line breaks included, collapses to single spaces. Plain
    ASCII is folded between words; anything else (non-ASCII, control
    characters, a word too long to fold, text that looks like an encoded-word)
    is sent as encoded-words.
    """
    words = subject.split()
    plain = " ".join(words)
    name = "Subject"
    if (
        _PRINTABLE.fullmatch(plain)
        and "=?" not in plain
        and all(len(word) < _MAX_LINE - len(name) - 2 for word in words)
    ):
        return _fold(name, words)
    return _fold(name, _encoded_words(plain, _MAX_LINE - len(name) - 2))


def encode_phrase(name: str) -> list[str]:
    """A display name as the tokens of an RFC 5322 phrase: atoms, one quoted string, or encoded-words."""
    if not name:
        return []
    if _ATOMS.fullmatch(name) and "=?" not in name:
        return name.split()
    if _PRINTABLE.fullmatch(name) and "=?" not in name:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return [f'"{escaped}"']
    return _encoded_words(" ".join(name.split()), _MAX_LINE - len("From: "))


def _filename_param(filename: str) -> list[str]:
    """``filename=...`` as one or more parameters (RFC 2231, continued over lines, when not short ASCII)."""
    if _PRINTABLE.fullmatch(filename) and len(filename) <= 60:
        escaped = filename.replace("\\", "\\\\").replace('"', '\\"')
        return [f'filename="{escaped}"']
    sections: list[str] = []
    current = "utf-8''"
    for char in filename:
        piece = urllib.parse.quote(char, safe=_FILENAME_SAFE)
        if len(current) + len(piece) > 60:
            sections.append(current)
            current = ""
        current += piece
    sections.append(current)
    if len(sections) == 1:
        return [f"filename*={sections[0]}"]
    return [f"filename*{i}*={section}" for i, section in enumerate(sections)]


def _text_body(text: str, field: str) -> tuple[str, bytes]:
    """The Content-Transfer-Encoding and encoded body of a UTF-8 text part (always ending in CRLF)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PermanentError(f"the {field} is not valid Unicode text (at position {exc.start})") from exc
    lines = data.splitlines()  # bytes split on CR, LF and CRLF only, as the standard library does
    body = b"\r\n".join(lines) + b"\r\n"
    if data.isascii() and max(map(len, lines), default=0) <= _TEXT_LINE:
        return "7bit", body
    sniff = b"\r\n".join(lines[:_SNIFF_LINES]) + b"\r\n"
    if len(binascii.b2a_qp(sniff, istext=True)) > len(binascii.b2a_base64(sniff)):
        return "base64", _base64(body)
    return "quoted-printable", binascii.b2a_qp(body, istext=True)


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _text_part(text: str, subtype: str, field: str) -> bytes:
    cte, body = _text_body(text, field)
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    return head.encode("ascii") + body


def _attachment_part(attachment: Attachment) -> bytes:
    disposition = _fold("Content-Disposition", ["attachment;", *_params(_filename_param(attachment.filename))])
    head = (
        f"Content-Type: {attachment.content_type}\r\nContent-Transfer-Encoding: base64\r\n{disposition}\r\n\r\n"
    )
    return head.encode("ascii") + _base64(attachment.data)


def _params(params: list[str]) -> list[str]:
    return [param + ";" for param in params[:-1]] + params[-1:]


def _multipart(subtype: str, parts: Sequence[bytes]) -> tuple[str, bytes]:
    """A multipart body and its Content-Type header; the boundary is drawn again while a part contains it.

    "=_" cannot occur in quoted-printable or base64 text; a 7bit part is checked like the others.
    """
    while True:
        boundary = f"=_{random.getrandbits(96):024x}"
        marker = boundary.encode("ascii")
        if not any(marker in part for part in parts):
            break
    delimiter = b"\r\n--" + marker + b"\r\n"
    body = b"--" + marker + b"\r\n" + delimiter.join(parts) + b"\r\n--" + marker + b"--\r\n"
    return _fold("Content-Type", [f"multipart/{subtype};", f'boundary="{boundary}"']), body


def _token(value: str, field: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise PermanentError(
            f"the {field} {value[:80]!r} cannot go into a mail header: "
            "it must be letters, digits and punctuation, without spaces or line breaks"
        )
    return value


class Composer:
    """Writes the messages of one sender: the From header and the Message-ID domain are fixed."""

    def __init__(self, from_address: str, message_id_domain: str) -> None:
        display, mailbox = parseaddr(from_address)
        if not _ADDR_SPEC.fullmatch(mailbox) or not mailbox.isascii():
            raise ValueError(f"from_address {from_address!r}: the mailbox must be ASCII, without spaces")
        _token(message_id_domain, "message_id_domain", _ID)
        self._from = _fold("From", [*encode_phrase(display), f"<{mailbox}>"] if display else [mailbox])
        self._domain = message_id_domain
        self._date_second = -1
        self._date = ""

    def message_id(self, delivery_id: str) -> str:
        return f"<{_token(delivery_id, 'delivery_id', _ID)}@{self._domain}>"

    def date(self) -> str:
        """RFC 5322 date of now, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date = formatdate(now, usegmt=True)
            self._date_second = now
        return self._date

    def compose(
        self,
        *,
        recipient: str,
        subject: str,
        text: str,
        html: str | None,
        delivery_id: str,
        locale: str,
        attachments: Sequence[Attachment] = (),
    ) -> bytes:
        """The whole message, ready for DATA. ``recipient`` must already be a checked envelope address."""
        message_id = self.message_id(delivery_id)
        try:
            subject_line = encode_subject(subject)
        except UnicodeEncodeError as exc:
            raise PermanentError(f"the subject is not valid Unicode text (at position {exc.start})") from exc
        headers = [
            subject_line,
            self._from,
            f"To: {recipient}",
            f"Date: {self.date()}",
            f"Message-ID: {message_id}",
            f"X-Tidings-Delivery-Id: {delivery_id}",
            "Auto-Submitted: auto-generated",
        ]
        if locale:
            headers.append(f"Content-Language: {_token(locale, 'locale', _LOCALE)}")
        headers.append("MIME-Version: 1.0")
        if html is None and not attachments:
            cte, body = _text_body(text, "text body")
            headers.append('Content-Type: text/plain; charset="utf-8"')
            headers.append(f"Content-Transfer-Encoding: {cte}")
        else:
            content: bytes = _text_part(text, "plain", "text body")
            content_type, body = "", b""
            if html is not None:
                content_type, body = _multipart("alternative", [content, _text_part(html, "html", "HTML body")])
                content = f"{content_type}\r\n\r\n".encode("ascii") + body
            if attachments:
                content_type, body = _multipart("mixed", [content, *map(_attachment_part, attachments)])
            headers.append(content_type)
        headers.append("\r\n")
        return "\r\n".join(headers).encode("ascii") + body
