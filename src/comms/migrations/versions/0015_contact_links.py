"""``contact_links``: the addresses a tenant links as one person's

An objection to direct marketing recorded on one of them covers the others (GDPR Art. 21,
COMPLIANCE.md E6).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 10:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contact_links",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("contact", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_contact_links_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "contact", "channel", "address_hash", name=op.f("pk_contact_links")
        ),
    )
    op.create_index("ix_contact_links_address", "contact_links", ["tenant_id", "channel", "address_hash"])


def downgrade() -> None:
    op.drop_index("ix_contact_links_address", table_name="contact_links")
    op.drop_table("contact_links")
