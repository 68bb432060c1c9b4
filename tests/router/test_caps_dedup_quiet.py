from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from router import keys
from router.caps import CapBook, CapLimit, counters, window_id
from router.dedup import DedupKeyError, DedupPolicy, content_digest, content_unchanged
from router.durations import format_duration, parse_duration
from router.quiet_hours import QuietHours, quiet_until

NOW = datetime(2024, 5, 17, 10, 30, tzinfo=UTC)


# -- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400),
                                               ("7d", 604800), ("2w", 1209600), (45, 45)])
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1x", "h", "0s", -5, "1h and", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_duration_formats_back() -> None:
    assert format_duration(timedelta(hours=2)) == "2h" and format_duration(timedelta(seconds=61)) == "61s"


# -- caps -----------------------------------------------------------------------------------


def test_caps_apply_by_channel_and_category() -> None:
    limits = [CapLimit(channel="email", per_hour=10, per_day=100),
              CapLimit(category="marketing", per_day=3), CapLimit(channel="sms", per_hour=1)]
    got = counters(limits, "t", "u", "email", "marketing", NOW)
    assert [c.label for c in got] == ["email/*/hour<=10", "email/*/day<=100", "*/marketing/day<=3"]
    assert got[0].key == keys.cap("t", "u", "email", "*", window_id("hour", NOW))
    assert [c.label for c in counters(limits, "t", "u", "email", "jobs", NOW)] == [
        "email/*/hour<=10", "email/*/day<=100"]
    assert counters(limits, "t", "u", "webhook", None, NOW) == []


def test_windows_are_calendar_aligned() -> None:
    assert window_id("hour", NOW) == window_id("hour", NOW.replace(minute=59))
    assert window_id("hour", NOW) != window_id("hour", NOW + timedelta(hours=1))
    assert window_id("day", NOW) == window_id("day", NOW.replace(hour=0, minute=0))


def test_a_cap_needs_a_limit() -> None:
    with pytest.raises(ValidationError, match="per_hour or per_day"):
        CapLimit(channel="email")


def test_capbook_counts_stored_and_batch_deliveries() -> None:
    wanted = counters([CapLimit(channel="email", per_hour=3)], "t", "u", "email", None, NOW)
    book = CapBook.from_counts({wanted[0].key: 1})
    assert book.over(wanted) is None
    book.take(wanted)
    assert book.over(wanted) is None
    book.take(wanted)
    assert book.over(wanted) == wanted[0]
    assert book.taken == {wanted[0].key: 2}
    assert book.ttls == {wanted[0].key: 3660}


# -- dedup ----------------------------------------------------------------------------------


def test_dedup_policy_validation() -> None:
    with pytest.raises(ValidationError, match="needs a window"):
        DedupPolicy(strategy="key_window", key="{{ data.x }}")
    with pytest.raises(ValidationError, match="window applies to key_window"):
        DedupPolicy(strategy="once_ever", window="1h")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="resend_after applies"):
        DedupPolicy(strategy="once_ever", resend_after="1h")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="does not parse"):
        DedupPolicy(strategy="once_ever", key="{{ data.x ")
    policy = DedupPolicy(strategy="key_window", key="{{ event.subject }}:{{ data.match_id }}",
                         window="24h")  # type: ignore[arg-type]
    assert policy.window == timedelta(hours=24) and policy.reason == "dedup_window"


def test_dedup_key_renders_over_the_event_and_names_a_missing_field() -> None:
    render = DedupPolicy(strategy="once_ever", key="{{ event.subject }}:{{ data.match_id }}").compile()
    assert render({"event": {"subject": "u-1"}, "data": {"match_id": "m-7"}}) == "u-1:m-7"
    with pytest.raises(DedupKeyError, match="match_id"):
        render({"event": {"subject": "u-1"}, "data": {}})


def test_content_digest_changes_with_any_part() -> None:
    base = content_digest("s", "t", None)
    assert base == content_digest("s", "t", "")
    assert len({base, content_digest("s2", "t", None), content_digest("s", "t2", None),
                content_digest("s", "t", "<p>")}) == 4
    assert content_unchanged(base, base) and not content_unchanged(None, base)
    assert not content_unchanged(content_digest("x", "t", None), base)


# -- quiet hours ----------------------------------------------------------------------------

NIGHT = QuietHours(start=time(22, 0), end=time(7, 0))


def test_overnight_window_in_the_recipients_zone() -> None:
    # 23:30 in Berlin (CEST, UTC+2) is 21:30 UTC: quiet until 07:00 Berlin next day.
    now = datetime(2024, 5, 17, 21, 30, tzinfo=UTC)
    until = quiet_until(now, "Europe/Berlin", NIGHT)
    assert until is not None and until.astimezone(UTC) == datetime(2024, 5, 18, 5, 0, tzinfo=UTC)
    # 06:59 Berlin: same night, ends in one minute.
    early = datetime(2024, 5, 18, 4, 59, tzinfo=UTC)
    assert quiet_until(early, "Europe/Berlin", NIGHT) == until
    # 07:00 Berlin: over; 21:59 Berlin: not yet.
    assert quiet_until(datetime(2024, 5, 18, 5, 0, tzinfo=UTC), "Europe/Berlin", NIGHT) is None
    assert quiet_until(datetime(2024, 5, 17, 19, 59, tzinfo=UTC), "Europe/Berlin", NIGHT) is None
    # The same UTC instant is daytime in New York.
    assert quiet_until(now, "America/New_York", NIGHT) is None


def test_daytime_window_and_no_window() -> None:
    lunch = QuietHours(start=time(12, 0), end=time(13, 0))
    assert quiet_until(NOW.replace(hour=12, minute=15), "UTC", lunch) == NOW.replace(hour=13, minute=0)
    assert quiet_until(NOW, "UTC", lunch) is None
    assert quiet_until(NOW, "UTC", None) is None


def test_window_end_keeps_local_time_across_dst() -> None:
    # Night of the spring change in Berlin (31 March 2024): 07:00 local is 05:00 UTC, not 06:00.
    now = datetime(2024, 3, 30, 22, 0, tzinfo=UTC)  # 23:00 CET
    until = quiet_until(now, "Europe/Berlin", NIGHT)
    assert until is not None and until.astimezone(UTC) == datetime(2024, 3, 31, 5, 0, tzinfo=UTC)


def test_empty_window_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        QuietHours(start=time(8, 0), end=time(8, 0))
