"""Provider accounts: all their SQL, scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from comms.models import ProviderAccount


class ProviderAccountRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def get(self, account_id: str) -> ProviderAccount | None:
        row = await self.session.get(ProviderAccount, account_id)
        return row if row is not None and row.tenant_id == self.tenant_id else None

    async def list(self, channel: str | None = None, enabled_only: bool = False) -> Sequence[ProviderAccount]:
        stmt = select(ProviderAccount).where(ProviderAccount.tenant_id == self.tenant_id)
        if channel:
            stmt = stmt.where(ProviderAccount.channel == channel)
        if enabled_only:
            stmt = stmt.where(ProviderAccount.enabled.is_(True))
        return (await self.session.scalars(stmt.order_by(ProviderAccount.priority, ProviderAccount.id))).all()

    def add(self, row: ProviderAccount) -> None:
        self.session.add(row)

    async def delete(self, row: ProviderAccount) -> None:
        await self.session.delete(row)
