"""SMS that comms sends on its own behalf: the one confirmation of a STOP, the HELP and START
replies, and the confirmation of an opt-in recorded through the API (CTIA). Each is a
transactional SMS to one number, accepted, gated and logged like any other (so it shows in
/logs), in a transaction of its own: whatever happens to it never rolls back what it confirms."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from comms.dispatch.wakeup import notify_work
from comms.kit.db import Database
from comms.kit.secretbox import SecretBox
from comms.messages.schemas import BulkSendBody
from comms.messages.service import SubmitOptions, submit_bulk
from comms.models import Tenant
from comms.tenants.scopes import ALL_SCOPES
from comms.tenants.service import Principal

_ONE = SubmitOptions(max_recipients=1, page_size=1, unmask=False, api_key_id=None, ip=None)


async def _submit_one(
    session: AsyncSession,
    secrets: SecretBox,
    tenant: Tenant,
    to: str,
    text: str,
    category: str,
    dry_run: bool,
) -> dict[str, Any]:
    result = await submit_bulk(
        session,
        Principal(tenant=tenant, key_id="system", scopes=frozenset(ALL_SCOPES)),
        # The text as a variable, not as the template: a brand or an address with "{{" in it is
        # sent as written, never read as template syntax.
        BulkSendBody(
            channel="sms",
            recipients=[to],
            content="{{ text }}",
            variables={"text": text},
            category=category,
            dry_run=dry_run,
        ),
        secrets,
        _ONE,
    )
    return result.items[0]


async def marketing_verdict(
    db: Database, secrets: SecretBox, tenant: Tenant, to: str
) -> tuple[str, str | None]:
    """What a marketing SMS to ``to`` would get now, from the acceptance gate itself (a dry run:
    nothing is stored): (status, error). ``queued``, ``scheduled`` or ``deferred`` mean it may go
    (consent, written consent for +1 numbers, the suppression list)."""
    async with db.read() as session:
        item = await _submit_one(session, secrets, tenant, to, ".", "marketing", dry_run=True)
    return str(item["status"]), item.get("error")


async def send_system_sms(
    db: Database, secrets: SecretBox, tenant: Tenant, to: str, text: str
) -> tuple[str, str]:
    """Queue ``text`` to ``to`` for ``tenant``; (its log id, its status: ``queued``, or why not).
    Raises as a bulk request would (no sender identity for transactional SMS, say). The caller
    wakes its in-process dispatcher."""
    async with db.begin() as session:
        item = await _submit_one(session, secrets, tenant, to, text, "transactional", dry_run=False)
        await notify_work(session)
    return str(item["id"]), str(item["status"])


__all__ = ["marketing_verdict", "send_system_sms"]
