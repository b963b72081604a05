"""Type-prefixed, time-ordered ids: ``log_`` + 12 hex digits of Unix milliseconds + 20 hex digits.

The 80 low bits start at a random value and count up within one call of :func:`new_ids`, so the
ids of one bulk are strictly increasing (sortable like ULIDs) and cost one f-string each: a
100,000-recipient batch needs 100,000 of them on the request path.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from comms.kit.clock import unix_time

_RANDOM_BITS = 80
_RANDOM_LIMIT = 1 << _RANDOM_BITS


def new_id(prefix: str) -> str:
    return new_ids(prefix, 1)[0]


def new_ids(prefix: str, count: int) -> list[str]:
    # The service's clock (the database server's on PostgreSQL), as created_at: /logs bounds its
    # date filters by ids, which must not drift from created_at on a machine whose clock is off.
    millis = int(unix_time() * 1000)
    # Leave room to count up without wrapping into the next millisecond's space.
    start = secrets.randbits(_RANDOM_BITS - 1)
    if start + count >= _RANDOM_LIMIT:  # pragma: no cover - needs count > 2**79
        raise ValueError("too many ids in one call")
    head = f"{prefix}_{millis:012x}"
    return [f"{head}{n:020x}" for n in range(start, start + count)]


def id_has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 33


def id_time(value: str, prefix: str) -> datetime | None:
    """When an id of ``prefix`` was made (its first 12 hex digits are Unix milliseconds), or None
    when ``value`` is not such an id."""
    if not id_has_prefix(value, prefix):
        return None
    start = len(prefix) + 1
    try:
        return datetime.fromtimestamp(int(value[start : start + 12], 16) / 1000, UTC)
    except ValueError:
        return None


def first_id_at(prefix: str, when: datetime) -> str:
    """The lowest id of ``prefix`` made at or after ``when``: "created since" becomes a range on an
    index of ids instead of a condition on another column."""
    return f"{prefix}_{int(when.timestamp() * 1000):012x}"
