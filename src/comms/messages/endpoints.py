"""HTTP routes of the messages domain: the bulk send, logs and batches."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.exc import IntegrityError

from comms import metrics
from comms.dispatch.wakeup import notify_work
from comms.errors import BadRequest, FieldError, Forbidden, NotFound, PayloadTooLarge, ValidationFailed
from comms.kit.clock import NotRfc3339, isoformat, parse_rfc3339, utcnow
from comms.kit.http import FastJSONResponse, encode_json, envelope, reply
from comms.kit.ids import new_id
from comms.kit.memory import release_free_memory
from comms.kit.nul import refuse_in_body
from comms.kit.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    KeysetPage,
    Page,
    decode_cursor,
    encode_cursor,
)
from comms.messages import idempotency
from comms.messages.recipients import InvalidRecipient, normalize_email, normalize_phone, recipient_key
from comms.messages.repository import BatchRepository, LogFilters, MessageRepository
from comms.messages.schemas import (
    ERROR_RESPONSES,
    BatchEnvelope,
    BulkSendRequest,
    Channel,
    CommunicationLogEnvelope,
    CommunicationLogListResponse,
    bulk_body_decoder,
)
from comms.messages.service import SubmitOptions, submit_bulk
from comms.messages.status import FINAL, Status
from comms.messages.views import BatchDisplay, message_item
from comms.models import AuditEvent, Batch
from comms.state import app_state
from comms.tenants.auth import LogsPrincipal, SendPrincipal
from comms.tenants.scopes import Scope
from comms.tenants.service import Principal

router = APIRouter(prefix="/communication", tags=["Communication Service"])

FINAL_STATUSES = frozenset(s.value for s in FINAL)
BULK_PAGE_SIZE = 100
LARGE_BULK = 10_000  # recipients; after such a request, hand freed memory back to the system
PageQuery = Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")]
PageSizeQuery = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
UnmaskQuery = Annotated[bool, Query(description="Show raw recipients (needs the pii:read scope).")]


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


class LogOrder(StrEnum):
    NEWEST = "newest"
    OLDEST = "oldest"


_ORDERS = frozenset(o.value for o in LogOrder)
# What kit/ids.py makes: a decoded cursor must be exactly this (the database gets it as a bound).
_LOG_ID = re.compile(r"log_[0-9a-f]{32}")


def may_unmask(principal: Principal, unmask: bool) -> bool:
    if unmask and Scope.PII_READ.value not in principal.scopes:
        raise Forbidden("unmask=true needs the 'pii:read' scope")
    return unmask


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or PayloadTooLarge as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_bulk(raw: bytes) -> Any:
    refuse_in_body(raw)
    try:
        return bulk_body_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        message, _, where = text.partition(" - at `")
        # msgspec names dict values "[...]": point at the mapping itself.
        field = where.rstrip("`").removeprefix("$").lstrip(".").replace("[...]", "")
        if unknown := _UNKNOWN_FIELD.fullmatch(message):  # name the field itself, not its parent
            field = f"{field}.{unknown[1]}" if field else unknown[1]
            message = "unknown field"
        field = field or "body"
        message = message.replace("Object missing required field", "missing required field")
        raise ValidationFailed(f"{field}: {message}", [FieldError(field, message)]) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except UnicodeDecodeError:  # msgspec reads the body's strings as UTF-8 (CONTRACT.md: UTF-8 only)
        raise BadRequest("malformed JSON: the body is not valid UTF-8") from None


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(.*)`")


@router.post(
    "/bulk",
    status_code=202,
    summary="Send bulk SMS or email to multiple recipients",
    description="Send bulk SMS or email to multiple recipients. Supports template variable substitution, "
    "records send status per item. References: ePrivacy Directive 2002/58/EC, CAN-SPAM Act.",
    response_model=CommunicationLogListResponse,
    responses={**ERROR_RESPONSES, 200: {"model": CommunicationLogListResponse, "description": "dry_run"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BulkSendRequest"}}},
        }
    },
)
async def send_bulk(
    request: Request,
    principal: SendPrincipal,
    page_size: PageSizeQuery = BULK_PAGE_SIZE,
    unmask: UnmaskQuery = False,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> FastJSONResponse:
    state = app_state(request)
    raw = await read_body(request, state.settings.max_body_bytes)
    body = _decode_bulk(raw)
    options = SubmitOptions(
        max_recipients=state.settings.max_recipients,
        page_size=page_size,
        unmask=may_unmask(principal, unmask),
        api_key_id=principal.key_id,
        ip=_client_ip(request),
    )
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None and not body.dry_run else None
    fingerprint = ""
    if key is not None:
        fingerprint = idempotency.request_fingerprint(request.url.path, body, options.unmask)
        path_and_query = request.url.path + "?" + request.url.query

        def earlier() -> str:
            return idempotency.earlier_fingerprint(path_and_query, raw)

        async with state.db.read() as session:
            previous = await idempotency.find_previous(
                session, principal.tenant_id, key, fingerprint, earlier
            )
        if previous is not None:
            return await _replay(request, principal, previous, options.unmask)
    try:
        async with state.db.begin() as session:
            if key is not None:
                await idempotency.forget_expired(session, utcnow(), principal.tenant_id, key)
            result = await submit_bulk(session, principal, body, state.secrets, options)
            code = 200 if body.dry_run else 202
            payload = envelope(
                code,
                "dry run: nothing was stored or sent" if body.dry_run else "accepted",
                items=result.items,
                total=result.total,
                pagination=Page(1, page_size).info(result.total),
                batch_id=result.batch_id,
                counts=result.counts,
            )
            if key is not None:
                idempotency.remember(
                    session, principal.tenant_id, key, fingerprint, code, encode_json(payload)
                )
            if not body.dry_run and result.counts.get("queued"):
                await notify_work(session)
    except IntegrityError:
        if key is None:
            raise
        # Another request with the same key committed first: answer as it did.
        async with state.db.read() as session:
            previous = await idempotency.find_previous(session, principal.tenant_id, key, fingerprint)
        if previous is None:
            raise
        return await _replay(request, principal, previous, options.unmask)
    if options.unmask and result.items and not body.dry_run:  # a dry run shows only what was sent
        await audit_reveal(
            request, principal, {"route": "bulk", "ids": [i["id"] for i in result.items if i["id"]]}
        )
    if not body.dry_run:
        for status, count in result.counts.items():
            metrics.ACCEPTED.labels(principal.tenant_id, body.channel, status).inc(count)
        if (result.counts.get("queued") or 0) > 0:
            state.wake_dispatcher()
    response = FastJSONResponse(payload, status_code=code)
    if len(body.recipients) >= LARGE_BULK:
        del body, raw, result
        release_free_memory()
    return response


def _parse_time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except NotRfc3339 as exc:
        offset = " (with a time zone offset or Z)" if exc.missing_offset else ""
        raise ValidationFailed.single(
            name, f"must be an RFC 3339 timestamp{offset}, e.g. 2026-04-15T10:00:00Z"
        ) from None


async def _replay(
    request: Request, principal: Principal, previous: tuple[int, bytes], unmask: bool
) -> FastJSONResponse:
    """The stored answer to a repeated request; raw recipients shown again are audited again."""
    payload = msgspec.json.decode(previous[1])
    if unmask and payload.get("items"):
        ids = [i["id"] for i in payload["items"] if i.get("id")]
        await audit_reveal(request, principal, {"route": "bulk", "ids": ids, "replay": True})
    return FastJSONResponse(payload, status_code=previous[0])


async def audit_reveal(request: Request, principal: Principal, what: dict[str, Any]) -> None:
    """A ``pii.revealed`` audit event: raw recipients were shown (``what``: the route, the ids)."""
    async with app_state(request).db.begin() as session:
        session.add(
            AuditEvent(
                id=new_id("aud"),
                tenant_id=principal.tenant_id,
                actor=principal.key_id,
                action="pii.revealed",
                ip=_client_ip(request),
                details=what,
                created_at=utcnow(),
            )
        )


@router.get("/logs", response_model=CommunicationLogListResponse, responses=ERROR_RESPONSES)
async def list_logs(
    request: Request,
    principal: LogsPrincipal,
    page: PageQuery = 1,
    page_size: PageSizeQuery = DEFAULT_PAGE_SIZE,
    channel: Channel | None = None,
    status: Status | None = None,
    recipient: str | None = None,
    user_id: str | None = None,
    batch_id: str | None = None,
    template_id: str | None = None,
    created_from: str | None = None,
    created_to: str | None = None,
    unmask: UnmaskQuery = False,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="`pagination.next_cursor` of the page before: the items after it, however "
            "many there are and however many arrived since (instead of `page`).",
        ),
    ] = None,
    count: Annotated[
        bool,
        Query(
            description="false: leave `total` and `total_pages` null and do not count the matching "
            "items (a pass over them on a tenant with millions); `has_next` still tells.",
        ),
    ] = True,
    order: Annotated[
        LogOrder,
        Query(
            description="newest (default) or oldest first; a batch oldest first is in the order "
            "of the request's recipients, as the 202 listed them.",
        ),
    ] = LogOrder.NEWEST,
) -> FastJSONResponse:
    """Log items, newest first (or `order=oldest`). `recipient` is matched exactly after
    normalization. Page by `page`, or by `cursor` (`pagination.next_cursor`), which stays in
    place while items arrive and costs the same however deep it goes."""
    show_raw = may_unmask(principal, unmask)
    after = _cursor_position(cursor, page, order)
    key = None
    if recipient is not None:
        key = _recipient_filter_key(principal, recipient, channel)
    filters = LogFilters(
        channel=channel.value if channel else None,
        status=status.value if status else None,
        recipient_key=key,
        user_id=user_id,
        batch_id=batch_id,
        template_id=template_id,
        created_from=_parse_time("created_from", created_from),
        created_to=_parse_time("created_to", created_to),
    )
    offset = 0 if after is not None else Page(page, page_size).offset
    async with app_state(request).db.read() as session:
        rows, total, more = await MessageRepository(session, principal.tenant_id).list(
            filters, offset, page_size, after=after, oldest_first=order == LogOrder.OLDEST, count=count
        )
        batches = await BatchRepository(session, principal.tenant_id).get_many({m.batch_id for m in rows})
    displays = {bid: BatchDisplay.of(b) for bid, b in batches.items()}
    items = [message_item(m, displays.get(m.batch_id), show_raw) for m in rows]
    if show_raw and items:
        await audit_reveal(request, principal, {"route": "logs", "ids": [m.id for m in rows]})
    paging = KeysetPage(
        page=None if after is not None else page,
        page_size=page_size,
        total=total,
        has_next=more,
        # A cursor is made from a page that came before (and offset 0 is the first page).
        has_prev=after is not None or page > 1,
        next_cursor=encode_cursor(f"{order.value}:{rows[-1].id}") if more and rows else None,
    )
    return reply(200, "ok", items=items, total=total, pagination=paging.info())


def _cursor_position(cursor: str | None, page: int, order: LogOrder) -> str | None:
    """The log id a cursor names (it carries the order it was made in: the same id is another
    place in the other order); a request gives either a cursor or a page number."""
    if cursor is None:
        return None
    if page != 1:
        raise ValidationFailed.single("cursor", "give either cursor or page, not both")
    made_for, _, position = (decode_cursor(cursor) or "").partition(":")
    if made_for not in _ORDERS or not _LOG_ID.fullmatch(position):
        raise ValidationFailed.single("cursor", "not a cursor this API gave (pagination.next_cursor)")
    if made_for != order.value:
        raise ValidationFailed.single(
            "cursor", f"this cursor lists order={made_for}; give that order with it"
        )
    return position


def _recipient_filter_key(principal: Principal, recipient: str, channel: Channel | None) -> str:
    from comms.compliance.settings import load_settings

    region = load_settings(principal.tenant.settings).default_region
    looks_like_email = "@" in recipient
    try:
        if channel == Channel.EMAIL or (channel is None and looks_like_email):
            return recipient_key("email", normalize_email(recipient))
        return normalize_phone(recipient, region)
    except InvalidRecipient as exc:
        raise ValidationFailed.single("recipient", exc.reason) from None


@router.get("/logs/{log_id}", response_model=CommunicationLogEnvelope, responses=ERROR_RESPONSES)
async def get_log(
    request: Request, log_id: str, principal: LogsPrincipal, unmask: UnmaskQuery = False
) -> Any:
    show_raw = may_unmask(principal, unmask)
    async with app_state(request).db.read() as session:
        message = await MessageRepository(session, principal.tenant_id).get(log_id)
        if message is None:
            raise NotFound(f"no log item {log_id}")
        batch = await BatchRepository(session, principal.tenant_id).get(message.batch_id)
    if show_raw:
        await audit_reveal(request, principal, {"route": "log", "ids": [log_id]})
    return reply(200, "ok", data=message_item(message, BatchDisplay.of(batch) if batch else None, show_raw))


def _batch_data(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    done_count = sum(n for status, n in counts.items() if status in FINAL_STATUSES)
    total = sum(counts.values())
    return {
        "id": batch.id,
        "channel": batch.channel,
        "category": batch.category,
        "template_id": batch.template_id,
        "user_id": batch.user_id,
        "total": batch.total,
        "counts": counts,
        "progress": round(done_count / total, 4) if total else 1.0,
        "done": done_count == total,
        "send_at": isoformat(batch.send_at),
        "created_at": isoformat(batch.created_at),
        "cancelled_at": isoformat(batch.cancelled_at),
        "metadata": batch.metadata_ or None,
    }


@router.get("/batches/{batch_id}", response_model=BatchEnvelope, responses=ERROR_RESPONSES)
async def get_batch(request: Request, batch_id: str, principal: LogsPrincipal) -> Any:
    async with app_state(request).db.read() as session:
        batch = await BatchRepository(session, principal.tenant_id).get(batch_id)
        if batch is None:
            raise NotFound(f"no batch {batch_id}")
        counts = await MessageRepository(session, principal.tenant_id).status_counts(batch_id)
    return reply(200, "ok", data=_batch_data(batch, counts))


@router.post("/batches/{batch_id}/cancel", response_model=BatchEnvelope, responses=ERROR_RESPONSES)
async def cancel_batch(request: Request, batch_id: str, principal: SendPrincipal) -> Any:
    """Cancel every item not yet handed to a provider (`scheduled`, `queued`, `deferred`)."""
    now = utcnow()
    async with app_state(request).db.begin() as session:
        batch = await BatchRepository(session, principal.tenant_id).get(batch_id)
        if batch is None:
            raise NotFound(f"no batch {batch_id}")
        messages = MessageRepository(session, principal.tenant_id)
        cancelled = await messages.cancel_pending(batch_id, now)
        counts = await messages.status_counts(batch_id)
        if not cancelled and FINAL_STATUSES.issuperset(counts):
            # Every item is final: nothing was cancelled, and the batch does not say it was.
            return reply(200, "nothing to cancel: every item is final", data=_batch_data(batch, counts))
        # Also when only items on their way to a provider are left: one that comes back (a retry,
        # a deferral) is cancelled then (Dispatcher._deliver reads cancelled_at).
        batch.cancelled_at = batch.cancelled_at or now
    return reply(200, f"cancelled {cancelled} item(s)", data=_batch_data(batch, counts))


@router.post("/batches/{batch_id}/retry", response_model=BatchEnvelope, responses=ERROR_RESPONSES)
async def retry_batch(request: Request, batch_id: str, principal: SendPrincipal) -> Any:
    """Re-queue only the `failed` and `undelivered` items: a new attempt, the same log ids."""
    state = app_state(request)
    now = utcnow()
    async with state.db.begin() as session:
        batch = await BatchRepository(session, principal.tenant_id).get(batch_id)
        if batch is None:
            raise NotFound(f"no batch {batch_id}")
        messages = MessageRepository(session, principal.tenant_id)
        requeued = await messages.requeue_failed(batch_id, now)
        if requeued and batch.cancelled_at is not None:
            # Asked for again after a cancel: what is re-queued goes out (what the cancel stopped
            # stays cancelled), so the dispatcher must no longer take the batch for cancelled.
            batch.cancelled_at = None
        counts = await messages.status_counts(batch_id)
        if requeued:
            await notify_work(session)
    if requeued:
        state.wake_dispatcher()
    return reply(200, f"re-queued {requeued} item(s)", data=_batch_data(batch, counts))


__all__ = ["BulkSendRequest", "router"]
