"""SMS length by segments: GSM-7 versus UCS-2, escapes and surrogate pairs."""

from __future__ import annotations

import pytest

from channels.sms import fit, measure


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "gsm7", 0, 0),
        ("Hello", "gsm7", 5, 1),
        ("a" * 160, "gsm7", 160, 1),
        ("a" * 161, "gsm7", 161, 2),
        ("a" * 306, "gsm7", 306, 2),
        ("a" * 307, "gsm7", 307, 3),
        ("€" * 80, "gsm7", 160, 1),  # extension characters take two septets
        ("€" * 81, "gsm7", 162, 2),
        ("Grüße aus Köln", "gsm7", 14, 1),  # ü, ß and ö are in GSM-7's basic table
        ("Zürich, čas", "ucs2", 11, 1),  # č is not GSM-7
        ("x" * 70 + "č", "ucs2", 71, 2),
        ("č" * 70, "ucs2", 70, 1),
        ("č" * 134, "ucs2", 134, 2),
        ("č" * 135, "ucs2", 135, 3),
        ("😀" * 35, "ucs2", 70, 1),  # an emoji is a surrogate pair: two units
    ],
)
def test_measure(text: str, encoding: str, units: int, segments: int) -> None:
    length = measure(text)
    assert (length.encoding, length.units, length.segments) == (encoding, units, segments)


def test_an_escape_pair_is_never_split_across_segments() -> None:
    text = "a" * 152 + "€" + "a" * 153  # the € would straddle the first boundary
    assert measure(text).units == 307
    assert measure(text).segments == 3


def test_a_surrogate_pair_is_never_split_across_segments() -> None:
    text = "č" * 66 + "😀" + "č" * 67
    assert measure(text).segments == 3


def test_fit_leaves_short_text_alone_and_cuts_long_text_with_a_marker() -> None:
    assert fit("short", 1) == "short"
    cut = fit("word " * 100, 2)
    assert cut.endswith("...")
    assert measure(cut).segments == 2
    assert measure(cut + "x").segments >= 2


def test_fit_keeps_unicode_text_within_its_segments() -> None:
    cut = fit("Привет! " * 50, 1)
    assert measure(cut).encoding == "ucs2"
    assert measure(cut).segments == 1
    assert len(cut) <= 70


def test_fit_needs_at_least_one_segment() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        fit("x", 0)
