"""receipts that arrived before the send was recorded, found again later

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNMATCHED = sa.text("outcome = 'unmatched'")


def upgrade() -> None:
    op.create_index(
        "ix_receipt_events_unmatched",
        "receipt_events",
        ["received_at"],
        postgresql_where=_UNMATCHED,
        sqlite_where=_UNMATCHED,
    )


def downgrade() -> None:
    op.drop_index("ix_receipt_events_unmatched", table_name="receipt_events")
