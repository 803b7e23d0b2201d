"""Durations and deadlines: ``"500ms"``, ``"1h30m"``, ``timedelta``, aware ``datetime``.

Everything resolves to whole milliseconds, the unit of event ``ts`` and timers. The grammar is a small
regular expression rather than a dependency: ``pytimeparse2`` (the maintained option) parses floats into
float seconds and also accepts forms that are ambiguous in a durable schedule (``"1mo"`` = 30 days,
``"1y"``, clock forms like ``"1:30"``, bare numbers), all of which we want to reject with a clear message.

Grammar (whitespace allowed between parts; each unit at most once, largest first)::

    duration := part (" "* part)*
    part     := digits " "* unit
    unit     := "w" | "d" | "h" | "m" | "s" | "ms"

Rules:

- A bare number is ambiguous (seconds? milliseconds?) and rejected, except the integer ``0``, which means
  zero in every unit (``lookback=0``).
- Negative values are rejected. Zero is allowed where the caller says so: lookbacks and sleeps allow it,
  timeouts do not (a wait that times out when it starts can never see a live event).
- Waits, sleeps, lookbacks and ``cancel_on`` timeouts are capped at :data:`MAX_DURATION_MS` (366 days).
- ``timedelta`` values round *up* to whole milliseconds, so a positive duration never becomes zero.
- An absolute ``datetime`` must be timezone-aware; a naive one would mean different instants on
  different workers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from streams.errors import DurationError

#: The longest wait, sleep, lookback or ``cancel_on`` timeout: 366 days, in milliseconds.
MAX_DURATION_MS = 366 * 24 * 3600 * 1000

#: Milliseconds per unit, largest first (the required order inside a string).
_UNIT_MS: dict[str, int] = {
    "w": 7 * 24 * 3600 * 1000,
    "d": 24 * 3600 * 1000,
    "h": 3600 * 1000,
    "m": 60 * 1000,
    "s": 1000,
    "ms": 1,
}
_UNIT_ORDER = list(_UNIT_MS)
# "ms" must be tried before "m" and "s".
_PART_RE = re.compile(r"\s*(\d{1,12})\s*(ms|w|d|h|m|s)(?![a-z])\s*")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: What a duration may be given as.
DurationLike = str | timedelta | int
#: A duration or an absolute time.
DeadlineLike = str | timedelta | int | datetime


def parse_duration(value: DurationLike, *, what: str = "duration", allow_zero: bool = False) -> int:
    """Parses a relative duration into milliseconds.

    Args:
        value: A string such as ``"500ms"``, ``"30s"``, ``"1h30m"`` or ``"1h 30m"``, a ``timedelta``,
            or the integer ``0``.
        what: Names the value in error messages, e.g. ``"timeout of step 'wait'"``.
        allow_zero: Whether zero is a valid value.

    Returns:
        The duration in whole milliseconds, from 0 (or 1) to :data:`MAX_DURATION_MS`.

    Raises:
        DurationError: The value cannot be understood, is negative, is zero where not allowed, or exceeds
            366 days.
    """
    if isinstance(value, bool):
        raise DurationError(f"{what}: expected a duration like '30s' or a timedelta, got {value!r}")
    if isinstance(value, str):
        ms = _parse_string(value, what)
    elif isinstance(value, timedelta):
        # Integer arithmetic: timedelta's own total_seconds() is a float.
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        if micros < 0:
            raise DurationError(f"{what}: must not be negative, got {value!r}")
        ms = -(-micros // 1000)
    elif isinstance(value, int):
        if value != 0:
            raise DurationError(
                f"{what}: a bare number is ambiguous ({value!r} seconds or milliseconds?); "
                f"write a string such as '{value}s' or '{value}ms', or a timedelta"
            )
        ms = 0
    elif isinstance(value, datetime):
        raise DurationError(f"{what}: expected a relative duration, not an absolute datetime")
    else:
        raise DurationError(
            f"{what}: expected a duration like '30s' or a timedelta, got {type(value).__name__}"
        )
    if ms == 0 and not allow_zero:
        raise DurationError(f"{what}: must be greater than zero")
    if ms > MAX_DURATION_MS:
        raise DurationError(
            f"{what}: {format_duration(ms)} is longer than the limit of 366 days "
            f"({MAX_DURATION_MS} ms); waits, sleeps and timeouts are capped at 366 days"
        )
    return ms


def resolve_deadline(
    value: DeadlineLike, now_ms: int, *, what: str = "deadline", allow_zero: bool = False
) -> int:
    """Turns a duration or an absolute time into an absolute deadline.

    An absolute time in the past is allowed and returned as is (the timer is due at once); one more than
    366 days after ``now_ms`` is rejected.

    Args:
        value: A relative duration (see :func:`parse_duration`) or a timezone-aware ``datetime``.
        now_ms: The current time in milliseconds since the Unix epoch.
        what: Names the value in error messages.
        allow_zero: Whether a zero relative duration is valid.

    Returns:
        The deadline in milliseconds since the Unix epoch.

    Raises:
        DurationError: The value is invalid, naive, or too far away.
    """
    if isinstance(value, datetime):
        at_ms = datetime_to_ms(value, what=what)
        if at_ms - now_ms > MAX_DURATION_MS:
            raise DurationError(
                f"{what}: {value.isoformat()} is more than the limit of 366 days away; "
                "waits, sleeps and timeouts are capped at 366 days"
            )
        return at_ms
    return now_ms + parse_duration(value, what=what, allow_zero=allow_zero)


def datetime_to_ms(value: datetime, *, what: str = "datetime") -> int:
    """Converts a timezone-aware datetime to milliseconds since the Unix epoch (rounded down).

    Raises:
        DurationError: The datetime is naive.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise DurationError(
            f"{what}: {value.isoformat()} is a naive datetime; use a timezone-aware one, "
            "e.g. datetime.now(timezone.utc) or datetime(..., tzinfo=timezone.utc)"
        )
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def format_duration(ms: int) -> str:
    """Formats milliseconds in the string grammar, e.g. ``5_400_000`` → ``"1h30m"`` (``0`` → ``"0s"``)."""
    if ms <= 0:
        return "0s" if ms == 0 else "-" + format_duration(-ms)
    out = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNIT_MS[unit]
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def _parse_string(text: str, what: str) -> int:
    stripped = text.strip()
    if stripped == "0":
        return 0
    if stripped.startswith("-"):
        raise DurationError(f"{what}: must not be negative, got {text!r}")
    total = 0
    position = 0
    last_rank = -1
    hint = "use e.g. '500ms', '30s', '5m', '24h', '3d', '1w' or '1h30m'"
    if not stripped:
        raise DurationError(f"{what}: empty duration; {hint}")
    if stripped.isdigit():
        raise DurationError(
            f"{what}: a bare number is ambiguous ({text!r} seconds or milliseconds?); "
            f"write e.g. '{stripped}s' or '{stripped}ms'"
        )
    if "." in stripped or "," in stripped:
        raise DurationError(f"{what}: cannot parse {text!r}: fractions are not supported, write e.g. '1h30m'")
    while position < len(text):
        match = _PART_RE.match(text, position)
        if match is None:
            raise DurationError(f"{what}: cannot parse {text!r} at {text[position:]!r}; {hint}")
        number, unit = match.group(1), match.group(2)
        rank = _UNIT_ORDER.index(unit)
        if rank <= last_rank:
            raise DurationError(
                f"{what}: cannot parse {text!r}: each unit at most once, largest first (e.g. '1h30m')"
            )
        last_rank = rank
        total += int(number) * _UNIT_MS[unit]
        position = match.end()
    return total
