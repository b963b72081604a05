from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from comms.kit.db import JSONText, UTCDateTime
from comms.models.base import Base

# Written out as in the partial index, in queries too (see CLAIMABLE_SQL in message.py).
DELIVERY_DUE_SQL = text("delivered_at IS NULL AND failed_at IS NULL")


class EventWebhook(Base):
    """Where a tenant wants its log items' status changes pushed (one URL per tenant)."""

    __tablename__ = "event_webhooks"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    statuses: Mapped[list[str]] = mapped_column(JSONText)
    secret: Mapped[str] = mapped_column(Text)  # sealed by the SecretBox
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EventDelivery(Base):
    """One POST to a tenant's event webhook: the events of one completed claim or one receipt
    callback, written in the same transaction as the status changes they report (none is lost),
    delivered at least once (receivers dedupe by ``event_id``)."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        Index(
            "ix_event_deliveries_due",
            "next_attempt_at",
            postgresql_where=DELIVERY_DUE_SQL,
            sqlite_where=DELIVERY_DUE_SQL,
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    payload: Mapped[str] = mapped_column(Text)  # {"events": [...]}, as it is posted
    events: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
