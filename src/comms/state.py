"""Process-wide state hung on the FastAPI app: settings, database, secret box, dispatcher wake-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from comms.config import Settings
from comms.kit.db import Database
from comms.kit.ratelimit import RateLimiter
from comms.kit.secretbox import SecretBox


@dataclass
class AppState:
    settings: Settings
    db: Database
    secrets: SecretBox
    limiter: RateLimiter
    # Called after a commit that made work due now; wakes the in-process dispatcher (or NOTIFYs).
    wake_dispatcher: Callable[[], None] = field(default=lambda: None)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.comms
    return state
