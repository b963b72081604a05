"""Storage limitation (GDPR Art. 5(1)(e), PIPL Art. 19; COMPLIANCE.md P4).

Rendered bodies and variables are purged from the log after the tenant's
``content_retention_days`` (default 30): status, times, provider answers and the (masked-on-read)
recipient stay, so the log still says what happened to whom. After ``log_retention_days``
(default 365) the recipient goes too: the item keeps its masked form and a salted hash of it, so
it still counts in statistics and an erasure request still finds it, but it no longer says to whom.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

import phonenumbers
from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance.addresses import address_hash
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
        result = await session.execute(
            update(Message)
            .where(
                Message.tenant_id == tenant_id,
                Message.created_at < cutoff,
                Message.status.not_in(_IN_FLIGHT),
                (Message.content.is_not(None)) | (Message.variables.is_not(None)),
            )
            .values(content=None, variables=None)
            .execution_options(synchronize_session=False)
        )
        purged += int(result.rowcount or 0)  # type: ignore[attr-defined]
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
        await session.execute(
            update(ReceiptEvent)
            .where(
                ReceiptEvent.tenant_id == tenant_id,
                ReceiptEvent.received_at < cutoff,
                ReceiptEvent.payload != "",
            )
            .values(payload="")
            .execution_options(synchronize_session=False)
        )
    return purged


ANONYMIZE_CHUNK = 1000  # log items per transaction


class RecipientAnonymizer:
    """Replaces the recipient of log items past their tenant's ``log_retention_days``.

    Items are walked in id order (ids begin with their creation time, so "older than the cutoff"
    is a range of the ``(tenant_id, id)`` index), a chunk per transaction. Items not finished yet
    (a send scheduled far ahead) are left for a later round; where the first of them is, or the
    cutoff when there is none, is remembered per tenant, so later rounds start there instead of
    walking every item already anonymized again.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._resume: dict[str, str] = {}  # tenant id -> lowest id that may still need it

    async def run(self, now: datetime, budget_seconds: float = 20.0) -> int:
        """Anonymize what is due, for at most about ``budget_seconds``; returns how many items."""
        deadline = time.monotonic() + budget_seconds
        async with self.db.read() as session:
            tenants = (await session.execute(select(Tenant.id, Tenant.hash_salt, Tenant.settings))).all()
        done = 0
        for tenant_id, salt, raw_settings in tenants:
            cutoff_id = first_id_at(
                "log", now - timedelta(days=load_settings(raw_settings).log_retention_days)
            )
            start, after = self._resume.get(tenant_id, ""), None
            first_pending: str | None = None
            while time.monotonic() < deadline:
                async with self.db.begin() as session:
                    changed, after, pending = await _anonymize_chunk(
                        session, tenant_id, salt, start, after, cutoff_id
                    )
                done += changed
                if pending is not None and first_pending is None:
                    first_pending = pending
                if after is None:  # walked up to the cutoff
                    self._resume[tenant_id] = first_pending or cutoff_id
                    break
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
            Message.error, Message.response,
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
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)  # another worker's round takes the others
    rows = (await session.execute(query)).all()
    pending = next((row.id for row in rows if row.status in _IN_FLIGHT), None)
    values = [_anonymized(row, salt) for row in rows if row.status not in _IN_FLIGHT]
    if values:
        table = cast(Table, Message.__table__)  # Core: one executemany (ORM updates want keys)
        await session.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"), _FINISHED_SQL)
            .values(
                recipient=bindparam("b_recipient"),
                recipient_key=bindparam("b_key"),
                error=bindparam("b_error"),
                response=bindparam("b_response"),
                content=None,
                variables=None,
            )
            .execution_options(synchronize_session=False),
            values,
        )
    last = rows[-1].id if len(rows) == ANONYMIZE_CHUNK else None
    return len(values), last, pending


def _anonymized(row: Any, salt: str) -> dict[str, Any]:
    masked = mask_recipient(row.channel, row.recipient)
    spellings = _spellings(row.channel, row.recipient, row.recipient_key)
    return {
        "b_id": row.id,
        "b_recipient": masked,
        "b_key": ANONYMIZED_KEY_PREFIX + address_hash(salt, row.channel, row.recipient_key),
        # Provider answers and errors may quote the address ("invalid number +86138...").
        "b_error": _scrub(row.error, spellings, masked),
        "b_response": _scrub(row.response, spellings, masked),
    }


def _spellings(channel: str, recipient: str, key: str) -> list[str]:
    """How the address may be written in a provider's answer, longest first."""
    found = {recipient, key}
    if channel == "sms":
        try:
            national = str(phonenumbers.parse(recipient).national_number)
        except phonenumbers.NumberParseException:
            national = ""
        if len(national) >= 9:  # shorter digit runs turn up inside ids and times
            found |= {national, recipient.lstrip("+")}
    return sorted(found, key=len, reverse=True)


def _scrub(text: str | None, spellings: Iterable[str], masked: str) -> str | None:
    if not text:
        return text
    for spelling in spellings:
        text = text.replace(spelling, masked)
    return text
