"""HTTP routes for stored templates."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.exc import IntegrityError

from comms.errors import Conflict, NotFound, ValidationFailed
from comms.kit.clock import isoformat, utcnow
from comms.kit.http import reply
from comms.kit.ids import new_id
from comms.kit.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE, Page
from comms.messages.schemas import ERROR_RESPONSES, Channel
from comms.models import Template
from comms.state import app_state
from comms.templates.rendering import TemplateError, compile_template
from comms.templates.repository import TemplateRepository
from comms.templates.schemas import TemplateCreate, TemplateEnvelope, TemplateUpdate
from comms.tenants.auth import AnyPrincipal, TemplatesWritePrincipal

router = APIRouter(prefix="/communication/templates", tags=["Templates"])


def template_data(t: Template) -> dict[str, Any]:
    variables: set[str] = set()
    for source, html in ((t.content, False), (t.subject, False), (t.html, True)):
        if source:
            # A template stored before today's limits may no longer compile: still listed.
            with contextlib.suppress(TemplateError):
                variables |= compile_template(source, html).variables
    return {
        "id": t.id,
        "code": t.code,
        "name": t.name,
        "channel": t.channel,
        "category": t.category,
        "content": t.content,
        "subject": t.subject,
        "html": t.html,
        "secret_variables": t.secret_variables,
        "provider_templates": t.provider_templates,
        "contains_promo": t.contains_promo,
        "variables": sorted(variables),
        "version": t.version,
        "created_at": isoformat(t.created_at),
        "updated_at": isoformat(t.updated_at),
    }


@router.get("", responses=ERROR_RESPONSES)
async def list_templates(
    request: Request,
    principal: AnyPrincipal,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    channel: Channel | None = None,
) -> Any:
    paging = Page(page, page_size)
    async with app_state(request).db.read() as session:
        rows, total = await TemplateRepository(session, principal.tenant_id).list(
            paging.offset, page_size, channel.value if channel else None
        )
    return reply(
        200, "ok", items=[template_data(t) for t in rows], total=total, pagination=paging.info(total)
    )


@router.post("", status_code=201, response_model=TemplateEnvelope, responses=ERROR_RESPONSES)
async def create_template(request: Request, body: TemplateCreate, principal: TemplatesWritePrincipal) -> Any:
    now = utcnow()
    template = Template(
        id=new_id("tpl"),
        tenant_id=principal.tenant_id,
        code=body.code,
        name=body.name,
        channel=body.channel.value,
        category=body.category.value,
        content=body.content,
        subject=body.subject,
        html=body.html,
        secret_variables=sorted(set(body.secret_variables or [])),
        provider_templates=body.provider_templates or {},
        contains_promo=bool(body.contains_promo),
        version=1,
        created_at=now,
        updated_at=now,
    )
    try:
        async with app_state(request).db.begin() as session:
            TemplateRepository(session, principal.tenant_id).add(template)
    except IntegrityError:
        raise Conflict(f"a template with code {body.code!r} already exists") from None
    return reply(201, "created", data=template_data(template))


@router.get("/{template_id}", response_model=TemplateEnvelope, responses=ERROR_RESPONSES)
async def get_template(request: Request, template_id: str, principal: AnyPrincipal) -> Any:
    async with app_state(request).db.read() as session:
        template = await TemplateRepository(session, principal.tenant_id).find(template_id)
    if template is None:
        raise NotFound(f"no template {template_id}")
    return reply(200, "ok", data=template_data(template))


@router.put("/{template_id}", response_model=TemplateEnvelope, responses=ERROR_RESPONSES)
async def update_template(
    request: Request, template_id: str, body: TemplateUpdate, principal: TemplatesWritePrincipal
) -> Any:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ValidationFailed.single("body", "nothing to update")
    try:
        async with app_state(request).db.begin() as session:
            template = await TemplateRepository(session, principal.tenant_id).find(template_id)
            if template is None:
                raise NotFound(f"no template {template_id}")
            for field, value in changes.items():
                if field == "secret_variables":
                    value = sorted(set(value or []))
                elif field == "provider_templates":
                    value = value or {}
                elif field in ("channel", "category") and value is not None:
                    value = str(value)
                elif field == "contains_promo":
                    value = bool(value)
                if value is None and field in ("code", "channel", "category", "content"):
                    raise ValidationFailed.single(field, "cannot be null")
                setattr(template, field, value)
            template.version += 1
            template.updated_at = utcnow()
            await session.flush()
    except IntegrityError:
        raise Conflict(f"a template with code {changes.get('code')!r} already exists") from None
    return reply(200, "updated", data=template_data(template))


@router.delete("/{template_id}", responses=ERROR_RESPONSES)
async def delete_template(request: Request, template_id: str, principal: TemplatesWritePrincipal) -> Any:
    async with app_state(request).db.begin() as session:
        repo = TemplateRepository(session, principal.tenant_id)
        template = await repo.find(template_id)
        if template is None:
            raise NotFound(f"no template {template_id}")
        await repo.delete(template)
    return reply(200, "deleted")
