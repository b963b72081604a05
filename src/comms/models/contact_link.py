from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from comms.kit.db import UTCDateTime
from comms.models.base import Base


class ContactLink(Base):
    """One address of a person as the tenant links them (``PUT /communication/contacts/{contact}``,
    ``contact`` being the tenant's own id for the person): an objection to direct marketing on one
    of a contact's addresses covers all of them (GDPR Art. 21, COMPLIANCE.md E6)."""

    __tablename__ = "contact_links"
    __table_args__ = (Index("ix_contact_links_address", "tenant_id", "channel", "address_hash"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    contact: Mapped[str] = mapped_column(String(200), primary_key=True)
    channel: Mapped[str] = mapped_column(String(10), primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
