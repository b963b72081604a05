"""HTTP routes for provider accounts (scope ``admin``)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from comms.accounts import service
from comms.accounts.repository import ProviderAccountRepository
from comms.compliance import audit
from comms.errors import NotFound, ValidationFailed
from comms.kit.clock import isoformat, utcnow
from comms.kit.http import reply
from comms.kit.ids import new_id
from comms.kit.pagination import DEFAULT_PAGE_SIZE, Page
from comms.messages.endpoints import PageQuery, PageSizeQuery
from comms.messages.schemas import ERROR_RESPONSES, Channel
from comms.models import ProviderAccount
from comms.providers.base import Provider
from comms.state import AppState, app_state
from comms.tenants.auth import require
from comms.tenants.scopes import Scope
from comms.tenants.service import Principal

log = logging.getLogger("comms.accounts")
router = APIRouter(prefix="/communication/providers", tags=["Provider accounts"])
AdminPrincipal = Annotated[Principal, Depends(require(Scope.ADMIN))]


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    provider: str = Field(examples=["webhook"])
    name: str = Field(min_length=1, max_length=200)
    priority: int = Field(
        default=1, ge=0, le=1000, description="Lowest first; the next takes over on failure."
    )
    config: dict[str, Any] = Field(default_factory=dict)
    rate_per_second: float | None = Field(default=None, gt=0, le=100_000)
    enabled: bool = True


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    priority: int | None = Field(default=None, ge=0, le=1000)
    config: dict[str, Any] | None = None
    rate_per_second: float | None = Field(default=None, gt=0, le=100_000)
    enabled: bool | None = None


def account_data(request: Request, row: ProviderAccount) -> dict[str, Any]:
    cls = service.provider_class(row.provider, row.channel)
    state = app_state(request)
    base = state.settings.resolved_public_url
    return {
        "id": row.id,
        "channel": row.channel,
        "provider": row.provider,
        "name": row.name,
        "priority": row.priority,
        "config": service.public_view(cls, row.config),
        "secret_fields_set": sorted(f for f in cls.secret_fields if row.config.get(f)),
        # Stored under another COMMS_SECRET_KEY: the account cannot send (nor its callback URLs
        # carry their token) until these are given again.
        "secrets_unreadable": service.unreadable_secrets(cls, row.config, state.secrets),
        "rate_per_second": row.rate_per_second,
        "enabled": row.enabled,
        "callback_urls": service.callback_urls(base, row.provider, row.id, _callback_query(cls, row, state)),
        "created_at": isoformat(row.created_at),
        "updated_at": isoformat(row.updated_at),
    }


def _callback_query(cls: type[Provider], row: ProviderAccount, state: AppState) -> dict[str, str]:
    """The callback token to show the admin (it goes into the vendor's console, so it is shown
    here although the field is write-only elsewhere); an account whose secrets no longer decrypt
    (a rotated COMMS_SECRET_KEY) is listed without it rather than failing the whole listing."""
    try:
        return cls.callback_query(service.unseal(cls, row.config, state.secrets))
    except Exception:
        log.warning("provider account secrets do not decrypt", extra={"account": row.id})
        return {}


@router.get("", responses=ERROR_RESPONSES)
async def list_accounts(
    request: Request,
    principal: AdminPrincipal,
    channel: Channel | None = None,
    page: PageQuery = 1,
    page_size: PageSizeQuery = DEFAULT_PAGE_SIZE,
) -> Any:
    """In the order they are tried: priority, then id."""
    async with app_state(request).db.read() as session:
        rows = await ProviderAccountRepository(session, principal.tenant_id).list(
            channel.value if channel else None
        )
    paging = Page(page, page_size)  # a tenant has a handful of accounts: paged here, not in SQL
    items = [account_data(request, r) for r in rows[paging.offset : paging.offset + page_size]]
    return reply(200, "ok", items=items, total=len(rows), pagination=paging.info(len(rows)))


@router.post("", status_code=201, responses=ERROR_RESPONSES)
async def create_account(request: Request, body: AccountCreate, principal: AdminPrincipal) -> Any:
    state = app_state(request)
    cls = service.provider_class(body.provider, body.channel.value)
    config = service.validate_config(cls, service.with_generated_secrets(cls, body.config))
    if not state.settings.provider_allow_private:
        service.refuse_private_endpoints(config)
    now = utcnow()
    row = ProviderAccount(
        id=new_id("acc"),
        tenant_id=principal.tenant_id,
        channel=body.channel.value,
        provider=body.provider,
        name=body.name,
        priority=body.priority,
        config=service.seal(cls, config, state.secrets),
        rate_per_second=body.rate_per_second,
        enabled=body.enabled,
        created_at=now,
        updated_at=now,
    )
    async with state.db.begin() as session:
        ProviderAccountRepository(session, principal.tenant_id).add(row)
        audit.record(
            session, principal.tenant_id, "provider_account.created", actor=principal.key_id,
            account_id=row.id, provider=row.provider, channel=row.channel,
        )  # fmt: skip
    return reply(201, "created", data=account_data(request, row))


@router.get("/{account_id}", responses=ERROR_RESPONSES)
async def get_account(request: Request, account_id: str, principal: AdminPrincipal) -> Any:
    async with app_state(request).db.read() as session:
        row = await ProviderAccountRepository(session, principal.tenant_id).get(account_id)
    if row is None:
        raise NotFound(f"no provider account {account_id}")
    return reply(200, "ok", data=account_data(request, row))


@router.put("/{account_id}", responses=ERROR_RESPONSES)
async def update_account(
    request: Request, account_id: str, body: AccountUpdate, principal: AdminPrincipal
) -> Any:
    state = app_state(request)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ValidationFailed.single("body", "nothing to update")
    async with state.db.begin() as session:
        row = await ProviderAccountRepository(session, principal.tenant_id).get(account_id)
        if row is None:
            raise NotFound(f"no provider account {account_id}")
        cls = service.provider_class(row.provider, row.channel)
        if "config" in changes and changes["config"] is not None:
            merged = service.merge_for_update(cls, row.config, changes.pop("config"), state.secrets)
            merged = service.with_generated_secrets(cls, merged)
            config = service.validate_config(cls, merged)
            if not state.settings.provider_allow_private:
                service.refuse_private_endpoints(config)
            row.config = service.seal(cls, config, state.secrets)
        for field, value in changes.items():
            if value is None and field in ("name", "priority", "enabled", "config"):
                raise ValidationFailed.single(field, "cannot be null")
            setattr(row, field, value)
        row.updated_at = utcnow()
        audit.record(
            session, principal.tenant_id, "provider_account.updated", actor=principal.key_id,
            account_id=row.id, fields=sorted(body.model_dump(exclude_unset=True)),
        )  # fmt: skip
    return reply(200, "updated", data=account_data(request, row))


@router.delete("/{account_id}", responses=ERROR_RESPONSES)
async def delete_account(request: Request, account_id: str, principal: AdminPrincipal) -> Any:
    async with app_state(request).db.begin() as session:
        repo = ProviderAccountRepository(session, principal.tenant_id)
        row = await repo.get(account_id)
        if row is None:
            raise NotFound(f"no provider account {account_id}")
        await repo.delete(row)
        audit.record(
            session,
            principal.tenant_id,
            "provider_account.deleted",
            actor=principal.key_id,
            account_id=row.id,
        )
    return reply(200, "deleted")
