"""HTTP routes of the compliance domain: settings, sending-domain verification, suppressions,
consents, erasure, audit trail, the ``mailto:`` unsubscribe, and the public unsubscribe page
(``/u/{token}``, RFC 8058 one-click)."""

from __future__ import annotations

import html
import json
import logging
import re
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from comms.compliance import audit, keywords, service
from comms.compliance.dns_auth import (
    DnsUnavailable,
    authenticate_domain,
    impersonated_provider,
    make_resolver,
)
from comms.compliance.domain_checks import dkim_signers
from comms.compliance.feedback import COMPLAINT_TYPES, NotAFeedbackReport, parse_feedback_report
from comms.compliance.gates import weakens_legal_consent
from comms.compliance.quiet_hours import widens_legal_window
from comms.compliance.repository import ConsentStore, ContactLinkStore, SuppressionStore
from comms.compliance.schemas import (
    ConsentCreate,
    ContactLinks,
    DomainVerify,
    ErasureCreate,
    MailtoUnsubscribe,
    SuppressionCreate,
)
from comms.compliance.settings import READ_ONLY_FIELDS, TenantSettings, load_settings, unplanned_region
from comms.compliance.unsubscribe import UnsubscribeSigner, mailto_token_of
from comms.errors import (
    ApiError,
    BadRequest,
    FieldError,
    NotFound,
    Unavailable,
    ValidationFailed,
    pydantic_field,
    pydantic_message,
)
from comms.kit.clock import isoformat, utcnow
from comms.kit.domains import normalize_domain, valid_selector
from comms.kit.http import reply
from comms.kit.masking import mask_recipient
from comms.kit.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE, Page
from comms.messages.endpoints import audit_reveal, may_unmask, read_body
from comms.messages.recipients import InvalidRecipient, normalize_email, recipient_key
from comms.messages.schemas import ERROR_RESPONSES, Channel
from comms.messages.system import marketing_verdict, send_system_sms
from comms.models import AuditEvent, Consent, Message, Suppression, Tenant
from comms.receipts.service import first_complaint_about, record_once
from comms.state import AppState, app_state
from comms.tenants.auth import AnyPrincipal, require
from comms.tenants.scopes import Scope
from comms.tenants.service import Principal

log = logging.getLogger("comms.compliance")
router = APIRouter(prefix="/communication", tags=["Compliance"])
public = APIRouter(tags=["Unsubscribe (public)"])

AdminPrincipal = Annotated[Principal, Depends(require(Scope.ADMIN))]
SuppressionsWritePrincipal = Annotated[Principal, Depends(require(Scope.SUPPRESSIONS_WRITE))]
LogsPrincipal = Annotated[Principal, Depends(require(Scope.LOGS_READ))]
PageQuery = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PageSizeQuery = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _region(principal: Principal) -> str:
    return load_settings(principal.tenant.settings).default_region


# ---- settings ------------------------------------------------------------------------------------


@router.get("/settings", responses=ERROR_RESPONSES)
async def get_settings(principal: AnyPrincipal) -> Any:
    return reply(200, "ok", data=load_settings(principal.tenant.settings).model_dump())


_SETTINGS_BODY = {  # read by hand (a merge of the fields given), so documented by hand
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "minProperties": 1,
                    "description": "Fields of the tenant's settings to change (as GET shows them); "
                    "the others keep their values. Unknown and read-only fields are a 422.",
                    "examples": [{"default_region": "CN", "log_retention_days": 365}],
                }
            }
        },
    }
}


