"""Log items and batches: all their SQL, scoped by tenant in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.kit.db import bulk_insert, is_sqlite, raw_datetime
from comms.models import Batch, Message

_json_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class LogFilters:
    channel: str | None = None
    status: str | None = None
    recipient_key: str | None = None
    user_id: str | None = None
    batch_id: str | None = None
    template_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class LogItemConstants:
    """The columns every log item of one batch shares."""

    tenant_id: str
    batch_id: str
    channel: str
    category: str
    user_id: str | None
    template_id: str | None
    priority: int
    created_at: datetime
    due_at: datetime


_VARYING = ("id", "recipient", "recipient_key", "status", "error", "variables")
_SHARED = ("tenant_id", "batch_id", "channel", "category", "user_id", "template_id", "priority")
_TIMES = ("created_at", "updated_at", "due_at")


async def insert_log_items(
    session: AsyncSession, shared: LogItemConstants, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert one batch's log items: rows are (id, recipient, key, status, error, variables, is_due).

    SQLite gets the rows as ONE JSON parameter expanded by ``json_each`` in C, with the shared
    columns bound once: about twice as fast as ``executemany`` binding 16 values per row.
    PostgreSQL gets ``COPY``. Either way it runs in the caller's transaction.
    """
    if not rows:
        return
    if is_sqlite(session):
        created = raw_datetime(shared.created_at, True)
        due = raw_datetime(shared.due_at, True)
        picks = ", ".join(f"value->>{i}" for i in range(len(_VARYING)))
        sql = (
            f"INSERT INTO messages ({', '.join(_VARYING + _SHARED + _TIMES)}) "
            f"SELECT {picks}, {', '.join(':' + c for c in _SHARED)}, :created, :created, "
            f"CASE WHEN value->>6 THEN :due END FROM json_each(:rows)"
        )
        params = {c: getattr(shared, c) for c in _SHARED}
        params.update(created=created, due=due, rows=_json_encode(rows).decode())
        conn = await session.connection()
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute(sql, params)  # type: ignore[union-attr]
        return
    constants = (*(getattr(shared, c) for c in _SHARED), shared.created_at, shared.created_at)
    records = [row[:6] + constants + ((shared.due_at,) if row[6] else (None,)) for row in rows]
    await bulk_insert(session, "messages", _VARYING + _SHARED + _TIMES, records)


class MessageRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _where(self, filters: LogFilters) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [Message.tenant_id == self.tenant_id]
        if filters.channel:
            where.append(Message.channel == filters.channel)
        if filters.status:
            where.append(Message.status == filters.status)
        if filters.recipient_key:
            where.append(Message.recipient_key == filters.recipient_key)
        if filters.user_id:
            where.append(Message.user_id == filters.user_id)
        if filters.batch_id:
            where.append(Message.batch_id == filters.batch_id)
        if filters.template_id:
            where.append(Message.template_id == filters.template_id)
        if filters.created_from:
            where.append(Message.created_at >= filters.created_from)
        if filters.created_to:
            where.append(Message.created_at <= filters.created_to)
        return where

    async def list(self, filters: LogFilters, offset: int, limit: int) -> tuple[Sequence[Message], int]:
        where = self._where(filters)
        total = int(await self.session.scalar(select(func.count()).select_from(Message).where(*where)) or 0)
        rows = await self.session.scalars(
            select(Message).where(*where).order_by(Message.id.desc()).offset(offset).limit(limit)
        )
        return rows.all(), total

    async def get(self, log_id: str) -> Message | None:
        message = await self.session.get(Message, log_id)
        return message if message is not None and message.tenant_id == self.tenant_id else None

    async def status_counts(self, batch_id: str) -> dict[str, int]:
        rows = await self.session.execute(
            select(Message.status, func.count())
            .where(Message.batch_id == batch_id, Message.tenant_id == self.tenant_id)
            .group_by(Message.status)
        )
        return {status: int(count) for status, count in rows}

    async def cancel_pending(self, batch_id: str, now: datetime) -> int:
        result = await self.session.execute(
            update(Message)
            .where(
                Message.batch_id == batch_id,
                Message.tenant_id == self.tenant_id,
                Message.status.in_(("queued", "scheduled", "deferred")),
            )
            .values(status="cancelled", error="cancelled by request", due_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def requeue_failed(self, batch_id: str, now: datetime) -> int:
        result = await self.session.execute(
            update(Message)
            .where(
                Message.batch_id == batch_id,
                Message.tenant_id == self.tenant_id,
                Message.status.in_(("failed", "undelivered")),
            )
            .values(status="queued", error=None, due_at=now, updated_at=now, delivered_at=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class BatchRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def get(self, batch_id: str) -> Batch | None:
        batch = await self.session.get(Batch, batch_id)
        return batch if batch is not None and batch.tenant_id == self.tenant_id else None

    async def get_many(self, batch_ids: set[str]) -> dict[str, Batch]:
        if not batch_ids:
            return {}
        rows = await self.session.scalars(
            select(Batch).where(Batch.id.in_(batch_ids), Batch.tenant_id == self.tenant_id)
        )
        return {b.id: b for b in rows}
