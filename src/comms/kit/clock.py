"""The one clock. Time is UTC inside; tests move it through :func:`set_clock`."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

_now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def utcnow() -> datetime:
    return _now()


def set_clock(fn: Callable[[], datetime] | None) -> None:
    global _now
    _now = fn or (lambda: datetime.now(UTC))


def isoformat(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, second precision as the contract's examples show."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch (the queue's ordering key is kept in this unit)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


# RFC 3339 section 5.6 date-time (a space for the "T" as its note allows); Python's fromisoformat
# alone also takes "2026-04-15", "20260415T100000Z" or no offset at all.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


class NotRfc3339(ValueError):
    """Not an RFC 3339 date-time; ``missing_offset``: only its time zone offset (or Z) is missing."""

    def __init__(self, missing_offset: bool) -> None:
        super().__init__("missing time zone offset" if missing_offset else "not an RFC 3339 timestamp")
        self.missing_offset = missing_offset


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 date-time (``2026-04-15T10:00:00Z``, ``...+08:00``, fractions of a second) in
    UTC; NotRfc3339 for anything else, a date-time without an offset included."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise NotRfc3339(False)
    if match["offset"] is None:
        raise NotRfc3339(True)
    text = value[:-1] + "+00:00" if match["offset"] in ("Z", "z") else value
    leap = text[14:19] == "59:60"  # a leap second (23:59:60Z): Python's datetime has none
    if leap:
        text = text[:17] + "59" + text[19:]
    if "." in text:  # Python reads at most 6 digits of a fraction: keep the microseconds
        head, _, rest = text.partition(".")
        digits = len(rest) - 6  # the offset is 6 characters
        text = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text).astimezone(UTC)
        # read as the instant right after it, the next minute's first
        return parsed.replace(microsecond=0) + timedelta(seconds=1) if leap else parsed
    except (ValueError, OverflowError):  # Feb 30, hour 25; past year 9999 or before year 1 in UTC
        raise NotRfc3339(False) from None
