"""The one clock. Time is UTC inside; tests move it through :func:`set_clock`.

On PostgreSQL every process follows the database server's clock (:func:`follow`, kept up by
``kit/db.py::sync_clock``): leases, due times and the reaper compare times written by processes on
other machines, and a machine whose clock runs ahead would otherwise take back live leases (sent
twice) or claim scheduled messages early. The clock then reads the server's time at the last
reading plus this machine's monotonic time since, so a step of the machine's own clock changes
nothing either.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

# (time.monotonic() when the reference clock was read, its reading in seconds since the epoch),
# once followed. Floats: the clock is read for every vendor request and every id.
_anchor: tuple[float, float] | None = None


def _service_now() -> datetime:
    return datetime.now(UTC) if _anchor is None else datetime.fromtimestamp(unix_time(), UTC)


_now: Callable[[], datetime] = _service_now


def service_now() -> datetime:
    """The followed clock, which :func:`set_clock` does not move: for times other parties check
    against the real time (a vendor's request signature, a callback's age)."""
    return _service_now()


def unix_time() -> float:
    """:func:`service_now` in seconds since the epoch (what ``time.time()`` gives on a machine
    whose clock is right). Plain arithmetic on floats: it signs every vendor request."""
    anchor = _anchor
    if anchor is None:
        return time.time()
    return anchor[1] + (time.monotonic() - anchor[0])


def utcnow() -> datetime:
    return _now()


def set_clock(fn: Callable[[], datetime] | None) -> None:
    """Tests: ``fn`` answers :func:`utcnow` until ``set_clock(None)`` gives it back."""
    global _now
    _now = fn or _service_now


def follow(reference: datetime, read_at: float) -> float:
    """From now on this process's time is ``reference`` (read when ``time.monotonic()`` was
    ``read_at``) plus the monotonic time since. Returns this machine's clock's offset from it in
    seconds (positive: the machine is ahead)."""
    global _anchor
    if reference.tzinfo is None:
        raise ValueError("the reference time must be timezone-aware")
    _anchor = (read_at, reference.timestamp())
    return offset()


def unfollow() -> None:
    """Back to this machine's own clock (SQLite: the database is on this machine)."""
    global _anchor
    _anchor = None


def following() -> bool:
    """Whether this process's time has been set from a reference clock."""
    return _anchor is not None


def offset() -> float:
    """Seconds this machine's clock is ahead of the followed one (0.0 when following none)."""
    return 0.0 if _anchor is None else time.time() - unix_time()


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
