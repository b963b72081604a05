"""HTTP routes of the compliance domain: settings, suppressions, consents, erasure, audit trail,
and the public unsubscribe page (``/u/{token}``, RFC 8058 one-click)."""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from comms.compliance import audit, service
from comms.compliance.repository import ConsentStore, SuppressionStore
from comms.compliance.schemas import ConsentCreate, ErasureCreate, SuppressionCreate
from comms.compliance.settings import TenantSettings, load_settings
from comms.compliance.unsubscribe import UnsubscribeSigner
from comms.errors import BadRequest, FieldError, NotFound, ValidationFailed
from comms.kit.clock import isoformat, utcnow
from comms.kit.http import reply
from comms.kit.masking import mask_recipient
from comms.kit.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from comms.messages.schemas import ERROR_RESPONSES, Channel
from comms.models import AuditEvent, Consent, Message, Suppression, Tenant
from comms.state import app_state
from comms.tenants.auth import AnyPrincipal, require
from comms.tenants.scopes import Scope
from comms.tenants.service import Principal

router = APIRouter(prefix="/communication", tags=["Compliance"])
public = APIRouter(tags=["Unsubscribe (public)"])

AdminPrincipal = Annotated[Principal, Depends(require(Scope.ADMIN))]
SuppressionsWritePrincipal = Annotated[Principal, Depends(require(Scope.SUPPRESSIONS_WRITE))]
LogsPrincipal = Annotated[Principal, Depends(require(Scope.LOGS_READ))]
PageQuery = Annotated[int, Query(ge=1)]
PageSizeQuery = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _region(principal: Principal) -> str:
    return load_settings(principal.tenant.settings).default_region


# ---- settings ------------------------------------------------------------------------------------


@router.get("/settings", responses=ERROR_RESPONSES)
async def get_settings(principal: AnyPrincipal) -> Any:
    return reply(200, "ok", data=load_settings(principal.tenant.settings).model_dump())


@router.put("/settings", responses=ERROR_RESPONSES)
async def put_settings(request: Request, principal: AdminPrincipal) -> Any:
    """Merge the fields given into the tenant's settings (unknown fields are a 422)."""
    try:
        changes = await request.json()
    except ValueError:
        raise BadRequest("malformed JSON") from None
    if not isinstance(changes, dict) or not changes:
        raise ValidationFailed.single("body", "expected an object with the settings to change")
    merged = load_settings(principal.tenant.settings).model_dump()
    merged.update(changes)
    try:
        validated = TenantSettings.model_validate(merged)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]} for e in exc.errors()
        ]
        raise ValidationFailed(
            errors[0]["message"], [FieldError(e["field"], e["message"]) for e in errors]
        ) from None
    async with app_state(request).db.begin() as session:
        tenant = await session.get(Tenant, principal.tenant_id)
        assert tenant is not None
        tenant.settings = validated.model_dump()
        tenant.updated_at = utcnow()
        audit.record(
            session,
            tenant.id,
            "settings.updated",
            actor=principal.key_id,
            ip=_ip(request),
            fields=sorted(changes),
        )
    return reply(200, "updated", data=validated.model_dump())


def _address_filter(principal: Principal, channel: Channel | None, address: str | None) -> str | None:
    """The hash to filter a list by, for an ``address`` given in any format (channel required)."""
    if address is None:
        return None
    if channel is None:
        raise ValidationFailed.single("channel", "required with address")
    return service.contact(principal.tenant, channel.value, address, _region(principal)).digest


# ---- suppressions --------------------------------------------------------------------------------


def _suppression_data(row: Suppression, unmask: bool) -> dict[str, Any]:
    address = row.address
    return {
        "channel": row.channel,
        "address": (address if unmask else mask_recipient(row.channel, address)) if address else None,
        "address_hash": row.address_hash,
        "reason": row.reason,
        "scope": row.scope,
        "source": row.source,
        "created_at": isoformat(row.created_at),
    }


@router.get("/suppressions", responses=ERROR_RESPONSES)
async def list_suppressions(
    request: Request,
    principal: LogsPrincipal,
    page: PageQuery = 1,
    page_size: PageSizeQuery = DEFAULT_PAGE_SIZE,
    channel: Channel | None = None,
    address: str | None = None,
) -> Any:
    """The caller's own suppressions only (CAN-SPAM forbids sharing opt-out lists); addresses masked."""
    digest = _address_filter(principal, channel, address)
    paging = Page(page, page_size)
    async with app_state(request).db.read() as session:
        rows, total = await SuppressionStore(session, principal.tenant_id).list(
            paging.offset, page_size, channel.value if channel else None, digest
        )
    items = [_suppression_data(r, False) for r in rows]
    return reply(200, "ok", items=items, total=total, pagination=paging.info(total))


