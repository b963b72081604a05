"""First start on an empty database: a demo tenant and an API key, printed once."""

from __future__ import annotations

from comms.kit.db import Database
from comms.tenants.repository import TenantRepository
from comms.tenants.scopes import DEFAULT_SCOPES
from comms.tenants.service import create_api_key, create_tenant

DEMO_SETTINGS = {
    "sender_identities": ["demo@example.com", "COMMS"],
    "postal_address": "1 Demo Street, Example City",
}


async def bootstrap_demo_tenant(db: Database) -> tuple[str, str] | None:
    """Returns (tenant id, token) when it created them, ``None`` when tenants already exist."""
    async with db.begin() as session:
        if await TenantRepository(session).count() > 0:
            return None
        tenant = await create_tenant(session, "Demo", "CN", DEMO_SETTINGS)
        # The scopes `comms apikey create` gives by default: raw recipients (pii:read) are a
        # grant of their own, never a demo's default.
        _, token = await create_api_key(session, tenant.id, DEFAULT_SCOPES, name="demo")
    return tenant.id, token
