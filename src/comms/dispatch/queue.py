"""The message table as a work queue: claim due rows with a lease, complete only rows still held.

On PostgreSQL the claim's inner SELECT takes ``FOR UPDATE SKIP LOCKED``, so any number of
workers share the work without blocking each other; on SQLite there is one dispatcher per
database and ``BEGIN IMMEDIATE`` serializes it against the API's writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any

import msgspec
from sqlalchemy import bindparam, func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.events.service import EVENT_COLUMNS, tell_changed_rows
from comms.kit.clock import epoch_ms
from comms.kit.db import UTCDateTime, is_sqlite, raw_datetime
from comms.messages.fairness import FAIR_HORIZON_MS, rank_of
from comms.messages.schemas import CATEGORY_PRIORITY
from comms.models import CLAIMABLE_SQL, SENDING_SQL, Message


# Per-message values: not frozen, because a frozen dataclass is built through object.__setattr__
# per field (measured 2.6 µs against 0.23 µs for 12 fields) and a few are built per message
# sent. They are never changed after construction.
@dataclass(slots=True)
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
    # The route of an earlier attempt, kept so a possible duplicate can be reconciled there.
    provider: str | None = None
    provider_account_id: str | None = None
    deferrals: int = 0  # by the provider's flow control so far


_RETURNING = (  # ClaimedMessage's fields, in its order
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
    Message.provider,
    Message.provider_account_id,
    Message.deferrals,
)


_LEVELS = sorted(set(CATEGORY_PRIORITY.values()))


@cache
def _claim_statement(level: int, skip_locked: bool) -> Any:
    """The claim of one priority level, built once (building it cost more CPU than running it:
    the express lane claims every time a code is accepted)."""
    due = (
        select(Message.id)
        .where(
            CLAIMABLE_SQL,
            Message.priority == level,
            Message.queue_rank <= bindparam("horizon"),
            Message.due_at <= bindparam("now"),
        )
        .order_by(Message.queue_rank)
        .limit(bindparam("limit"))
    )
    if skip_locked:
        due = due.with_for_update(skip_locked=True)
    return (
        update(Message)
        .where(Message.id.in_(due.scalar_subquery()))
        .values(
            status="sending",
            lease_owner=bindparam("owner"),
            lease_until=bindparam("until"),
            attempts=Message.attempts + 1,
            updated_at=bindparam("now"),
        )
        .returning(*_RETURNING)
        .execution_options(synchronize_session=False)
    )


async def claim_due(
    session: AsyncSession,
    worker_id: str,
    limit: int,
    now: datetime,
    lease: timedelta,
    max_priority: int | None = None,
) -> list[ClaimedMessage]:
    """Lease up to ``limit`` due messages, most urgent category first; ``max_priority`` keeps
    the claim to the urgent ones (the express lane claims verification codes only).

    One statement per priority level, most urgent first, until ``limit`` is reached: with the
    priority fixed, ``ix_messages_claim`` (priority, queue_rank) is read as one range that ends at
    now + FAIR_HORIZON_MS, so rows scheduled for later are never read."""
    params = {
        "horizon": epoch_ms(now) + FAIR_HORIZON_MS,
        "now": now,
        "owner": worker_id,
        "until": now + lease,
    }
    skip_locked = not is_sqlite(session)
    claimed: list[ClaimedMessage] = []
    for level in _LEVELS:
        if len(claimed) >= limit or (max_priority is not None and level > max_priority):
            break
        statement = _claim_statement(level, skip_locked)
        rows: Sequence[tuple[Any, ...]] = (
            await session.execute(statement, {**params, "limit": limit - len(claimed)})
        ).all()
        # _RETURNING lists the fields in ClaimedMessage's order: a row is its positional arguments.
        claimed.extend(ClaimedMessage(*row) for row in rows)
    # Codes first within the batch too, so they ride in the first provider call.
    claimed.sort(key=lambda m: (CATEGORY_PRIORITY.get(m.category, 9), m.id))  # type: ignore[call-overload]
    return claimed


async def due_stats(session: AsyncSession, now: datetime) -> tuple[int, datetime | None]:
    """How many claimable messages are due, and the oldest due time among them."""
    row = (
        await session.execute(
            select(func.count(), func.min(Message.due_at)).where(CLAIMABLE_SQL, Message.due_at <= now)
        )
    ).one()
    return int(row[0] or 0), row[1]


async def next_due_at(session: AsyncSession) -> datetime | None:
    """When the earliest claimable row falls due: the lowest rank of each priority level (the
    first row of every batch ranks at its due time; one index probe per level)."""
    firsts = []
    for level in sorted(set(CATEGORY_PRIORITY.values())):
        first = await session.scalar(
            select(func.min(Message.queue_rank)).where(CLAIMABLE_SQL, Message.priority == level)
        )
        if first is not None:
            firsts.append(int(first))
    return datetime.fromtimestamp(min(firsts) / 1000, UTC) if firsts else None


# Outcome fields, in the order both statements below read them.
OUTCOME_FIELDS = (
    "id",
    "status",
    "error",
    "provider",
    "account",
    "pmid",
    "response",
    "content",
    "segments",
    "variables",
    "sent_at",
    "due_at",
    "rank",
    "possible_duplicate",
    "deferrals",
    "attempts",
)
_SET = """status = {status}, error = {error}, provider = u.provider, provider_account_id = u.account,
    provider_message_id = u.pmid, response = u.response, content = u.content, segments = u.segments,
    variables = {variables}, sent_at = u.sent_at, due_at = u.due_at, queue_rank = u.rank,
    possible_duplicate = u.possible_duplicate, deferrals = u.deferrals, lease_owner = NULL,
    lease_until = NULL, updated_at = :now,
    attempts = CASE WHEN {status} = 'deferred' THEN messages.attempts - 1 ELSE messages.attempts END"""
_SOURCE_SQLITE = f"""(SELECT {", ".join(f"value->>{i} AS {name}" for i, name in enumerate(OUTCOME_FIELDS))}
    FROM json_each(:rows)) AS u"""
_SOURCE_PG = """json_to_recordset(CAST(:rows AS json)) AS u(id text, status text, error text, provider text,
    account text, pmid text, response text, content text, segments int, variables json,
    sent_at timestamptz, due_at timestamptz, rank bigint, possible_duplicate boolean, deferrals int,
    attempts int)"""
# The usual case, on a plain equality the planner handles well on any table size. The attempt
# number is the claim's own (each claim adds one): the owner alone would not tell this claim from
# a later one of the same process (the reaper re-queued the row while this send was slow, the
# same worker claimed it again), whose outcome, flagged possible_duplicate, must be the one kept.
_WHERE = (
    "WHERE messages.id = u.id AND messages.lease_owner = :owner AND messages.status = '{status}'"
    " AND messages.attempts = u.attempts"
)


def _complete_statement(source: str, pg: bool, early_receipt: bool, returning: bool = False) -> Any:
    variables = "u.variables::text" if pg else "u.variables"
    if early_receipt:
        # A receipt beat the provider's own answer (a fast vendor's callback): the row is already
        # delivered/undelivered and keeps that status; the send's details are still recorded.
        set_ = _SET.format(status="messages.status", error="messages.error", variables=variables)
        where = _WHERE.format(status="sending").replace(
            "messages.status = 'sending'", "messages.status IN ('delivered', 'undelivered')"
        )
    else:
        set_ = _SET.format(status="u.status", error="u.error", variables=variables)
        where = _WHERE.format(status="sending") + (" RETURNING messages.id" if returning else "")
    return text(f"UPDATE messages SET {set_} FROM {source} {where}").bindparams(
        bindparam("now", type_=UTCDateTime())
    )


_COMPLETE = {
    (pg, early): _complete_statement(_SOURCE_PG if pg else _SOURCE_SQLITE, pg, early)
    for pg in (False, True)
    for early in (False, True)
}
_COMPLETE_RETURNING = {
    pg: _complete_statement(_SOURCE_PG if pg else _SOURCE_SQLITE, pg, False, True) for pg in (False, True)
}
_encode = msgspec.json.Encoder().encode


async def complete(
    session: AsyncSession,
    owner: str,
    now: datetime,
    outcomes: Sequence[dict[str, Any]],
    ids_set: bool = False,
) -> set[str]:
    """Record outcomes in one statement; rows whose lease this worker lost are left alone.
    With ``ids_set``, returns the ids whose status was set (the events to tell are of these
    only); without, an empty set (the ids cost a little to send back, and most callers have no
    use for them).

    The outcomes travel as one JSON parameter (``json_each`` on SQLite, ``json_to_recordset`` on
    PostgreSQL): binding 13 values per row through the driver cost more than the send itself.
    Rows a receipt already moved on (rare) get a second statement that keeps their status.
    """
    if not outcomes:
        return set()
    if "attempts" not in outcomes[0]:  # on PostgreSQL a missing key would match no row, silently
        raise ValueError("an outcome must carry the claim's attempt number")
    pg = not is_sqlite(session)
    # PostgreSQL's json_to_recordset reads objects; SQLite's json_each reads arrays (smaller).
    rows: Any = outcomes if pg else [[o[name] for name in OUTCOME_FIELDS] for o in outcomes]
    payload = _encode(rows)
    params = {"rows": payload.decode(), "owner": owner, "now": now}
    if ids_set:
        updated = set((await session.execute(_COMPLETE_RETURNING[pg], params)).scalars())
        count = len(updated)
    else:
        updated, result = set(), await session.execute(_COMPLETE[(pg, False)], params)
        count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count < len(outcomes):
        await session.execute(_COMPLETE[(pg, True)], params)
    return updated


@lru_cache(maxsize=64)  # a batch's rows share one `now`: formatted once, not once per row
def outcome_time(value: datetime | None, sqlite: bool) -> str | None:
    """A timestamp as the outcome payload carries it (SQLite's stored text form, or ISO 8601)."""
    if value is None:
        return None
    return str(raw_datetime(value, True)) if sqlite else value.isoformat()


async def release_expired_leases(session: AsyncSession, now: datetime, limit: int = 1000) -> int:
    """Rows whose worker died mid-send: the request may or may not have reached the provider.

    The first time, re-queue them flagged ``possible_duplicate`` (providers that can, reconcile
    or send idempotently by log id); a row that was already re-sent once ends ``unknown``.
    """
    expired = select(Message.id).where(SENDING_SQL, Message.lease_until < now).limit(limit)
    if not is_sqlite(session):
        expired = expired.with_for_update(skip_locked=True)
    ids = list((await session.scalars(expired)).all())
    if not ids:
        return 0
    await _give_back(session, (Message.id.in_(ids), Message.status == "sending"), now)
    return len(ids)


async def extend_leases(
    session: AsyncSession, ids: Sequence[str], owner: str, now: datetime, lease: timedelta
) -> int:
    """The heartbeat: push out the lease of rows this worker still holds. Returns how many."""
    result = await session.execute(
        update(Message)
        .where(Message.id.in_(ids), Message.lease_owner == owner, Message.status == "sending")
        .values(lease_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def release_claims(
    session: AsyncSession,
    claims: Sequence[tuple[str, int]],
    owner: str,
    now: datetime,
    unsent: Sequence[str] = (),
) -> None:
    """Give back rows this worker claimed and is abandoning (stopped mid-send): ``claims`` are
    (id, the claim's attempt number), so a later claim of the same row (the reaper took it back,
    this worker claimed it again in another task) is left to its own holder. A request may have
    left, so they are handled as the reaper handles them: flagged ``possible_duplicate`` and
    re-queued the first time, ``unknown`` when they were already re-sent once (never a third send).
    ``unsent``: those of them no request was made for yet: re-queued as they were, this attempt
    not counted."""
    untouched = set(unsent)
    held_now = (Message.lease_owner == owner, Message.status == "sending")
    mine = [claim for claim in claims if claim[0] not in untouched]
    if fresh := [claim for claim in claims if claim[0] in untouched]:
        await session.execute(
            update(Message)
            .where(tuple_(Message.id, Message.attempts).in_(fresh), *held_now)
            .values(
                status="queued",
                lease_owner=None,
                lease_until=None,
                due_at=now,
                queue_rank=rank_of(now),
                attempts=Message.attempts - 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    if mine:
        await _give_back(session, (tuple_(Message.id, Message.attempts).in_(mine), *held_now), now)


async def _give_back(session: AsyncSession, held: tuple[Any, ...], now: datetime) -> None:
    """The rule for claimed rows whose request may or may not have left (a dead worker, a stop
    past the drain): re-queued at once, flagged ``possible_duplicate``, the first time; a row that
    already was a possible duplicate ends ``unknown`` (never a third send)."""
    released = {"lease_owner": None, "lease_until": None, "due_at": now, "updated_at": now}
    unknown = await session.execute(
        update(Message)
        .where(*held, Message.possible_duplicate.is_(True))
        # due_at: when it became unknown (the re-check asks about it for UNKNOWN_WINDOW from here)
        .values(status="unknown", error="outcome unknown: interrupted twice while sending", **released)
        .returning(*EVENT_COLUMNS)  # few rows (interrupted twice): their event is told
        .execution_options(synchronize_session=False)
    )
    await tell_changed_rows(session, unknown.all(), now)
    await session.execute(
        update(Message)
        .where(*held)
        .values(
            status="queued",
            possible_duplicate=True,
            queue_rank=rank_of(now),
            error="a worker stopped mid-send; re-sent once, may be a duplicate",
            **released,
        )
        .execution_options(synchronize_session=False)
    )


async def unknown_to_recheck(
    session: AsyncSession, now: datetime, window: timedelta, every: timedelta, limit: int = 100
) -> list[tuple[ClaimedMessage, str | None]]:
    """``unknown`` rows that became unknown within the last ``window`` (their ``due_at``) and were
    not looked at for ``every`` (their ``updated_at``, bumped at each look): with the account that
    carried them, for a reconciliation with that provider. After ``window`` they stay unknown."""
    rows = (
        await session.execute(
            select(*_RETURNING)
            .where(
                text("status = 'unknown'"),  # as written in ix_messages_unknown (see CLAIMABLE_SQL)
                Message.updated_at >= now - window,  # bounds the index range
                Message.updated_at < now - every,
                Message.due_at >= now - window,
            )
            .order_by(Message.updated_at)
            .limit(limit)
        )
    ).all()
    return [(ClaimedMessage(**row._asdict()), row.provider_account_id) for row in rows]


async def settle_unknown(session: AsyncSession, now: datetime, outcomes: Sequence[dict[str, Any]]) -> None:
    """Apply what the providers said of ``unknown`` rows (guarded: only rows still unknown); a
    row moved on is told to its tenant's event webhook."""
    moved = []
    for outcome in outcomes:
        result = await session.execute(
            update(Message)
            .where(Message.id == outcome["id"], Message.status == "unknown")
            .values(**{k: v for k, v in outcome.items() if k != "id"}, updated_at=now)
            .returning(*EVENT_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        if row is not None and outcome.get("status"):
            moved.append(row)
    await tell_changed_rows(session, moved, now)
