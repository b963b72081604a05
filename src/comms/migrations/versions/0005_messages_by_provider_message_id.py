"""find a log item by the provider's message id (receipts that do not echo our id)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 18:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HAS_ID = sa.text("provider_message_id IS NOT NULL")


def upgrade() -> None:
    # Partial: rows get a provider id only when sent, so accepting a bulk writes no entries here.
    op.create_index(
        "ix_messages_provider_message_id",
        "messages",
        ["provider_account_id", "provider_message_id"],
        postgresql_where=_HAS_ID,
        sqlite_where=_HAS_ID,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_provider_message_id", table_name="messages")
