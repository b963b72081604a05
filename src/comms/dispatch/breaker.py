"""A circuit breaker per provider account.

Closed: calls go through. After ``threshold`` consecutive failed calls it opens: the account is
skipped (the next one in priority order takes over) for ``cooldown`` seconds. Then it is
half-open: ONE call goes through as a probe (every other caller is still turned away until it
reports); success closes it, failure opens it again. A probe that never reports (its caller
crashed) is given up after another ``cooldown``.
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
    probe_since: float | None = None  # when the half-open state's probe was let through

    def state(self, now: float | None = None) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        now = time.monotonic() if now is None else now
        return BreakerState.HALF_OPEN if now - self.opened_at >= self.cooldown else BreakerState.OPEN

    def allows(self, now: float | None = None) -> bool:
        """Whether a call may go now; in the half-open state this lets the one probe through."""
        now = time.monotonic() if now is None else now
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self.probe_since is not None and now - self.probe_since < self.cooldown:
            return False  # a probe is out: wait for its word
        self.probe_since = now
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probe_since = None

    def failed(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.failures += 1
        if self.state(now) is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = now
        self.probe_since = None