@router.post("/suppressions", status_code=201, responses=ERROR_RESPONSES)
async def add_suppression(
    request: Request, body: SuppressionCreate, principal: SuppressionsWritePrincipal
) -> Any:
    who = service.contact(principal.tenant, body.channel.value, body.address, _region(principal))
    async with app_state(request).db.begin() as session:
        changed = await service.suppress(
            session, principal.tenant, who, body.reason, "api", actor=principal.key_id, ip=_ip(request)
        )
        row = await SuppressionStore(session, principal.tenant_id).get(who.channel, who.digest)
        assert row is not None
        data = _suppression_data(row, False)
    return reply(201 if changed else 200, "suppressed" if changed else "already suppressed", data=data)


@router.delete("/suppressions/{channel}/{address}", responses=ERROR_RESPONSES)
async def delete_suppression(
    request: Request, channel: Channel, address: str, principal: SuppressionsWritePrincipal
) -> Any:
    who = service.contact(principal.tenant, channel.value, address, _region(principal))
    async with app_state(request).db.begin() as session:
        removed = await service.unsuppress(
            session, principal.tenant, who, "api", actor=principal.key_id, ip=_ip(request)
        )
    if not removed:
        raise NotFound("no suppression for this address")
    return reply(200, "suppression removed")


# ---- consents ------------------------------------------------------------------------------------


def _consent_data(row: Consent, unmask: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "channel": row.channel,
        "address": (row.address if unmask else mask_recipient(row.channel, row.address))
        if row.address
        else None,
        "status": row.status,
        "basis": row.basis,
        "source": row.source,
        "wording_version": row.wording_version,
        "written": row.written,
        "collected_with_optout": row.collected_with_optout,
        "ip": row.ip if unmask else None,
        "created_at": isoformat(row.created_at),
    }


@router.post("/consents", status_code=201, responses=ERROR_RESPONSES)
async def add_consent(request: Request, body: ConsentCreate, principal: SuppressionsWritePrincipal) -> Any:
    if body.status == "opted_in" and body.basis is None:
        raise ValidationFailed.single("basis", "required when status is opted_in")
    who = service.contact(principal.tenant, body.channel.value, body.address, _region(principal))
    async with app_state(request).db.begin() as session:
        row = await service.record_consent(
            session,
            principal.tenant,
            who,
            status=body.status,
            basis=body.basis,
            source=body.source,
            wording_version=body.wording_version,
            written=body.written or body.basis == "written",
            collected_with_optout=body.collected_with_optout,
            actor=principal.key_id,
            ip=_ip(request),
            subject_ip=body.ip,
        )
    return reply(201, "recorded", data=_consent_data(row, False))


@router.get("/consents", responses=ERROR_RESPONSES)
async def list_consents(
    request: Request,
    principal: LogsPrincipal,
    page: PageQuery = 1,
    page_size: PageSizeQuery = DEFAULT_PAGE_SIZE,
    channel: Channel | None = None,
    address: str | None = None,
) -> Any:
    """Consent evidence (who, when, source, wording version), newest first."""
    digest = _address_filter(principal, channel, address)
    paging = Page(page, page_size)
    async with app_state(request).db.read() as session:
        rows, total = await ConsentStore(session, principal.tenant_id).list(
            paging.offset, page_size, channel.value if channel else None, digest
        )
    return reply(
        200, "ok", items=[_consent_data(r, False) for r in rows], total=total, pagination=paging.info(total)
    )


@router.delete("/consents/{channel}/{address}", responses=ERROR_RESPONSES)
async def withdraw_consent(
    request: Request, channel: Channel, address: str, principal: SuppressionsWritePrincipal
) -> Any:
    """An objection to direct marketing (GDPR Art. 21): recorded, and suppressed at once."""
    who = service.contact(principal.tenant, channel.value, address, _region(principal))
    async with app_state(request).db.begin() as session:
        await service.record_consent(
            session,
            principal.tenant,
            who,
            status="opted_out",
            basis=None,
            source="api",
            wording_version=None,
            written=False,
            collected_with_optout=False,
            actor=principal.key_id,
            ip=_ip(request),
        )
    return reply(200, "consent withdrawn; marketing suppressed")


