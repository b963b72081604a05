"""Creating tenants and API keys, and resolving a bearer token to its tenant.

Token format: ``comms_<key id>_<secret>``. Only sha256(secret) is stored: the secret has 256 bits
of entropy, so a fast hash is enough (no password-style stretching needed) and auth stays cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance import audit
from comms.compliance.settings import load_settings
from comms.errors import Unauthorized
from comms.kit.clock import utcnow
from comms.kit.ids import id_has_prefix, new_id
from comms.models import ApiKey, Tenant
from comms.tenants.repository import ApiKeyRepository, TenantRepository
from comms.tenants.scopes import ALL_SCOPES, DEFAULT_SCOPES, Scope

TOKEN_PREFIX = "comms_"
_KEY_ID_LENGTH = len("key_") + 32


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant, the key and its scopes."""

    tenant: Tenant
    key_id: str
    scopes: frozenset[str]

    @property
    def tenant_id(self) -> str:
        return self.tenant.id


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_tenant(
    session: AsyncSession, name: str, region: str = "CN", settings: dict[str, Any] | None = None
) -> Tenant:
    now = utcnow()
    merged: dict[str, Any] = {"default_region": region.upper()}
    merged.update(settings or {})
    # Validated now, so that a bad region or sender is an error here, not on every later request.
    merged = load_settings(merged).model_dump()
    tenant = Tenant(
        id=new_id("tnt"),
        name=name,
        settings=merged,
        hash_salt=secrets.token_hex(16),
        created_at=now,
        updated_at=now,
    )
    TenantRepository(session).add(tenant)
    await session.flush()
    return tenant


async def create_api_key(
    session: AsyncSession, tenant_id: str, scopes: Iterable[str] | None = None, name: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns it with the token, which is shown once and never stored."""
    chosen = sorted(set(scopes) if scopes else DEFAULT_SCOPES)
    unknown = set(chosen) - set(ALL_SCOPES)
    if unknown:
        raise ValueError(
            f"unknown scope(s): {', '.join(sorted(unknown))}; the scopes are: {', '.join(ALL_SCOPES)}"
        )
    if await TenantRepository(session).get(tenant_id) is None:
        raise LookupError(f"no tenant {tenant_id}")
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        name=name,
        secret_hash=_hash_secret(secret),
        scopes=chosen,
        created_at=utcnow(),
    )
    ApiKeyRepository(session).add(key)
    await session.flush()
    return key, f"{TOKEN_PREFIX}{key.id}_{secret}"


async def revoke_api_key(session: AsyncSession, key_id: str, actor: str | None = None) -> bool:
    """Revoke a key at once (every request after this commit is refused); True when it was live
    until now, False when it was revoked before. LookupError when there is no such key."""
    found = await ApiKeyRepository(session).get_with_tenant(key_id)
    if found is None:
        raise LookupError(f"no API key {key_id}")
    key = found[0]
    if key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    audit.record(session, key.tenant_id, "apikey.revoked", actor=actor, key_id=key.id)
    return True


async def authenticate(session: AsyncSession, token: str) -> Principal:
    if not token.startswith(TOKEN_PREFIX):
        raise Unauthorized("invalid API token")
    # The secret is URL-safe base64 and may itself contain "_": split at the key id's fixed length.
    rest = token[len(TOKEN_PREFIX) :]
    key_id, sep, secret = (
        rest[:_KEY_ID_LENGTH],
        rest[_KEY_ID_LENGTH : _KEY_ID_LENGTH + 1],
        rest[_KEY_ID_LENGTH + 1 :],
    )
    if sep != "_" or not id_has_prefix(key_id, "key") or not secret:
        raise Unauthorized("invalid API token")
    found = await ApiKeyRepository(session).get_with_tenant(key_id)
    if found is None:
        raise Unauthorized("invalid API token")
    key, tenant = found
    if key.revoked_at is not None or not hmac.compare_digest(key.secret_hash, _hash_secret(secret)):
        raise Unauthorized("invalid API token")
    return Principal(tenant=tenant, key_id=key.id, scopes=frozenset(key.scopes))


def has_scope(principal: Principal, scope: Scope) -> bool:
    return scope.value in principal.scopes
