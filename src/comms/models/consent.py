from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from comms.kit.db import UTCDateTime
from comms.models.base import Base


class Consent(Base):
    """One consent record; the newest per (tenant, channel, address) is the current state."""

    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_lookup", "tenant_id", "channel", "address_hash", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(10))
    address_hash: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20))
    basis: Mapped[str | None] = mapped_column(String(20))
    source: Mapped[str | None] = mapped_column(String(200))
    wording_version: Mapped[str | None] = mapped_column(String(100))
    ip: Mapped[str | None] = mapped_column(String(64))
    written: Mapped[bool] = mapped_column(default=False)
    collected_with_optout: Mapped[bool] = mapped_column(default=False)
    # When the person gave it, as the tenant says (None: not said; recorded at created_at).
    collected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
