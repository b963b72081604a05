"""The queue across every tenant and worker, as an operator sees it: ``comms status``.

Every count goes through an index the dispatcher itself uses (the claim, lease and unknown partial
indexes), so it stays cheap on a table of millions of finished rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from comms.dispatch.queue import due_stats
from comms.kit.clock import isoformat
from comms.models import CLAIMABLE_SQL, SENDING_SQL, Message, Tenant

_UNKNOWN_SQL = text("status = 'unknown'")  # as the partial index ix_messages_unknown is written


@dataclass(frozen=True, slots=True)
class WorkerHold:
    """The messages one worker holds in ``sending``; ``expired``: of those, leases that ran out
    (the worker died or lost the database: the reaper takes them back)."""

    worker: str
    messages: int
    expired: int
    lease_until: datetime | None


@dataclass(frozen=True, slots=True)
class QueueStatus:
    now: datetime
    due: int  # claimable now
    oldest_due: datetime | None
    later: int  # scheduled, deferred (quiet hours, retries) or spread out: due later
    sending: int
    unknown: int  # no answer twice: looked up again where the provider can be asked
    workers: list[WorkerHold] = field(default_factory=list)
    tenants: list[tuple[str, str, int]] = field(default_factory=list)  # (id, name, due), most first

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": isoformat(self.now),
            "due": self.due,
            "oldest_due_seconds": round((self.now - self.oldest_due).total_seconds(), 1)
            if self.oldest_due
            else None,
            "later": self.later,
            "sending": self.sending,
            "expired_leases": sum(w.expired for w in self.workers),
            "unknown": self.unknown,
            "workers": [
                {
                    "worker": w.worker,
                    "messages": w.messages,
                    "expired": w.expired,
                    "lease_until": isoformat(w.lease_until),
                }
                for w in self.workers
            ],
            "tenants": [{"id": i, "name": n, "due": d} for i, n, d in self.tenants],
        }


async def queue_status(session: AsyncSession, now: datetime, top: int = 10) -> QueueStatus:
    due, oldest = await due_stats(session, now)
    claimable = int(await session.scalar(select(func.count()).select_from(Message).where(CLAIMABLE_SQL)) or 0)
    unknown = int(await session.scalar(select(func.count()).select_from(Message).where(_UNKNOWN_SQL)) or 0)
    held = (
        await session.execute(
            select(
                Message.lease_owner,
                func.count(),
                func.sum(case((Message.lease_until < now, 1), else_=0)),
                func.max(Message.lease_until),
            )
            .where(SENDING_SQL)
            .group_by(Message.lease_owner)
            .order_by(func.count().desc(), Message.lease_owner)
        )
    ).all()
    workers = [
        WorkerHold(str(owner or "?"), int(n), int(expired or 0), until) for owner, n, expired, until in held
    ]
    backlog = (
        select(Message.tenant_id, func.count().label("due"))
        .where(CLAIMABLE_SQL, Message.due_at <= now)
        .group_by(Message.tenant_id)
        .order_by(func.count().desc(), Message.tenant_id)
        .limit(top)
        .subquery()
    )
    tenants = (
        await session.execute(
            select(backlog.c.tenant_id, Tenant.name, backlog.c.due)
            .join(Tenant, Tenant.id == backlog.c.tenant_id)
            .order_by(backlog.c.due.desc(), backlog.c.tenant_id)
        )
    ).all()
    return QueueStatus(
        now=now,
        due=due,
        oldest_due=oldest,
        later=claimable - due,
        sending=sum(w.messages for w in workers),
        unknown=unknown,
        workers=workers,
        tenants=[(str(i), str(n), int(d)) for i, n, d in tenants],
    )


__all__ = ["QueueStatus", "WorkerHold", "queue_status"]
