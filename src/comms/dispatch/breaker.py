"""A circuit breaker per provider account.

Closed: calls go through. After ``threshold`` consecutive failed calls it opens: the account is
skipped (the next one in priority order takes over) for ``cooldown`` seconds. Then it is
half-open: the next call is a probe; success closes it, failure opens it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Breaker:
    threshold: int = 5
    cooldown: float = 30.0
    failures: int = 0
    opened_at: float | None = None

    def state(self, now: float | None = None) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        now = time.monotonic() if now is None else now
        return BreakerState.HALF_OPEN if now - self.opened_at >= self.cooldown else BreakerState.OPEN

    def allows(self, now: float | None = None) -> bool:
        return self.state(now) is not BreakerState.OPEN

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failed(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.failures += 1
        if self.state(now) is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = now