@router.post("/erasures", responses=ERROR_RESPONSES)
async def erase_contact(request: Request, body: ErasureCreate, principal: AdminPrincipal) -> Any:
    """GDPR Art. 17 erasure: deletes the person's log items and stored addresses, keeping only a
    salted hash on the suppression list so the opt-out survives a later re-import."""
    who = service.contact(principal.tenant, body.channel.value, body.address, _region(principal))
    async with app_state(request).db.begin() as session:
        deleted = await service.erase(session, principal.tenant, who, actor=principal.key_id, ip=_ip(request))
    return reply(200, "erased", data={"deleted_log_items": deleted})


# ---- audit trail ---------------------------------------------------------------------------------


@router.get("/audit", responses=ERROR_RESPONSES)
async def list_audit(
    request: Request,
    principal: AdminPrincipal,
    page: PageQuery = 1,
    page_size: PageSizeQuery = DEFAULT_PAGE_SIZE,
    action: str | None = None,
) -> Any:
    """The tenant's audit trail, newest first. Read-only: no route updates or deletes it."""
    paging = Page(page, page_size)
    where = [AuditEvent.tenant_id == principal.tenant_id]
    if action:
        where.append(AuditEvent.action == action)
    async with app_state(request).db.read() as session:
        total = int(await session.scalar(select(func.count()).select_from(AuditEvent).where(*where)) or 0)
        rows = (
            await session.scalars(
                select(AuditEvent)
                .where(*where)
                .order_by(AuditEvent.id.desc())
                .offset(paging.offset)
                .limit(page_size)
            )
        ).all()
    items = [
        {
            "id": r.id,
            "action": r.action,
            "actor": r.actor,
            "ip": r.ip,
            "details": r.details,
            "created_at": isoformat(r.created_at),
        }
        for r in rows
    ]
    return reply(200, "ok", items=items, total=total, pagination=paging.info(total))


# ---- public unsubscribe --------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem">
<h1 style="font-size:1.3rem">{title}</h1><p>{text}</p>{form}</body></html>"""


def _page(title: str, text: str, form: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), text=text, form=form),
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


async def _resolve_token(request: Request, token: str) -> tuple[Message | None, Tenant | None] | None:
    state = app_state(request)
    log_id = UnsubscribeSigner(state.settings.resolved_secret_key).verify(token, utcnow())
    if log_id is None:
        return None
    async with state.db.read() as session:
        message = await session.get(Message, log_id)
        tenant = await session.get(Tenant, message.tenant_id) if message else None
    return message, tenant


@public.get("/u/{token}", response_class=HTMLResponse, include_in_schema=True)
async def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    """Shows what will happen. Never changes anything: mail scanners prefetch links."""
    found = await _resolve_token(request, token)
    if found is None:
        return _page("Link not valid", "This unsubscribe link is not valid.", status=404)
    message, tenant = found
    if message is None or tenant is None:
        return _page("Unsubscribed", "This address is no longer on the list.")
    who = html.escape(mask_recipient(message.channel, message.recipient))
    form = (
        f'<form method="post" action="/u/{html.escape(token)}">'
        '<button type="submit" style="font-size:1rem;padding:.5rem 1rem">Unsubscribe</button></form>'
    )
    return _page(
        "Unsubscribe",
        f"Stop receiving marketing messages and newsletters from {html.escape(tenant.name)} at {who}?",
        form,
    )


@public.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe(request: Request, token: str) -> HTMLResponse:
    """RFC 8058 one-click (and the page's button): suppresses in this request, no redirect, idempotent.

    Any body is accepted (``List-Unsubscribe=One-Click`` as form or multipart data); nothing but
    the token is needed, and no cookie or login is asked for (CAN-SPAM 16 CFR 316.5).
    """
    found = await _resolve_token(request, token)
    if found is None:
        return _page("Link not valid", "This unsubscribe link is not valid.", status=404)
    message, tenant = found
    if message is None or tenant is None:
        return _page("Unsubscribed", "This address is no longer on the list.")
    body = await request.body()
    source: service.Source = "one_click" if b"List-Unsubscribe=One-Click" in body else "link"
    who = service.contact_of_message(tenant, message)
    async with app_state(request).db.begin() as session:
        await service.suppress(session, tenant, who, "unsubscribed", source, ip=_ip(request))
    return _page(
        "Unsubscribed",
        f"You will no longer receive marketing messages or newsletters from {html.escape(tenant.name)}.",
    )
