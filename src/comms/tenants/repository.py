"""Tenants and API keys: all their SQL."""

from __future__ import annotations

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from comms.models import ApiKey, Tenant


class TenantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, tenant_id: str) -> Tenant | None:
        return await self.session.get(Tenant, tenant_id)

    async def count(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(Tenant)) or 0)

    def add(self, tenant: Tenant) -> None:
        self.session.add(tenant)


# Every request reads it: built once (building it cost as much CPU as running it).
_KEY_WITH_TENANT = (
    select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.id == bindparam("key_id"))
)


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_with_tenant(self, key_id: str) -> tuple[ApiKey, Tenant] | None:
        row = (await self.session.execute(_KEY_WITH_TENANT, {"key_id": key_id})).first()
        return None if row is None else (row[0], row[1])

    def add(self, key: ApiKey) -> None:
        self.session.add(key)
