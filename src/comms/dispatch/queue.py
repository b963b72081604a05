"""The message table as a work queue: claim due rows with a lease, complete only rows still held.

On PostgreSQL the claim's inner SELECT takes ``FOR UPDATE SKIP LOCKED``, so any number of
workers share the work without blocking each other; on SQLite there is one dispatcher per
database and ``BEGIN IMMEDIATE`` serializes it against the API's writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.kit.db import is_sqlite
from comms.models import CLAIMABLE, Message


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: str
    tenant_id: str
    batch_id: str
    channel: str
    category: str
    recipient: str
    recipient_key: str
    variables: dict[str, str] | None
    attempts: int
    possible_duplicate: bool


_RETURNING = (
    Message.id,
    Message.tenant_id,
    Message.batch_id,
    Message.channel,
    Message.category,
    Message.recipient,
    Message.recipient_key,
    Message.variables,
    Message.attempts,
    Message.possible_duplicate,
)


async def claim_due(
    session: AsyncSession, worker_id: str, limit: int, now: datetime, lease: timedelta
) -> list[ClaimedMessage]:
    due = (
        select(Message.id)
        .where(Message.status.in_(CLAIMABLE), Message.due_at <= now)
        .order_by(Message.priority, Message.due_at)
        .limit(limit)
    )
    if not is_sqlite(session):
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(Message)
        .where(Message.id.in_(due.scalar_subquery()))
        .values(
            status="sending",
            lease_owner=worker_id,
            lease_until=now + lease,
            attempts=Message.attempts + 1,
            updated_at=now,
        )
        .returning(*_RETURNING)
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(stmt)).all()
    claimed = [ClaimedMessage(**row._asdict()) for row in rows]
    claimed.sort(key=lambda m: m.id)
    return claimed


async def next_due_at(session: AsyncSession) -> datetime | None:
    return await session.scalar(select(func.min(Message.due_at)).where(Message.status.in_(CLAIMABLE)))


_TABLE = cast(Table, Message.__table__)
# Core (not ORM) UPDATE, so a list of parameter sets runs as one executemany.
_COMPLETE = (
    update(_TABLE)
    .where(
        and_(
            _TABLE.c.id == bindparam("b_id"),
            _TABLE.c.lease_owner == bindparam("b_owner"),
            _TABLE.c.status == "sending",
        )
    )
    .values(
        status=bindparam("b_status"),
        error=bindparam("b_error"),
        provider=bindparam("b_provider"),
        provider_account_id=bindparam("b_account"),
        provider_message_id=bindparam("b_pmid"),
        response=bindparam("b_response"),
        content=bindparam("b_content"),
        segments=bindparam("b_segments"),
        variables=bindparam("b_variables"),
        sent_at=bindparam("b_sent_at"),
        due_at=bindparam("b_due_at"),
        possible_duplicate=bindparam("b_possible_duplicate"),
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("b_now"),
    )
)


async def complete(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Record outcomes; a row whose lease this worker lost (reaped, reclaimed) is left alone."""
    if rows:
        conn = await session.connection()
        await conn.execute(_COMPLETE, list(rows))


async def release_expired_leases(session: AsyncSession, now: datetime, limit: int = 1000) -> int:
    """Rows whose worker died mid-send: the request may or may not have reached the provider.

    The first time, re-queue them flagged ``possible_duplicate`` (providers that can, reconcile
    or send idempotently by log id); a row that was already re-sent once ends ``unknown``.
    """
    expired = select(Message.id).where(Message.status == "sending", Message.lease_until < now).limit(limit)
    if not is_sqlite(session):
        expired = expired.with_for_update(skip_locked=True)
    ids = list((await session.scalars(expired)).all())
    if not ids:
        return 0
    await session.execute(
        update(Message)
        .where(Message.id.in_(ids), Message.possible_duplicate.is_(False))
        .values(
            status="queued",
            possible_duplicate=True,
            due_at=now,
            lease_owner=None,
            lease_until=None,
            error="a worker stopped mid-send; re-sent once, may be a duplicate",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Message)
        .where(Message.id.in_(ids), Message.status == "sending")
        .values(
            status="unknown",
            lease_owner=None,
            lease_until=None,
            error="outcome unknown: interrupted twice while sending",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return len(ids)


async def release_claims(session: AsyncSession, ids: Sequence[str], owner: str, now: datetime) -> None:
    """Give back rows this worker claimed but will not send (shutdown): no attempt was made."""
    if not ids:
        return
    await session.execute(
        update(Message)
        .where(Message.id.in_(ids), Message.lease_owner == owner, Message.status == "sending")
        .values(
            status="queued",
            lease_owner=None,
            lease_until=None,
            attempts=Message.attempts - 1,
            due_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
