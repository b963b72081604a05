"""Storage limitation (GDPR Art. 5(1)(e), PIPL Art. 19; COMPLIANCE.md P4).

Rendered bodies and variables are purged from the log after the tenant's
``content_retention_days`` (default 30): status, times, provider answers and the (masked-on-read)
recipient stay, so the log still says what happened to whom. After ``log_retention_days``
(default 365) the recipient goes too: the item keeps its masked form and a salted hash of it, so
it still counts in statistics and an erasure request still finds it, but it no longer says to whom
(nor does the tenant's ``user_id`` on the item and its batch).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance.addresses import address_hash, scrub_address
from comms.compliance.settings import load_settings
from comms.kit.db import Database
from comms.kit.ids import first_id_at
from comms.kit.masking import ANONYMIZED_KEY_PREFIX, mask_recipient
from comms.messages.status import PENDING, Status
from comms.models import Batch, Message, ReceiptEvent, Tenant

_IN_FLIGHT = sorted({*PENDING, Status.SENDING})
# Literal (an executemany takes no expanding IN parameter); the statuses are our own constants.
_FINISHED_SQL = text(f"status NOT IN ({', '.join(repr(str(s)) for s in _IN_FLIGHT)})")


async def purge_expired_content(session: AsyncSession, now: datetime) -> int:
    """Returns how many log items lost their content."""
    purged = 0
    tenants = (await session.execute(select(Tenant.id, Tenant.settings))).all()
    for tenant_id, raw_settings in tenants:
        settings = load_settings(raw_settings)
        # Content never outlives the recipient it was for.
        days = min(settings.content_retention_days, settings.log_retention_days)
        cutoff = now - timedelta(days=days)
        purged += await _in_chunks(
            session,
            Message.id,
            (
                Message.tenant_id == tenant_id,
                # ids are made just before their row's created_at: a bound on the index walked
                Message.id < first_id_at("log", cutoff + ID_SLACK),
                Message.created_at < cutoff,
                Message.status.not_in(_IN_FLIGHT),
                (Message.content.is_not(None)) | (Message.variables.is_not(None)),
            ),
            {"content": None, "variables": None},
        )
        await session.execute(
            update(Batch)
            .where(Batch.tenant_id == tenant_id, Batch.created_at < cutoff)
            .where(
                ~select(Message.id)
                .where(Message.batch_id == Batch.id, Message.status.in_(_IN_FLIGHT))
                .exists()
            )
            .values(variables={})
            .execution_options(synchronize_session=False)
        )
        await _in_chunks(
            session,
            ReceiptEvent.id,
            (
                ReceiptEvent.tenant_id == tenant_id,
                ReceiptEvent.received_at < cutoff,
                ReceiptEvent.payload != "",
            ),
            {"payload": ""},
        )
    return purged


# Rows changed per statement: each statement stays well inside the database's statement timeout
# (kit/db.py) however much is due at once (the first purge after a tenant shortens its retention,
# say), instead of one UPDATE over millions of rows.
PURGE_CHUNK = 5_000
ID_SLACK = timedelta(hours=1)


async def _in_chunks(session: AsyncSession, key: Any, where: tuple[Any, ...], values: dict[str, Any]) -> int:
    """Apply ``values`` to the rows matching ``where``, PURGE_CHUNK at a time in the order of
    ``key`` (a primary key): each chunk's walk starts where the last one ended, so the whole is
    one pass over the index, not one per chunk. Returns how many rows changed."""
    changed, after = 0, ""
    table = key.class_
    while True:
        ids = list(
            await session.scalars(select(key).where(*where, key > after).order_by(key).limit(PURGE_CHUNK))
        )
        if not ids:
            return changed
        await session.execute(
            update(table).where(key.in_(ids)).values(**values).execution_options(synchronize_session=False)
        )
        changed, after = changed + len(ids), ids[-1]
        if len(ids) < PURGE_CHUNK:
            return changed


ANONYMIZE_CHUNK = 1000  # log items per transaction


class RecipientAnonymizer:
    """Replaces the recipient of log items past their tenant's ``log_retention_days``.

    Items are walked in id order (ids begin with their creation time, so "older than the cutoff"
    is a range of the ``(tenant_id, id)`` index), a chunk per transaction. Items not finished yet
    (a send scheduled far ahead) are left for a later walk. Per tenant, two places are remembered:
    where an unfinished walk goes on (the last id it read when the time ran out), and where the
    next walk begins (the first unfinished item met, else the cutoff), so later rounds neither
    walk every anonymized item again nor start over at an unfinished one. A round
    that runs out of time starts the next one with the tenant it stopped at, so one tenant's
    years of history are worked through and every other tenant still has its turn after it.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        # tenant id -> (the lowest id that may still need it, the last id read in an unfinished walk)
        self._resume: dict[str, tuple[str, str | None]] = {}
        self._stopped_at: str | None = None  # the tenant a round ran out of time with

    async def run(self, now: datetime, budget_seconds: float = 20.0) -> int:
        """Anonymize what is due, for at most about ``budget_seconds``; returns how many items."""
        deadline = time.monotonic() + budget_seconds
        async with self.db.read() as session:
            tenants = (
                await session.execute(
                    select(Tenant.id, Tenant.hash_salt, Tenant.settings).order_by(Tenant.id)
                )
            ).all()
        ids = [row[0] for row in tenants]
        first = ids.index(self._stopped_at) if self._stopped_at in ids else 0
        self._stopped_at = None
        done = 0
        for index, (tenant_id, salt, raw_settings) in enumerate([*tenants[first:], *tenants[:first]]):
            if index and time.monotonic() >= deadline:  # the first tenant gets one chunk at least
                self._stopped_at = tenant_id
                break
            cutoff_id = first_id_at(
                "log", now - timedelta(days=load_settings(raw_settings).log_retention_days)
            )
            start, after = self._resume.get(tenant_id, ("", None))
            # Where the next walk must begin: the first unfinished item met, else the cutoff. A
            # walk continued from an earlier round began at `start` (that round's first unfinished
            # item, if it met one), so the next walk begins there again.
            first_pending: str | None = (start or None) if after is not None else None
            while True:
                async with self.db.begin() as session:
                    changed, after, pending = await _anonymize_chunk(
                        session, tenant_id, salt, start, after, cutoff_id
                    )
                done += changed
                first_pending = first_pending or pending
                if after is None:  # walked up to the cutoff
                    self._resume[tenant_id] = (first_pending or cutoff_id, None)
                    break
                if time.monotonic() >= deadline:
                    # Go on from here next round (not from the unfinished item: a walk longer than
                    # a round would start over at it every round and never get further).
                    self._resume[tenant_id] = (first_pending or start, after)
                    self._stopped_at = tenant_id
                    return done
        return done


