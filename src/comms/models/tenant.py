from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from comms.kit.db import JSONText, UTCDateTime
from comms.models.base import Base


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The tenant's own settings (region, senders, policies); see compliance/settings.py.
    settings: Mapped[dict[str, Any]] = mapped_column(JSONText, default=dict)
    # Salt for hashed suppression entries that outlive erasure (GDPR Art. 17 vs the opt-out).
    hash_salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
