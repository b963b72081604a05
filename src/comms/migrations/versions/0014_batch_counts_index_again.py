"""``ix_messages_batch_id_status`` (batch_id, status) again, wherever 0013 in its first form had
replaced it with ``ix_messages_batch_id_id``: see 0013. On a database that never had the latter,
nothing changes.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 07:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_messages_batch_id_status ON messages (batch_id, status)")
    op.execute("DROP INDEX IF EXISTS ix_messages_batch_id_id")


def downgrade() -> None:
    pass  # 0013 no longer makes the other index: nothing to put back
