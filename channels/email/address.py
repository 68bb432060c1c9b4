"""Recipient address checks: refuse what no relay should be handed, before connecting."""

from __future__ import annotations

import email.errors
import re
from email.headerregistry import Address

from channels.base import mask_email
from schemas.errors import InvalidAddressError

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")  # RFC 5322 dot-atom: the common local part


def validate_address(address: str) -> str:
    """The envelope form of ``address`` (IDNA domain), or :class:`InvalidAddressError`.

    Accepts a bare ``local@domain``: no display name, no whitespace, no address
    literal, a domain of at least two valid labels. A non-ASCII local part is
    refused (it would need SMTPUTF8 end to end); a non-ASCII domain is encoded.
    """
    masked = mask_email(address)
    if not address or _FORBIDDEN.search(address):
        raise InvalidAddressError(f"email address {masked!r} is empty or contains spaces or brackets")
    if address.count("@") != 1 and not address.startswith('"'):
        raise InvalidAddressError(f"email address {masked!r} must contain exactly one '@'")
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise InvalidAddressError(f"email address {masked!r} lacks a local part or a domain")
    if len(local) > 64:
        raise InvalidAddressError(f"email address {masked!r} has a local part over 64 characters")
    try:
        ascii_domain = domain.lower() if domain.isascii() else domain.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidAddressError(f"email address {masked!r} has an invalid domain") from exc
    labels = ascii_domain.split(".")
    if (
        len(ascii_domain) > 253
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidAddressError(f"email address {masked!r} has an invalid domain")
    if _DOT_ATOM.fullmatch(local):
        return f"{local}@{ascii_domain}"  # what the parse below gives, without its cost
    try:
        parsed = Address(addr_spec=f"{local}@{ascii_domain}")
    except (ValueError, email.errors.MessageError) as exc:
        raise InvalidAddressError(f"email address {masked!r} is not a valid mailbox") from exc
    return parsed.addr_spec
