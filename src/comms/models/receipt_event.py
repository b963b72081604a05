from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from comms.kit.db import UTCDateTime
from comms.models.base import Base


class ReceiptEvent(Base):
    """A provider callback as received (raw), stored once: the same event twice is a no-op."""

    __tablename__ = "receipt_events"
    __table_args__ = (
        UniqueConstraint("account_id", "event_key"),
        # Receipts that named a vendor id comms had not recorded yet (receipts/service.py UNMATCHED).
        Index(
            "ix_receipt_events_unmatched",
            "received_at",
            postgresql_where=text("outcome = 'unmatched'"),
            sqlite_where=text("outcome = 'unmatched'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(40))
    provider: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(10))  # status | inbound
    event_key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
