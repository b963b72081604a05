"""``/communication/event-webhook``: where a tenant wants its log items' status changes pushed
(scope ``admin``). One URL per tenant; the signing secret is shown once, when it is made."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from comms.compliance import audit
from comms.errors import Conflict, NotFound, ValidationFailed
from comms.events.service import DEFAULT_STATUSES, EventStatus
from comms.kit.clock import isoformat, utcnow
from comms.kit.http import reply
from comms.kit.netguard import private_host
from comms.kit.urls import HttpUrl
from comms.messages.schemas import ERROR_RESPONSES
from comms.models import EventDelivery, EventWebhook
from comms.state import AppState, app_state
from comms.tenants.auth import require
from comms.tenants.scopes import Scope
from comms.tenants.service import Principal

router = APIRouter(prefix="/communication/event-webhook", tags=["Event webhook"])
AdminPrincipal = Annotated[Principal, Depends(require(Scope.ADMIN))]


class EventWebhookPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(
        max_length=2000,
        pattern=r"^https?://[^\s/?#]+[^\s]*$",
        examples=["https://app.example.com/comms-events"],
    )
    statuses: list[EventStatus] = Field(
        default_factory=lambda: list(DEFAULT_STATUSES),
        min_length=1,
        description="The statuses to be told about (default: every outcome; `deferred` on request).",
    )
    rotate_secret: bool = Field(default=False, description="Make a new signing secret (shown once).")

    @field_validator("statuses")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


def _view(hook: EventWebhook, pending: int, failed: int, last_error: str | None) -> dict[str, Any]:
    return {
        "url": hook.url,
        "statuses": hook.statuses,
        "secret_set": True,
        "pending_deliveries": pending,
        "failed_deliveries": failed,
        "last_error": last_error,
        "created_at": isoformat(hook.created_at),
        "updated_at": isoformat(hook.updated_at),
    }


@router.put(
    "",
    responses={
        201: {"description": "Created: the first webhook of the tenant, its secret shown once"},
        **ERROR_RESPONSES,
    },
)
async def put_event_webhook(request: Request, body: EventWebhookPut, principal: AdminPrincipal) -> Any:
    """Set (or change) the URL comms posts status changes to: ``{"events": [{"event_id", "type":
    "message.status", "log_id", "batch_id", "channel", "category", "recipient" (masked), "status",
    "error", "provider", "provider_message_id", "at"}]}``, signed with ``X-Comms-Timestamp`` and
    ``X-Comms-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``. The secret is in
    the answer when it is made (the first time, or with ``rotate_secret``), never again."""
    state = app_state(request)
    if not state.settings.event_webhook_allow_private and (host := private_host(body.url)) is not None:
        raise ValidationFailed.single(
            "url", f"{host} is not a public address: events are posted to public URLs only"
        )
    try:
        return await _put(state, principal, body, utcnow())
    except IntegrityError:  # two first PUTs at once: one made it
        raise Conflict("the event webhook was set by another request at the same time: try again") from None


async def _put(state: AppState, principal: Principal, body: EventWebhookPut, now: datetime) -> Any:
    shown: str | None = None
    async with state.db.begin() as session:
        hook = await session.get(EventWebhook, principal.tenant_id)
        created = hook is None
        if hook is None or body.rotate_secret:
            shown = "whsec_" + secrets.token_urlsafe(32)
        if hook is None:
            assert shown is not None
            hook = EventWebhook(
                tenant_id=principal.tenant_id,
                url=body.url,
                statuses=list(body.statuses),
                secret=state.secrets.encrypt(shown),
                created_at=now,
                updated_at=now,
            )
            session.add(hook)
        else:
            hook.url, hook.statuses, hook.updated_at = body.url, list(body.statuses), now
            if shown is not None:
                hook.secret = state.secrets.encrypt(shown)
        audit.record(
            session, principal.tenant_id, "event_webhook.updated", actor=principal.key_id,
            url=body.url, statuses=list(body.statuses), secret_rotated=shown is not None and not created,
        )  # fmt: skip
        await session.flush()
        data = _view(hook, 0, 0, None)
    if shown is not None:
        data["secret"] = shown
    return reply(201 if created else 200, "created" if created else "updated", data=data)


@router.get("", responses=ERROR_RESPONSES)
async def get_event_webhook(request: Request, principal: AdminPrincipal) -> Any:
    """The webhook, how many deliveries wait or were given up, and the last error met."""
    async with app_state(request).db.read() as session:
        hook = await session.get(EventWebhook, principal.tenant_id)
        if hook is None:
            raise NotFound("no event webhook: PUT /communication/event-webhook sets one")
        mine = EventDelivery.tenant_id == principal.tenant_id
        pending = await session.scalar(
            select(func.count()).where(
                mine, EventDelivery.delivered_at.is_(None), EventDelivery.failed_at.is_(None)
            )
        )
        failed = await session.scalar(select(func.count()).where(mine, EventDelivery.failed_at.is_not(None)))
        last_error = await session.scalar(
            select(EventDelivery.last_error)
            .where(mine, EventDelivery.last_error.is_not(None), EventDelivery.delivered_at.is_(None))
            .order_by(EventDelivery.created_at.desc())
            .limit(1)
        )
    return reply(200, "ok", data=_view(hook, int(pending or 0), int(failed or 0), last_error))


@router.delete("", responses=ERROR_RESPONSES)
async def delete_event_webhook(request: Request, principal: AdminPrincipal) -> Any:
    """Stop posting events; deliveries not made yet are dropped."""
    async with app_state(request).db.begin() as session:
        hook = await session.get(EventWebhook, principal.tenant_id)
        if hook is None:
            raise NotFound("no event webhook")
        await session.delete(hook)
        await session.execute(delete(EventDelivery).where(EventDelivery.tenant_id == principal.tenant_id))
        audit.record(session, principal.tenant_id, "event_webhook.deleted", actor=principal.key_id)
    return reply(200, "deleted")


__all__ = ["router"]