async def _anonymize_chunk(
    session: AsyncSession, tenant_id: str, salt: str, start: str, after: str | None, cutoff_id: str
) -> tuple[int, str | None, str | None]:
    """One chunk of ids from ``start`` on, past ``after`` (the last id of the chunk before), up to
    ``cutoff_id``: (items anonymized, the last id read or None when the range is exhausted, the
    first unfinished item met or None)."""
    query = (
        select(
            Message.id, Message.channel, Message.recipient, Message.recipient_key, Message.status,
            Message.error, Message.response, Message.batch_id,
        )
        .where(
            Message.tenant_id == tenant_id,
            Message.id >= start,
            Message.id > (after or ""),
            Message.id < cutoff_id,
            ~Message.recipient_key.startswith(ANONYMIZED_KEY_PREFIX, autoescape=True),
        )
        .order_by(Message.id)
        .limit(ANONYMIZE_CHUNK)
    )  # fmt: skip
    # Read without locks: the update below is guarded (finished, not anonymized yet), so an item
    # that a claim or a receipt changes meanwhile is left alone, and two workers' rounds over the
    # same items write the same values once. Its row locks are taken in id order, one at a time.
    rows = (await session.execute(query)).all()
    pending = next((row.id for row in rows if row.status in _IN_FLIGHT), None)
    finished = [row for row in rows if row.status not in _IN_FLIGHT]
    values = [_anonymized(row, salt) for row in finished]
    finished_batches = {row.batch_id for row in finished}
    if values:
        table = cast(Table, Message.__table__)  # Core: one executemany (ORM updates want keys)
        await session.execute(
            update(table)
            .where(
                table.c.id == bindparam("b_id"),
                _FINISHED_SQL,
                ~table.c.recipient_key.startswith(ANONYMIZED_KEY_PREFIX, autoescape=True),
            )
            .values(
                recipient=bindparam("b_recipient"),
                recipient_key=bindparam("b_key"),
                error=bindparam("b_error"),
                response=bindparam("b_response"),
                content=None,
                variables=None,
                # The tenant's own identifier of the person (CONTRACT: `user_id`) identifies them
                # as well as the address does.
                user_id=None,
            )
            .execution_options(synchronize_session=False),
            values,
        )
        await session.execute(
            update(Batch)
            .where(
                Batch.id.in_(finished_batches),
                Batch.user_id.is_not(None),
                # A batch with items still to go keeps it until they have gone (and are anonymized).
                ~exists().where(Message.batch_id == Batch.id, Message.status.in_(_IN_FLIGHT)),
            )
            .values(user_id=None)
            .execution_options(synchronize_session=False)
        )
    last = rows[-1].id if len(rows) == ANONYMIZE_CHUNK else None
    return len(values), last, pending


def _anonymized(row: Any, salt: str) -> dict[str, Any]:
    masked = mask_recipient(row.channel, row.recipient)
    return {
        "b_id": row.id,
        "b_recipient": masked,
        "b_key": ANONYMIZED_KEY_PREFIX + address_hash(salt, row.channel, row.recipient_key),
        # Provider answers and errors may quote the address ("invalid number +86138...").
        "b_error": scrub_address(row.error, row.channel, row.recipient, masked, {row.recipient_key}),
        "b_response": scrub_address(row.response, row.channel, row.recipient, masked, {row.recipient_key}),
    }
