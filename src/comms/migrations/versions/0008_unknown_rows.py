"""find the rows left ``unknown`` without reading the whole message table

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 19:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNKNOWN = sa.text("status = 'unknown'")


def upgrade() -> None:
    op.create_index(
        "ix_messages_unknown", "messages", ["updated_at"], postgresql_where=_UNKNOWN, sqlite_where=_UNKNOWN
    )


def downgrade() -> None:
    op.drop_index("ix_messages_unknown", table_name="messages")
