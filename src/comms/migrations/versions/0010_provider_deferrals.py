"""``messages.deferrals``: how often the provider's flow control held a message back

Each provider deferral waits twice as long as the one before, and a message fails after
``MAX_PROVIDER_DEFERRALS`` (dispatch/dispatcher.py) instead of being retried for ever.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL 11+ and SQLite add the column without rewriting the table.
    op.add_column("messages", sa.Column("deferrals", sa.SmallInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("deferrals")
