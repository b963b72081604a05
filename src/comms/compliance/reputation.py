"""The complaint-rate breaker (COMPLIANCE.md M6): Gmail wants spam complaints under 0.10% and cuts
off senders above 0.30%, so a tenant whose complaint rate over the last 30 days reaches its
threshold (default 0.2%, with at least ``complaint_rate_min_volume`` emails sent) has its
marketing email paused until the rate falls again. Transactional and verification mail go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from comms import metrics
from comms.compliance.service import COMPLAINT_EVENT
from comms.compliance.settings import TenantSettings
from comms.kit.ids import first_id_at
from comms.models import AuditEvent, Message

WINDOW = timedelta(days=30)
CACHE_SECONDS = 60.0
_cache: dict[str, tuple[float, Reputation]] = {}


@dataclass(frozen=True, slots=True)
class Reputation:
    complaints: int
    sent: int

    @property
    def rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0


async def email_reputation(session: AsyncSession, tenant_id: str, now: datetime) -> Reputation:
    cached = _cache.get(tenant_id)
    if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    since = now - WINDOW
    # Log ids start with their creation time, so "created in the window" is a range on the
    # (tenant_id, id) index instead of a scan of the tenant's whole history.
    first_id = first_id_at("log", since)
    sent = await session.scalar(
        select(func.count())
        .select_from(Message)
        .where(
            Message.tenant_id == tenant_id,
            Message.id >= first_id,
            Message.channel == "email",
            Message.status.in_(("sent", "delivered", "undelivered")),
        )
    )
    # Complaints as events (compliance.service.suppress), not suppression rows: a row can be
    # deleted, or already exist from an older unsubscribe, and the complaint still happened.
    complaints = await session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.tenant_id == tenant_id,
            AuditEvent.id >= first_id_at("aud", since),
            AuditEvent.action == COMPLAINT_EVENT,
        )
    )
    reputation = Reputation(int(complaints or 0), int(sent or 0))
    _cache[tenant_id] = (time.monotonic(), reputation)
    metrics.COMPLAINT_RATE.labels(tenant_id).set(reputation.rate)
    return reputation


def marketing_paused(reputation: Reputation, settings: TenantSettings) -> bool:
    return (
        reputation.sent >= settings.complaint_rate_min_volume
        and reputation.rate >= settings.complaint_rate_threshold
    )


def forget(tenant_id: str) -> None:
    """Drop the cached figure (tests, and after a settings change)."""
    _cache.pop(tenant_id, None)
