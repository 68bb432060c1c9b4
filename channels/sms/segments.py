"""How long an SMS is, in segments, and how to cut a text to fit.

A text that uses only the GSM 03.38 alphabet travels as 7-bit septets: 160 in
one segment, 153 per segment once it is split (the rest holds the
concatenation header). The characters of the extension table (``^{}\\[~]|€``
and form feed) take two septets each, and an escape pair is never split across
segments. Any other character switches the whole message to UCS-2: 70 UTF-16
code units in one segment, 67 per segment when split, and a surrogate pair
(an emoji, say) is never split either.

Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["GSM_BASIC", "GSM_EXTENSION", "Length", "encoding", "fit", "measure"]

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")

_SINGLE = {"gsm7": 160, "ucs2": 70}
_PART = {"gsm7": 153, "ucs2": 67}
Encoding = Literal["gsm7", "ucs2"]


@dataclass(frozen=True, slots=True)
class Length:
    encoding: Encoding
    units: int
    """Septets for GSM-7, UTF-16 code units for UCS-2."""
    segments: int


def encoding(text: str) -> Encoding:
    return "gsm7" if all(c in GSM_BASIC or c in GSM_EXTENSION for c in text) else "ucs2"


def _unit_sizes(text: str, enc: Encoding) -> list[int]:
    if enc == "gsm7":
        return [2 if c in GSM_EXTENSION else 1 for c in text]
    return [2 if ord(c) > 0xFFFF else 1 for c in text]


def measure(text: str) -> Length:
    """Encoding, units and segment count of ``text`` as an SMS."""
    enc = encoding(text)
    sizes = _unit_sizes(text, enc)
    units = sum(sizes)
    if units <= _SINGLE[enc]:
        return Length(enc, units, 1 if units else 0)
    per_part = _PART[enc]
    segments, used = 1, 0
    for size in sizes:
        if used + size > per_part:  # an escape pair or surrogate pair stays whole
            segments += 1
            used = 0
        used += size
    return Length(enc, units, segments)


def fit(text: str, max_segments: int, marker: str = "...") -> str:
    """``text``, or its longest prefix plus ``marker`` that fits in ``max_segments`` segments."""
    if max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    if measure(text).segments <= max_segments:
        return text
    low, high = 0, len(text)  # invariant: prefix of length `low` fits
    while low < high:
        middle = (low + high + 1) // 2
        if measure(text[:middle].rstrip() + marker).segments <= max_segments:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + marker
