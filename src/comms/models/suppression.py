from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from comms.kit.db import UTCDateTime
from comms.models.base import Base


class Suppression(Base):
    """A do-not-contact entry. Keyed by a salted hash so it survives erasure of the address."""

    __tablename__ = "suppressions"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(10), primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The address itself; NULL once erased (the hash keeps the opt-out alive).
    address: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(40))
    # Which categories it blocks: "marketing" (opt-out) or "all" (bounce, complaint).
    scope: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
