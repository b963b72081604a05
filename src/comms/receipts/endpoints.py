"""Provider callbacks: ``POST /webhooks/{provider}/{account_id}/status`` and ``.../inbound``.

GET is accepted too, for gateways that report by calling a URL (Kannel's dlr-url): the query
string then stands for the body. Verify the vendor's signature (401 and nothing changed when it
fails), store each event raw and once, apply it, and answer in the form the vendor expects (not
the comms envelope). A reply to an inbound keyword (the one STOP confirmation, HELP) is sent
as an ordinary transactional SMS through the tenant's own routes, so it is logged like any other message.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from comms.accounts import service as accounts
from comms.errors import ValidationFailed
from comms.events.service import EventBuffer
from comms.kit.clock import utcnow
from comms.kit.http import reply
from comms.messages.schemas import error_responses
from comms.messages.system import send_system_sms
from comms.models import ProviderAccount, Tenant
from comms.providers.base import Provider, ProviderContext
from comms.receipts import service
from comms.state import app_state

router = APIRouter(prefix="/webhooks", tags=["Provider callbacks"])
log = logging.getLogger("comms.receipts")
MAX_CALLBACK_BYTES = 1024 * 1024
# What a callback can be answered besides the vendor's own success form, each in the envelope.
CALLBACK_ERRORS = error_responses(
    {
        400: "Unreadable receipt or message",
        401: "Bad signature or token",
        404: "No such provider account",
        413: "Body over 1 MiB",
        422: "Invalid path or body (NUL characters)",
        503: "The account's stored config is unusable, or the database is away: the vendor retries",
    }
)


async def _load(
    request: Request, provider: str, account_id: str
) -> tuple[ProviderAccount, Tenant, Provider] | Response:
    state = app_state(request)
    async with state.db.read() as session:
        account = await session.get(ProviderAccount, account_id)
        tenant = await session.get(Tenant, account.tenant_id) if account else None
    if account is None or tenant is None or account.provider != provider:
        return reply(404, "no such provider account")
    try:
        instance = _instance(request, account)
    except Exception as exc:  # a configuration stored before a rule that now refuses it, a lost key
        log.warning(
            "callback for an account whose configuration cannot be used",
            extra={"account": account_id, "error": type(exc).__name__},
        )
        # 503: the vendor tries again later, by when the tenant may have fixed the account.
        return reply(503, "this provider account's configuration cannot be used; the tenant must update it")
    return account, tenant, instance


def _instance(request: Request, account: ProviderAccount) -> Provider:
    """The account's provider, to verify and parse callbacks (no connection pool: the context
    is only for sending). Raises when its stored config cannot be used."""
    state = app_state(request)
    cls = accounts.provider_class(account.provider, account.channel)
    urls = accounts.callback_urls(state.settings.resolved_public_url, account.provider, account.id)
    return cls.from_config(
        accounts.unseal(cls, account.config, state.secrets),
        ProviderContext(
            http=None,
            outbox_dir=state.settings.resolved_outbox_dir,
            status_url=urls["status"],
            inbound_url=urls["inbound"],
        ),
    )


def _public_url(request: Request) -> str:
    """The URL the vendor called, as the vendor saw it (behind a proxy: our public_url)."""
    base = app_state(request).settings.resolved_public_url.rstrip("/")
    query = request.url.query
    return f"{base}{request.url.path}" + (f"?{query}" if query else "")


async def _verified(
    request: Request, provider: str, account_id: str, inbound: bool = False
) -> tuple[Any, bytes] | Response:
    body = request.url.query.encode() if request.method == "GET" else await request.body()
    if len(body) > MAX_CALLBACK_BYTES:
        return reply(413, "callback body too large")
    loaded = await _load(request, provider, account_id)
    if isinstance(loaded, Response):
        return loaded
    account, tenant, instance = loaded
    if inbound and account.channel != "sms":
        # Replies and keywords are SMS: an email account's secret must not opt numbers out (nor
        # its URL confirm a subscription for messages it would then refuse).
        return reply(404, "this account takes no inbound messages (only SMS accounts do)")
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        await instance.prepare_callback(headers, body)
        authentic = instance.verify_callback(headers, body, _public_url(request))
    except Exception as exc:  # whatever an unsigned body makes a check raise (nesting, sizes)
        log.warning("callback check failed", extra={"account": account_id, "error": type(exc).__name__})
        authentic = False
    if not authentic:
        log.warning("callback with a bad signature", extra={"account": account_id})
        return reply(401, "bad signature")
    if await instance.handle_control(headers, body):
        return _answer(instance)
    return (account, tenant, instance), body


# What parsing a signed but odd body may raise: a 400, not a 500 (RecursionError: JSON nested
# thousands deep, which msgspec walks even to skip an unknown field).
UNREADABLE = (msgspec.DecodeError, ValueError, KeyError, RecursionError)


def _answer(instance: Provider) -> Response:
    status, media_type, content = instance.callback_answer
    return Response(content, status_code=status, media_type=media_type)


@router.get(
    "/{provider}/{account_id}/status", operation_id="delivery_status_by_get", responses=CALLBACK_ERRORS
)
@router.post("/{provider}/{account_id}/status", responses=CALLBACK_ERRORS)
async def delivery_status(request: Request, provider: str, account_id: str) -> Response:
    checked = await _verified(request, provider, account_id)
    if isinstance(checked, Response):
        return checked
    (account, tenant, instance), body = checked
    try:
        events = instance.parse_receipts(body)
    except UNREADABLE as exc:
        return reply(400, f"unreadable receipt: {exc}")
    changes = EventBuffer()

    def provider_of(row: ProviderAccount) -> Provider:
        return instance if row.id == account.id else _instance(request, row)

    async with app_state(request).db.begin() as session:
        sharing = service.Sharing(session, account, provider_of)
        for event in events:
            event_id = await service.store_once(
                session, account, "status", event.event_key, service.event_payload(event)
            )
            if event_id is None:
                continue  # the same receipt again: already applied
            outcome = await service.apply_receipt(session, tenant, account, event, changes, sharing)
            await service.mark(session, event_id, outcome)
        await changes.write(session, utcnow())
    return _answer(instance)


@router.get("/{provider}/{account_id}/inbound", operation_id="inbound_by_get", responses=CALLBACK_ERRORS)
@router.post("/{provider}/{account_id}/inbound", responses=CALLBACK_ERRORS)
async def inbound(request: Request, provider: str, account_id: str) -> Response:
    checked = await _verified(request, provider, account_id, inbound=True)
    if isinstance(checked, Response):
        return checked
    (account, tenant, instance), body = checked
    try:
        messages = instance.parse_inbound(body)
    except UNREADABLE as exc:
        return reply(400, f"unreadable message: {exc}")
    state = app_state(request)
    replies: list[tuple[str, str]] = []
    async with state.db.begin() as session:
        for message in messages:
            event_id = await service.store_once(
                session, account, "inbound", message.event_key, service.event_payload(message)
            )
            if event_id is None:
                continue
            message = replace(message, from_number=await service.sender_of(session, tenant, account, message))
            try:
                outcome, text = await service.apply_inbound(session, tenant, message)
            except ValidationFailed as exc:  # a sender that is no phone number: before any write
                # One unreadable sender must not roll back (and 4xx) the other STOPs of the batch.
                outcome, text = f"ignored: {exc}", None
            await service.mark(session, event_id, outcome)
            if text is not None:
                replies.append((message.from_number, text))
    # The opt-out is committed above whatever happens to its confirmation: a reply that cannot be
    # sent (say, no sender identity for transactional SMS) must never roll a STOP back.
    sent = 0
    for to, text in replies:
        try:
            await send_system_sms(state.db, state.secrets, tenant, to, text)
            sent += 1
        except Exception as exc:
            log.warning("keyword reply not sent", extra={"account": account.id, "error": str(exc)})
    if sent:
        state.wake_dispatcher()
    return _answer(instance)