@router.put("/settings", responses=ERROR_RESPONSES, openapi_extra=_SETTINGS_BODY)
async def put_settings(request: Request, principal: AdminPrincipal) -> Any:
    """Merge the fields given into the tenant's settings (unknown fields are a 422)."""
    try:
        # msgspec, as the bulk endpoint: it refuses lone surrogates, which json.loads lets through
        # and the database driver then cannot encode.
        changes = msgspec.json.decode(await request.body())
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise BadRequest("malformed JSON") from None
    if not isinstance(changes, dict) or not changes:
        raise ValidationFailed.single("body", "expected an object with the settings to change")
    merged = load_settings(principal.tenant.settings).model_dump()
    for name, how in READ_ONLY_FIELDS.items():
        if name in changes and changes[name] != merged.get(name):
            raise ValidationFailed.single(name, f"read-only: {how}")
    region = changes.get("default_region")
    why = unplanned_region(region) if isinstance(region, str) else None
    if why is not None:
        raise ValidationFailed.single("default_region", why)
    # Legal floors a tenant may tighten, never loosen (anything else malformed: the model says so)
    for name, weaker in (("consent_policy", weakens_legal_consent), ("quiet_hours", widens_legal_window)):
        per_region = changes.get(name)
        for region, value in per_region.items() if isinstance(per_region, dict) else ():
            key = str(region).strip()  # as the settings store it (" us" is US)
            why = weaker(key, value) if isinstance(value, str) else None
            if why is not None:
                raise ValidationFailed.single(f"{name}.{key.upper()}", why)
    merged.update(changes)
    try:
        validated = TenantSettings.model_validate(merged)
    except ValidationError as exc:
        errors = [
            {"field": pydantic_field(e["loc"]) or "body", "message": pydantic_message(e)}
            for e in exc.errors()
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


@router.post("/settings/domains/{domain}/verify", responses=ERROR_RESPONSES)
async def verify_domain(
    request: Request, domain: str, principal: AdminPrincipal, body: DomainVerify | None = None
) -> Any:
    """Look up the sending domain's SPF, DKIM and DMARC records and store the verdict in the
    settings (``email_domains``). Marketing email needs all three to pass (COMPLIANCE.md M5).
    The answer is 200 with the verdict, passed or not; 503 when the DNS could not be asked."""
    try:
        name = normalize_domain(domain)
    except ValueError as exc:
        raise ValidationFailed.single("domain", str(exc)) from None
    provider = impersonated_provider(name)
    if provider is not None:
        raise ValidationFailed.single(
            "domain",
            f"{provider} is a mailbox provider's domain: only its owner can authenticate mail from it",
        )
    current = load_settings(principal.tenant.settings)
    earlier = current.email_domains.get(name)
    selectors = (body.dkim_selectors if body else None) or (earlier.dkim_selectors if earlier else None)
    if not selectors:
        raise ValidationFailed.single(
            "dkim_selectors",
            f"required the first time: the selector(s) your DKIM signer uses (s1 for s1._domainkey.{name})",
        )
    bad = [s for s in selectors if not valid_selector(s)]
    if bad:
        raise ValidationFailed.single("dkim_selectors", f"not a DKIM selector: {bad[0]!r}")
    state = app_state(request)
    async with state.db.read() as session:
        signers = await dkim_signers(session, principal.tenant_id, name, state.secrets)
    try:
        result = await authenticate_domain(
            make_resolver(state.settings.dns_nameserver),
            name,
            list(dict.fromkeys(selectors)),
            utcnow(),
            signers,
        )
    except DnsUnavailable as exc:
        raise Unavailable(f"{exc}; nothing was changed, try again later") from None
    async with state.db.begin() as session:
        tenant = await session.get(Tenant, principal.tenant_id)
        assert tenant is not None
        fresh = load_settings(tenant.settings)
        fresh.email_domains[name] = result
        tenant.settings = fresh.model_dump()
        tenant.updated_at = utcnow()
        audit.record(
            session, tenant.id, "domain.verified", actor=principal.key_id, ip=_ip(request),
            domain=name, verified=result.verified, missing=result.missing(),
        )  # fmt: skip
    verdict = "verified" if result.verified else f"not verified: missing {', '.join(result.missing())}"
    return reply(200, f"{name} {verdict}", data={"domain": name, **result.model_dump()})


def _address_filter(
    principal: Principal, channel: Channel | None, address: str | None
) -> tuple[Channel | None, str | None]:
    """(channel, hash) to filter a list by, for an ``address`` given in any format; without a
    channel, an address with an ``@`` is an email address, any other a phone number (as
    /logs?recipient= reads it)."""
    if address is None:
        return channel, None
    if channel is None:
        channel = Channel.EMAIL if "@" in address else Channel.SMS
    return channel, service.contact(principal.tenant, channel.value, address, _region(principal)).digest


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
    channel, digest = _address_filter(principal, channel, address)
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


@router.delete("/suppressions/{channel}/{address:path}", responses=ERROR_RESPONSES)
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


def _mailto_request(content_type: str, raw: bytes) -> tuple[str | None, str | None]:
    """(recipient, sender) from a JSON notification or a raw RFC 5322 message."""
    if content_type.startswith("message/rfc822"):
        message = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
        candidates: list[str] = []
        for header in ("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc"):
            candidates += [addr for _, addr in getaddresses(message.get_all(header, []))]
        recipient = next((a for a in candidates if mailto_token_of(a)), candidates[0] if candidates else None)
        senders = [addr for _, addr in getaddresses(message.get_all("From", []))]
        return recipient, (senders[0] if senders else None)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("malformed JSON (or send the message itself as message/rfc822)") from None
    try:
        body = MailtoUnsubscribe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = pydantic_field(first["loc"]) or "body"
        raise ValidationFailed.single(field, pydantic_message(first)) from None
    return body.recipient, body.sender


@router.post(
    "/unsubscribe/mailto",
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": MailtoUnsubscribe.model_json_schema()},
                "message/rfc822": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def mailto_unsubscribe(request: Request, principal: SuppressionsWritePrincipal) -> Any:
    """An email to the ``<mailto:unsub+TOKEN@domain>`` of a List-Unsubscribe header (RFC 2369):
    its recipient address and sender as JSON, or the message itself as ``message/rfc822``. A
    genuine token of the caller's tenant suppresses the message's recipient at once (source
    ``mailto``); the token, not the sender, says who (forwarded mail and aliases still work)."""
    raw = await read_body(request, MAX_REPORT_BYTES)
    recipient, sender = _mailto_request(request.headers.get("content-type", "").lower(), raw)
    token = mailto_token_of(recipient) if recipient else None
    if token is None:
        raise ValidationFailed.single(
            "recipient", "expected the unsubscribe address unsub+TOKEN@domain of a List-Unsubscribe header"
        )
    sender_key: str | None = None
    if sender:
        try:
            sender_key = recipient_key("email", normalize_email(sender))
        except InvalidRecipient as exc:
            raise ValidationFailed.single("sender", exc.reason) from None
    state = app_state(request)
    log_id = UnsubscribeSigner(state.settings.resolved_secret_key).verify_mailto(token, utcnow())
    if log_id is None:
        raise NotFound("unsubscribe token not valid")
    async with state.db.begin() as session:
        message = await session.get(Message, log_id)
        if message is not None and message.tenant_id != principal.tenant_id:
            raise NotFound("unsubscribe token not valid")
        if message is None:
            # Erased since: the erasure left a do-not-contact entry already.
            return reply(200, "nothing to suppress: that message's log item no longer exists")
        who = service.contact_of_message(principal.tenant, message)
        changed = await service.suppress(
            session, principal.tenant, who, "unsubscribed", "mailto", actor=principal.key_id, ip=_ip(request)
        )
    data = {
        "log_id": log_id,
        "channel": who.channel,
        "address": mask_recipient(who.channel, who.address),
        "sender_is_recipient": sender_key == who.key,
    }
    return reply(200, "suppressed" if changed else "already suppressed", data=data)


# ---- complaint feedback loops (ARF) --------------------------------------------------------------

MAX_UNSUBSCRIBE_BODY = 16 * 1024  # bytes of a one-click unsubscribe POST
# RFC 8058's field, form-encoded (List-Unsubscribe=One-Click) or as a multipart/form-data part.
_ONE_CLICK = re.compile(rb'List-Unsubscribe(?:=|"\r\n(?:[^\r\n]+\r\n)*\r\n)One-Click')
FEEDBACK_LOOP_SOURCE = "feedback_loop"  # receipt_events.account_id of reports: one per report
MAX_REPORT_BYTES = 10 * 1024 * 1024  # a report quotes the message, attachments and all


@router.post(
    "/complaints/arf",
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def feedback_report(request: Request, principal: SuppressionsWritePrincipal) -> Any:
    """A mailbox provider's complaint report (ARF, RFC 5965), as the feedback loop mailed it to the
    tenant: the email itself as ``message/rfc822``. A complaint (``Feedback-Type: abuse`` or
    ``fraud``) about a message of the caller's tenant suppresses its recipient for every category
    but verification and counts in the complaint rate (COMPLIANCE.md M6); other types change
    nothing. The message is found by its signed unsubscribe token, else by its Message-ID."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("message/rfc822"):
        raise BadRequest("send the feedback report email itself, as Content-Type: message/rfc822")
    state = app_state(request)
    signer = UnsubscribeSigner(state.settings.resolved_secret_key)
    try:
        report = parse_feedback_report(await read_body(request, MAX_REPORT_BYTES), signer, utcnow())
    except NotAFeedbackReport as exc:
        raise ValidationFailed.single("body", str(exc)) from None
    async with state.db.begin() as session:
        message = await session.get(Message, report.log_id)
        if message is None or message.tenant_id != principal.tenant_id or message.channel != "email":
            raise NotFound("the reported message is not an email of this tenant (or its log item was erased)")
        who = service.contact_of_message(principal.tenant, message)
        complaint = report.feedback_type in COMPLAINT_TYPES
        # A report delivered twice (a forwarder's retry, a loop that resends) counts once.
        first = await record_once(
            session,
            principal.tenant_id,
            FEEDBACK_LOOP_SOURCE,
            "arf",
            "complaint" if complaint else "feedback",
            f"{principal.tenant_id}:{report.log_id}:{report.feedback_type}",
            json.dumps(
                {"log_id": report.log_id, "feedback_type": report.feedback_type, "found_by": report.found_by}
            ),
        )
        if complaint and first is not None:
            counted = await first_complaint_about(session, principal.tenant_id, message.id, "arf")
            await service.suppress(
                session,
                principal.tenant,
                who,
                "complaint",
                "feedback_loop",
                actor=principal.key_id,
                ip=_ip(request),
                counted=counted,
            )
    data = {
        "log_id": report.log_id,
        "feedback_type": report.feedback_type,
        "found_by": report.found_by,
        "address": mask_recipient(who.channel, who.address),
        "complaint": complaint,
        "duplicate": first is None,
    }
    if first is None:
        return reply(200, "this report was recorded before: nothing changed", data=data)
    return reply(
        200, "complaint recorded" if complaint else f"not a complaint ({report.feedback_type})", data=data
    )


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
        "collected_at": isoformat(row.collected_at),
        "created_at": isoformat(row.created_at),
    }


@router.post("/consents", status_code=201, responses=ERROR_RESPONSES)
async def add_consent(request: Request, body: ConsentCreate, principal: SuppressionsWritePrincipal) -> Any:
    if body.status == "opted_in" and body.basis is None:
        raise ValidationFailed.single("basis", "required when status is opted_in")
    if body.collected_at is not None and body.collected_at > utcnow() + timedelta(minutes=5):
        raise ValidationFailed.single("collected_at", "is in the future")
    if body.collected_at is not None and body.collected_at.year < 1970:
        raise ValidationFailed.single("collected_at", "is before 1970")
    who = service.contact(principal.tenant, body.channel.value, body.address, _region(principal))
    state = app_state(request)
    async with state.db.begin() as session:
        row, lifted, earlier = await service.record_consent(
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
            collected_at=body.collected_at,
        )
    message = "recorded; an earlier opt-out was lifted" if lifted else "recorded"
    confirmation: str | None = None
    if _asks_confirmation(body, earlier, lifted):
        note, confirmation = await _confirm_opt_in(state, principal.tenant, who.address)
        message += f"; {note}"
    data = {**_consent_data(row, False), "opt_out_lifted": lifted, "confirmation_id": confirmation}
    return reply(201, message, data=data)


CONFIRM_WITHIN = timedelta(hours=1)
_MAY_GO = frozenset({"queued", "scheduled", "deferred"})


def _asks_confirmation(body: ConsentCreate, earlier: str | None, lifted: bool) -> bool:
    """Whether an SMS opt-in is due its confirmation message (CTIA Messaging Principles 5.1.2):
    by default a new one (no opt-in on record, or one that lifted an opt-out) collected within
    the last hour; one without ``collected_at`` (an import, perhaps of a whole list) only when
    asked for with ``send_confirmation``."""
    if body.channel.value != "sms" or body.status != "opted_in":
        return False
    if body.send_confirmation is not None:
        return body.send_confirmation
    fresh = body.collected_at is not None and body.collected_at >= utcnow() - CONFIRM_WITHIN
    return fresh and (earlier != "opted_in" or lifted)


async def _confirm_opt_in(state: AppState, tenant: Tenant, address: str) -> tuple[str, str | None]:
    """Send the confirmation, if a marketing SMS could go to the number now (the gate's own
    verdict: a number that stays suppressed, or a +1 number without written consent, is never
    told it is subscribed). (What to tell the caller, the confirmation's log id or None.) The
    consent is committed already: nothing here may undo it."""
    try:
        status, error = await marketing_verdict(state.db, state.secrets, tenant, address)
        if status not in _MAY_GO:
            return f"no opt-in confirmation SMS: marketing SMS to this number is {status} ({error})", None
        log_id, status = await send_system_sms(
            state.db, state.secrets, tenant, address, keywords.opt_in_confirmation(tenant)
        )
    except Exception as exc:
        log.warning("opt-in confirmation not sent", extra={"tenant": tenant.id}, exc_info=True)
        reason = exc.message if isinstance(exc, ApiError) else "the service could not queue it"
        return f"the opt-in confirmation SMS was not sent: {reason}", None
    state.wake_dispatcher()
    return f"the opt-in confirmation SMS is {status}", log_id


@router.get("/consents", responses=ERROR_RESPONSES)
async def list_consents(
    request: Request,
    principal: LogsPrincipal,
    page: PageQuery = 1,
    page_size: PageSizeQuery = DEFAULT_PAGE_SIZE,
    channel: Channel | None = None,
    address: str | None = None,
    unmask: Annotated[
        bool, Query(description="Show raw addresses and the person's IP (needs the pii:read scope).")
    ] = False,
) -> Any:
    """Consent evidence (who, when, source, wording version, IP), newest first. Addresses are
    masked and the person's IP left out unless ``unmask=true`` (scope ``pii:read``; audited)."""
    may_unmask(principal, unmask)
    channel, digest = _address_filter(principal, channel, address)
    paging = Page(page, page_size)
    async with app_state(request).db.read() as session:
        rows, total = await ConsentStore(session, principal.tenant_id).list(
            paging.offset, page_size, channel.value if channel else None, digest
        )
    if unmask and rows:  # P1: every reveal of PII is audited, as for /logs
        await audit_reveal(request, principal, {"route": "consents", "ids": [r.id for r in rows]})
    return reply(
        200, "ok", items=[_consent_data(r, unmask) for r in rows], total=total, pagination=paging.info(total)
    )


@router.delete("/consents/{channel}/{address:path}", responses=ERROR_RESPONSES)
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


# ---- linked contacts (E6) ---------------------------------------------------------------------------

ContactId = Annotated[
    str, FastApiPath(min_length=1, max_length=200, description="The tenant's own id for the person.")
]


def _masked(channel: str, address: str) -> dict[str, str]:
    return {"channel": channel, "address": mask_recipient(channel, address)}


@router.put("/contacts/{contact}", responses=ERROR_RESPONSES)
async def link_contact(
    request: Request, contact: ContactId, body: ContactLinks, principal: SuppressionsWritePrincipal
) -> Any:
    """Link a person's addresses across channels (replacing those linked before): an objection to
    direct marketing recorded on any of them (``DELETE /communication/consents/...`` or a consent
    with ``status: opted_out``) suppresses marketing to all of them, GDPR Art. 21. One already
    recorded applies at once: ``data.suppressed`` lists what it suppressed now."""
    region = _region(principal)
    addresses: dict[tuple[str, str], service.Contact] = {}
    for i, given in enumerate(body.addresses):
        who = service.contact(
            principal.tenant, given.channel.value, given.address, region, field=f"addresses[{i}].address"
        )
        addresses.setdefault((who.channel, who.digest), who)
    async with app_state(request).db.begin() as session:
        newly = await service.link_contact(
            session,
            principal.tenant,
            contact,
            list(addresses.values()),
            actor=principal.key_id,
            ip=_ip(request),
        )
    data = {
        "contact": contact,
        "addresses": [_masked(a.channel, a.address) for a in addresses.values()],
        "suppressed": [_masked(a.channel, a.address) for a in newly],
    }
    message = "linked; an objection on one of them now covers the others" if newly else "linked"
    return reply(200, message, data=data)


@router.get("/contacts/{contact}", responses=ERROR_RESPONSES)
async def get_contact(request: Request, contact: ContactId, principal: LogsPrincipal) -> Any:
    """The addresses linked as the person (masked)."""
    async with app_state(request).db.read() as session:
        rows = await ContactLinkStore(session, principal.tenant_id).addresses(contact)
    if not rows:
        raise NotFound("no addresses are linked as this contact")
    return reply(
        200, "ok", data={"contact": contact, "addresses": [_masked(r.channel, r.address) for r in rows]}
    )


@router.delete("/contacts/{contact}", responses=ERROR_RESPONSES)
async def unlink_contact(request: Request, contact: ContactId, principal: SuppressionsWritePrincipal) -> Any:
    """Unlink the person's addresses. Suppressions an objection made stay: an objection is lifted
    only by a later opt-in of the address's own."""
    async with app_state(request).db.begin() as session:
        removed = await service.unlink_contact(
            session, principal.tenant, contact, actor=principal.key_id, ip=_ip(request)
        )
    if not removed:
        raise NotFound("no addresses are linked as this contact")
    return reply(200, "unlinked", data={"contact": contact, "removed": removed})


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


# The pages answer people: a link that is not valid is an HTML page too, not the JSON envelope.
_ENVELOPE = {"$ref": "#/components/schemas/SimpleResponse"}  # renamed dto.SimpleResponse (openapi.py)
_PAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Link not valid (an HTML page)", "content": {"text/html": {}}},
    413: {"description": "Body over 16 KB", "content": {"application/json": {"schema": _ENVELOPE}}},
    422: {
        "description": "Invalid path (NUL characters)",
        "content": {"application/json": {"schema": _ENVELOPE}},
    },
}


@public.get("/u/{token}", response_class=HTMLResponse, include_in_schema=True, responses=_PAGE_ERRORS)
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
        '<form method="post" action="">'
        '<button type="submit" style="font-size:1rem;padding:.5rem 1rem">Unsubscribe</button></form>'
    )
    return _page(
        "Unsubscribe",
        f"Stop receiving marketing messages and newsletters from {html.escape(tenant.name)} at {who}?",
        form,
    )


@public.post("/u/{token}", response_class=HTMLResponse, responses=_PAGE_ERRORS)
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
    # A public URL: its body is read only as far as a one-click form needs (RFC 8058 sends one
    # short field; a multipart one carries the same text).
    body = await read_body(request, MAX_UNSUBSCRIBE_BODY)
    source: service.Source = "one_click" if _ONE_CLICK.search(body) else "link"
    who = service.contact_of_message(tenant, message)
    async with app_state(request).db.begin() as session:
        await service.suppress(session, tenant, who, "unsubscribed", source, ip=_ip(request))
    return _page(
        "Unsubscribed",
        f"You will no longer receive marketing messages or newsletters from {html.escape(tenant.name)}.",
    )
