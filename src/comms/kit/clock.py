"""The one clock. Time is UTC inside; tests move it through :func:`set_clock`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

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
