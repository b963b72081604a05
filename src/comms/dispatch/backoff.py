"""Retry delays: exponential with "equal jitter" (half fixed, half random), capped; and the
waits after a provider's flow control deferred a message."""

from __future__ import annotations

import random


def retry_delay(attempt: int, base: float, cap: float, hint: float | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``; a provider's own hint (Retry-After) wins if longer."""
    exp = min(cap, base * (2.0 ** max(0, attempt - 1)))
    delay = exp / 2 + random.uniform(0, exp / 2)
    if hint is not None:
        delay = max(delay, min(hint, cap))
    return delay


DEFAULT_DEFERRAL = 60.0  # seconds, when a provider defers a message without saying for how long
MAX_DEFERRAL_WAIT = 3600.0


def deferral_wait(retry_after: float | None, deferrals: int) -> float:
    """Seconds until a message the provider deferred ``deferrals`` times before is tried again:
    what the provider asked for (or DEFAULT_DEFERRAL; at least a second), doubled for each earlier
    deferral, at most MAX_DEFERRAL_WAIT unless the provider itself asked for longer."""
    asked = max(1.0, retry_after if retry_after is not None else DEFAULT_DEFERRAL)
    backed_off: float = asked * 2.0 ** min(deferrals, 16)
    return max(asked, min(backed_off, MAX_DEFERRAL_WAIT))
