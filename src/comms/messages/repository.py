"""Log items and batches: all their SQL, scoped by tenant in one place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import BigInteger, ColumnElement, bindparam, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.events.service import EVENT_COLUMNS, subscribed_statuses, tell_changed_rows
from comms.kit.db import is_sqlite, raw_datetime
from comms.kit.ids import first_id_at, id_has_prefix
from comms.kit.masking import ANONYMIZED_KEY_PREFIX
from comms.messages.fairness import FAIR_SLICE, FAIR_STEP_MS, MAX_SLICES, rank_of
from comms.messages.status import PENDING, RETRYABLE
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
_TIMES = ("created_at", "updated_at", "due_at", "queue_rank")
_DUE = frozenset({"queued", "scheduled"})


class LogItemWriter:
    """Writes one batch's log items: rows are (id, recipient, key, status, error, variables dict,
    own due time or None).

    SQLite gets each chunk as ONE JSON parameter expanded by ``json_each`` in C, the shared columns
    bound once: about twice as fast as ``executemany`` binding 16 values per row. PostgreSQL gets
    ``COPY``. Either way it runs in the caller's transaction.

    :meth:`start` hands a chunk to the database and returns at once, so the caller can prepare the
    next chunk while this one is written; :meth:`wait` awaits it (one chunk in flight at a time,
    as a connection runs one statement at a time).
    """

    def __init__(self, session: AsyncSession, shared: LogItemConstants) -> None:
        self.session = session
        self.shared = shared
        self._pending: asyncio.Task[None] | None = None
        self._driver: Any = None
        self._sqlite = is_sqlite(session)
        self._position = 0  # of the next chunk's first row within the batch (fair-share rank)
        self._rank0 = rank_of(shared.due_at)

    async def open(self) -> None:
        conn = await self.session.connection()
        raw = await conn.get_raw_connection()
        self._driver = raw.driver_connection

    async def start(self, rows: Sequence[tuple[Any, ...]]) -> None:
        await self.wait()
        if not rows:
            return
        write = self._sqlite_write(rows, self._position) if self._sqlite else self._copy(rows, self._position)
        self._position += len(rows)
        self._pending = asyncio.ensure_future(write)
        await asyncio.sleep(0)  # let the write reach the driver before the caller gets busy

    async def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def settle(self) -> None:
        """The caller failed part-way: let a write in flight end (one chunk, milliseconds) before
        the transaction is rolled back. Left running, it would still hold the connection when
        the pool took it back, and the requests after would find it mid-transaction."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)

    async def _sqlite_write(self, rows: Sequence[tuple[Any, ...]], position: int) -> None:
        shared = self.shared
        params: dict[str, Any] = {c: getattr(shared, c) for c in _SHARED}
        params.update(
            created=raw_datetime(shared.created_at, True),
            due=raw_datetime(shared.due_at, True),
            rank0=self._rank0,
            position=position,
        )
        # The usual row (due with the batch, no error, no variables of its own, recipient already
        # in key form) travels as one string "<id><recipient>" that SQL cuts apart: no JSON array
        # per row to parse eight times over (SQLite 3.40 has no JSON parse cache). ~30% faster.
        status = rows[0][3]
        simple = [row for row in rows if _is_simple(row, status)]
        if simple:
            packed = _json_encode([f"{row[0]}{row[1]}" for row in simple]).decode()
            await self._driver.execute(_SQLITE_INSERT_SIMPLE, {**params, "status": status, "rows": packed})
        if len(simple) < len(rows):
            rest = [(i, row) for i, row in enumerate(rows) if not _is_simple(row, status)]
            encoded = _json_encode(
                [_sqlite_due(row, position + i) for i, row in rest]
                if _has_own_due([row for _, row in rest])
                else [row for _, row in rest]
            ).decode()
            await self._driver.execute(_SQLITE_INSERT, {**params, "rows": encoded})

    async def _copy(self, rows: Sequence[tuple[Any, ...]], position: int) -> None:
        shared = self.shared
        constants = (*(getattr(shared, c) for c in _SHARED), shared.created_at, shared.created_at)
        due, rank0, not_due = shared.due_at, self._rank0, (None, None)
        dumps = _json_encode
        records = [
            (
                *row[:5],
                dumps(row[5]).decode() if row[5] else None,
                *constants,
                *(
                    # held back (quiet hours): spread from its own due time, as the batch's
                    # others are from theirs, so its region's rows do not all rank alike
                    (row[6], rank_of(row[6], position + i))
                    if row[6] is not None
                    else (due, rank0 + min((position + i) // FAIR_SLICE, MAX_SLICES) * FAIR_STEP_MS)
                    if row[3] in _DUE
                    else not_due
                ),
            )
            for i, row in enumerate(rows)
        ]
        if len(records) <= _SMALL:
            # A code or a handful: one prepared INSERT is one round trip, COPY takes two.
            await self._driver.executemany(_PG_INSERT, records)
            return
        await self._driver.copy_records_to_table("messages", records=records, columns=list(_COLUMNS))


_ID_LENGTH = 36  # "log_" + 32 hex (kit/ids.py)
_COLUMNS = _VARYING + _SHARED + _TIMES
_SMALL = 16  # rows written with INSERT rather than COPY
_PLACEHOLDERS = ", ".join(f"${i + 1}" for i in range(len(_COLUMNS)))
_PG_INSERT = f"INSERT INTO messages ({', '.join(_COLUMNS)}) VALUES ({_PLACEHOLDERS})"


def _is_simple(row: tuple[Any, ...], status: str) -> bool:
    return (
        row[3] == status
        and status in _DUE
        and row[4] is None
        and not row[5]
        and row[6] is None
        and row[1] == row[2]
        and len(row[0]) == _ID_LENGTH
    )


def _has_own_due(rows: Sequence[tuple[Any, ...]]) -> bool:
    return any(row[6] is not None for row in rows)


def _sqlite_due(row: tuple[Any, ...], position: int) -> tuple[Any, ...]:
    """The row with its own due time in SQLite's stored text form, and the rank that goes with it
    (``position``: the row's within its batch)."""
    return row if row[6] is None else (*row[:6], raw_datetime(row[6], True), rank_of(row[6], position))


_SQLITE_INSERT = (
    f"INSERT INTO messages ({', '.join(_VARYING + _SHARED + _TIMES)}) "
    f"SELECT {', '.join(f'value->>{i}' for i in range(len(_VARYING)))}, "
    f"{', '.join(':' + c for c in _SHARED)}, :created, :created, "
    "COALESCE(value->>6, CASE WHEN value->>3 IN ('queued', 'scheduled') THEN :due END), "
    "COALESCE(value->>7, CASE WHEN value->>3 IN ('queued', 'scheduled') "
    f"THEN :rank0 + min((:position + key) / {FAIR_SLICE}, {MAX_SLICES}) * {FAIR_STEP_MS} END) "
    "FROM json_each(:rows)"
)


_SQLITE_INSERT_SIMPLE = (
    f"INSERT INTO messages ({', '.join(_VARYING + _SHARED + _TIMES)}) "
    f"SELECT substr(value, 1, {_ID_LENGTH}), substr(value, {_ID_LENGTH + 1}), "
    f"substr(value, {_ID_LENGTH + 1}), :status, NULL, NULL, "
    f"{', '.join(':' + c for c in _SHARED)}, :created, :created, :due, "
    f":rank0 + min((:position + key) / {FAIR_SLICE}, {MAX_SLICES}) * {FAIR_STEP_MS} "
    "FROM json_each(:rows)"
)


_ONE_OF_BATCH = select(Message.id).where(Message.batch_id == bindparam("batch_id")).limit(1)
_ID_HEAD = len("log_") + 12  # the prefix and the 12 hex digits of the milliseconds (kit/ids.py)
# How long before its row's created_at a log id may have been made: the request is read and its
# recipients normalized first (a second or two for 100,000); generously more.
ID_LEAD = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _log_id_at(when: datetime, shift: timedelta) -> str | None:
    """The lowest log id made at ``when`` + ``shift``; None where no bound is needed (before the
    first id could have been made) or possible (past the calendar's end)."""
    try:
        at = when + shift
    except OverflowError:
        return None
    return first_id_at("log", at) if at > _EPOCH else None


class MessageRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _where(self, filters: LogFilters, tenant_checked: bool = False) -> list[ColumnElement[bool]]:
        # A batch's rows are all its tenant's: once the batch is known to be the caller's, the
        # tenant condition only keeps the count from being read off ix_messages_batch_id_status
        # alone (13 ms against 270 ms for a batch of 100k in a table of 2.4M).
        where: list[ColumnElement[bool]] = [] if tenant_checked else [Message.tenant_id == self.tenant_id]
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
        # Ids are time-ordered and made a moment before their row's created_at (while the request
        # is read): a range of ids read from ix_messages_tenant_id_id bounds the rows to look at,
        # instead of every row of the tenant filtered on created_at.
        if filters.created_from:
            where.append(Message.created_at >= filters.created_from)
            if (lowest := _log_id_at(filters.created_from, -ID_LEAD)) is not None:
                where.append(Message.id >= lowest)
        if filters.created_to:
            where.append(Message.created_at <= filters.created_to)
            if (above := _log_id_at(filters.created_to, timedelta(milliseconds=1))) is not None:
                where.append(Message.id < above)
        return where

    async def list(
        self,
        filters: LogFilters,
        offset: int,
        limit: int,
        *,
        after: str | None = None,
        oldest_first: bool = False,
        count: bool = True,
    ) -> tuple[Sequence[Message], int | None, bool]:
        """(up to ``limit`` items newest first, or oldest first, how many match in all or None
        when ``count`` is off, whether more come after these). ``after``: a keyset position (a log
        id) the items come after in that order: a cursor's page, read from the index at that id
        however deep it is, where ``offset`` reads and drops every row before it."""
        checked = False
        if filters.batch_id:
            if await BatchRepository(self.session, self.tenant_id).get(filters.batch_id) is None:
                return [], (0 if count else None), False  # no such batch of this tenant's
            checked = True
        where = self._where(filters, tenant_checked=checked)
        total: int | None = None
        if count:
            total = int(
                await self.session.scalar(select(func.count()).select_from(Message).where(*where)) or 0
            )
        # The page keeps the tenant condition: it lets PostgreSQL walk ix_messages_tenant_id_id
        # backward from the range's top (0.1 ms for a page of a 100k batch). Without it, on a
        # batch its statistics had not seen yet, it chose the batch's index and sorted every row
        # of the batch for each page (85 ms).
        page = self._where(filters) if checked else where
        if filters.batch_id and total != 0:
            # A batch's ids come from one new_ids() call: they share its 16-character head (the
            # prefix and the millisecond), so the page is a short range of the primary key rather
            # than a walk of the tenant's items by id that skips every other batch's.
            sample = await self.session.scalar(_ONE_OF_BATCH, {"batch_id": filters.batch_id})
            if sample is not None and id_has_prefix(sample, "log"):
                head = sample[:_ID_HEAD]
                page = [*page, Message.id >= head, Message.id < head + "g"]  # "g" sorts after any hex digit
        if after is not None:
            page = [*page, Message.id > after if oldest_first else Message.id < after]
        order = Message.id.asc() if oldest_first else Message.id.desc()
        # One row more than asked: whether another page follows, without counting.
        rows = (
            await self.session.scalars(
                select(Message).where(*page).order_by(order).offset(offset).limit(limit + 1)
            )
        ).all()
        return rows[:limit], total, len(rows) > limit

    async def get(self, log_id: str) -> Message | None:
        message = await self.session.get(Message, log_id)
        return message if message is not None and message.tenant_id == self.tenant_id else None

    async def status_counts(self, batch_id: str) -> dict[str, int]:
        """Of a batch the caller has found to be the tenant's (BatchRepository.get): counted off
        ix_messages_batch_id_status alone, without the tenant condition (see _where)."""
        rows = await self.session.execute(
            select(Message.status, func.count()).where(Message.batch_id == batch_id).group_by(Message.status)
        )
        return {status: int(count) for status, count in rows}

    async def cancel_pending(self, batch_id: str, now: datetime) -> int:
        """Cancel the batch's waiting rows; each is told to the tenant's event webhook when it
        wants ``cancelled`` (only then are the rows read back)."""
        told = "cancelled" in (await subscribed_statuses(self.session, [self.tenant_id])).get(
            self.tenant_id, ()
        )
        statement = (
            update(Message)
            .where(
                Message.batch_id == batch_id,
                Message.tenant_id == self.tenant_id,
                # Waiting rows only: a claimed row may be on its way to the provider; the
                # dispatcher cancels it if it comes back unsent (Dispatcher._deliver).
                Message.status.in_(sorted(PENDING)),
            )
            .values(status="cancelled", error="cancelled by request", due_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if not told:
            result = await self.session.execute(statement)
            return int(result.rowcount or 0)  # type: ignore[attr-defined]
        rows = (await self.session.execute(statement.returning(*EVENT_COLUMNS))).all()
        await tell_changed_rows(self.session, rows, now)
        return len(rows)

    async def requeue_failed(self, batch_id: str, now: datetime) -> int:
        retryable = (
            Message.batch_id == batch_id,
            Message.tenant_id == self.tenant_id,
            Message.status.in_(sorted(RETRYABLE)),
            # Past log retention only the masked address is left: nothing to send to.
            ~Message.recipient_key.startswith(ANONYMIZED_KEY_PREFIX, autoescape=True),
        )
        # Ranked as a new batch's rows are (fairness.py): spread by position, so a retry of 100k
        # rows does not rank wholly ahead of a batch accepted a second later.
        numbered = (
            select(Message.id, (func.row_number().over(order_by=Message.id) - 1).label("n"))
            .where(*retryable)
            .subquery()
        )
        slices = case((numbered.c.n >= FAIR_SLICE * MAX_SLICES, MAX_SLICES), else_=numbered.c.n // FAIR_SLICE)
        result = await self.session.execute(
            update(Message)
            .where(Message.id == numbered.c.id, *retryable)
            .values(
                status="queued",
                error=None,
                due_at=now,
                queue_rank=literal(rank_of(now), BigInteger) + slices * FAIR_STEP_MS,
                updated_at=now,
                delivered_at=None,
                attempts=0,
                # A new attempt asked for by the user: not a re-send of ours, and an earlier
                # attempt's record at the provider must not be taken for this one's outcome.
                possible_duplicate=False,
                deferrals=0,
                # Nor may a late receipt about the earlier attempt (found by its vendor id, or by
                # the account that carried it) be taken for this one's.
                provider=None,
                provider_account_id=None,
                provider_message_id=None,
            )
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
