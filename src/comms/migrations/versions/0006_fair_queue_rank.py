"""messages.queue_rank: claim order spreads each batch over virtual time (fair share)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 18:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CLAIMABLE = sa.text("status IN ('queued', 'scheduled', 'deferred')")


def upgrade() -> None:
    op.add_column("messages", sa.Column("queue_rank", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "UPDATE messages SET queue_rank = CAST((julianday(due_at) - 2440587.5) * 86400000 AS INTEGER) "
            "WHERE due_at IS NOT NULL"
        )
    else:
        op.execute(
            "UPDATE messages SET queue_rank = CAST(EXTRACT(EPOCH FROM due_at) * 1000 AS BIGINT) "
            "WHERE due_at IS NOT NULL"
        )
    op.drop_index("ix_messages_claim", table_name="messages")
    op.create_index(
        "ix_messages_claim",
        "messages",
        ["priority", "queue_rank"],
        postgresql_where=_CLAIMABLE,
        sqlite_where=_CLAIMABLE,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_claim", table_name="messages")
    op.create_index(
        "ix_messages_claim",
        "messages",
        ["priority", "due_at"],
        postgresql_where=_CLAIMABLE,
        sqlite_where=_CLAIMABLE,
    )
    op.drop_column("messages", "queue_rank")
