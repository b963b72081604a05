"""The append-only audit trail (COMPLIANCE.md P5). Nothing in comms updates or deletes these rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from comms.kit.clock import utcnow
from comms.kit.ids import new_id
from comms.models import AuditEvent


def record(
    session: AsyncSession,
    tenant_id: str,
    action: str,
    *,
    actor: str | None = None,
    ip: str | None = None,
    **details: Any,
) -> None:
    """Add one audit row to the caller's unit of work (written, or not, with what it records)."""
    session.add(
        AuditEvent(
            id=new_id("aud"),
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            ip=ip,
            details=details,
            created_at=utcnow(),
        )
    )
