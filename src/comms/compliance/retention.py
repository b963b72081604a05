"""Storage limitation (GDPR Art. 5(1)(e), PIPL Art. 19): rendered bodies and variables are purged
from the log after the tenant's ``content_retention_days`` (default 30). Status, times, provider
answers and the (masked-on-read) recipient stay, so the log still says what happened to whom."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance.settings import load_settings
from comms.messages.status import PENDING, Status
from comms.models import Batch, Message, ReceiptEvent, Tenant

_IN_FLIGHT = sorted({*PENDING, Status.SENDING})


async def purge_expired_content(session: AsyncSession, now: datetime) -> int:
    """Returns how many log items lost their content."""
    purged = 0
    tenants = (await session.execute(select(Tenant.id, Tenant.settings))).all()
    for tenant_id, raw_settings in tenants:
        cutoff = now - timedelta(days=load_settings(raw_settings).content_retention_days)
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
