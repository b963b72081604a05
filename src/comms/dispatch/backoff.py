"""Retry delays: exponential with "equal jitter" (half fixed, half random), capped."""

from __future__ import annotations

import random


def retry_delay(attempt: int, base: float, cap: float, hint: float | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``; a provider's own hint (Retry-After) wins if longer."""
    exp = min(cap, base * (2.0 ** max(0, attempt - 1)))
    delay = exp / 2 + random.uniform(0, exp / 2)
    if hint is not None:
        delay = max(delay, min(hint, cap))
    return delay
