"""messages without foreign keys (bulk insert speed)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 17:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint("fk_messages_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_constraint("fk_messages_batch_id_batches", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_messages_batch_id_batches", "batches", ["batch_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.create_foreign_key(
            "fk_messages_tenant_id_tenants", "tenants", ["tenant_id"], ["id"], ondelete="CASCADE"
        )
