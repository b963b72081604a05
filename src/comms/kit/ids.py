"""Type-prefixed, time-ordered ids: ``log_`` + 12 hex digits of Unix milliseconds + 20 hex digits.

The 80 low bits start at a random value and count up within one call of :func:`new_ids`, so the
ids of one bulk are strictly increasing (sortable like ULIDs) and cost one f-string each: a
100,000-recipient batch needs 100,000 of them on the request path.
"""

from __future__ import annotations

import secrets
import time

_RANDOM_BITS = 80
_RANDOM_LIMIT = 1 << _RANDOM_BITS


def new_id(prefix: str) -> str:
    return new_ids(prefix, 1)[0]


def new_ids(prefix: str, count: int) -> list[str]:
    millis = time.time_ns() // 1_000_000
    # Leave room to count up without wrapping into the next millisecond's space.
    start = secrets.randbits(_RANDOM_BITS - 1)
    if start + count >= _RANDOM_LIMIT:  # pragma: no cover - needs count > 2**79
        raise ValueError("too many ids in one call")
    head = f"{prefix}_{millis:012x}"
    return [f"{head}{n:020x}" for n in range(start, start + count)]


def id_has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 33
