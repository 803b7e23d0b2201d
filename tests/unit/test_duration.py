from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from streams._duration import (
    MAX_DURATION_MS,
    datetime_to_ms,
    format_duration,
    parse_duration,
    resolve_deadline,
)
from streams.errors import DurationError, UsageError

NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("24h", 86_400_000),
        ("3d", 259_200_000),
        ("1w", 604_800_000),
        ("1h30m", 5_400_000),
        ("1h 30m", 5_400_000),
        (" 2h ", 7_200_000),
        ("1 h 30 m", 5_400_000),
        ("1w2d3h4m5s6ms", 788_645_006),
        ("1d1ms", 86_400_001),
        ("366d", MAX_DURATION_MS),
        ("52w2d", MAX_DURATION_MS),
    ],
)
def test_strings(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "cannot parse"),
        ("10", "bare number is ambiguous"),
        ("1.5h", "fractions"),
        ("1mo", "cannot parse"),
        ("1y", "cannot parse"),
        ("1:30", "cannot parse"),
        ("5 minutes", "cannot parse"),
        ("30m1h", "largest first"),
        ("1h1h", "largest first"),
        ("1H", "cannot parse"),
        ("-1h", "negative"),
        ("367d", "366 days"),
        ("53w", "366 days"),
        ("1h-", "cannot parse"),
    ],
)
def test_bad_strings(text: str, fragment: str) -> None:
    with pytest.raises(DurationError, match=fragment):
        parse_duration(text)


def test_duration_error_is_a_usage_error() -> None:
    assert issubclass(DurationError, UsageError)


def test_limit_message_names_the_limit() -> None:
    with pytest.raises(DurationError) as info:
        parse_duration("400d", what="timeout of step 'w'")
    assert str(info.value).startswith("timeout of step 'w': 400d")
    assert "366 days" in str(info.value) and str(MAX_DURATION_MS) in str(info.value)


def test_timedelta() -> None:
    assert parse_duration(timedelta(hours=1, milliseconds=5)) == 3_600_005
    assert parse_duration(timedelta(microseconds=1)) == 1  # rounds up: never zero
    assert parse_duration(timedelta(days=366)) == MAX_DURATION_MS
    with pytest.raises(DurationError, match="366 days"):
        parse_duration(timedelta(days=366, microseconds=1))
    with pytest.raises(DurationError, match="negative"):
        parse_duration(timedelta(seconds=-1))


def test_zero() -> None:
    for zero in (0, "0", "0s", "0ms", timedelta(0)):
        assert parse_duration(zero, allow_zero=True) == 0
        with pytest.raises(DurationError, match="greater than zero"):
            parse_duration(zero)


@pytest.mark.parametrize("value", [30, 1.5, True, None, [1], datetime.now(UTC)])
def test_other_types_are_rejected(value: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(value)  # type: ignore[arg-type]


def test_bare_number_message_suggests_units() -> None:
    with pytest.raises(DurationError, match="'30s' or '30ms'"):
        parse_duration(30)


def test_resolve_relative_and_absolute() -> None:
    assert resolve_deadline("1h", NOW) == NOW + 3_600_000
    assert resolve_deadline(timedelta(0), NOW, allow_zero=True) == NOW
    at = datetime(2024, 1, 1, tzinfo=UTC)
    assert resolve_deadline(at, NOW) == 1_704_067_200_000
    # Past datetimes are due at once; other time zones are the same instant.
    assert resolve_deadline(datetime(2020, 1, 1, tzinfo=UTC), NOW) == 1_577_836_800_000
    plus2 = timezone(timedelta(hours=2))
    assert resolve_deadline(datetime(2024, 1, 1, 2, tzinfo=plus2), NOW) == 1_704_067_200_000


def test_resolve_rejects_naive_and_far_datetimes() -> None:
    with pytest.raises(DurationError, match="timezone-aware"):
        resolve_deadline(datetime(2024, 1, 1), NOW)
    far = datetime.fromtimestamp(NOW / 1000 + 367 * 86_400, UTC)
    with pytest.raises(DurationError, match="366 days"):
        resolve_deadline(far, NOW)


def test_datetime_to_ms_keeps_milliseconds() -> None:
    assert datetime_to_ms(datetime(1970, 1, 1, 0, 0, 1, 999_999, tzinfo=UTC)) == 1999


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (500, "500ms"), (5_400_000, "1h30m"), (MAX_DURATION_MS, "366d"), (-1000, "-1s")],
)
def test_format(ms: int, text: str) -> None:
    assert format_duration(ms) == text
    if ms >= 0:
        assert parse_duration(text, allow_zero=True) == ms
