"""Stored templates: all their SQL, scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from comms.models import Template


class TemplateRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def get(self, template_id: str) -> Template | None:
        template = await self.session.get(Template, template_id)
        return template if template is not None and template.tenant_id == self.tenant_id else None

    async def find(self, ref: str) -> Template | None:
        """By id (``tpl_...``) or by code (``verify_code``)."""
        if ref.startswith("tpl_"):
            found = await self.get(ref)
            if found is not None:
                return found
        return await self.session.scalar(
            select(Template).where(Template.tenant_id == self.tenant_id, Template.code == ref)
        )

    async def list(
        self, offset: int, limit: int, channel: str | None = None
    ) -> tuple[Sequence[Template], int]:
        where = [Template.tenant_id == self.tenant_id]
        if channel:
            where.append(Template.channel == channel)
        total = int(await self.session.scalar(select(func.count()).select_from(Template).where(*where)) or 0)
        rows = await self.session.scalars(
            select(Template).where(*where).order_by(Template.id.desc()).offset(offset).limit(limit)
        )
        return rows.all(), total

    def add(self, template: Template) -> None:
        self.session.add(template)

    async def delete(self, template: Template) -> None:
        await self.session.delete(template)
