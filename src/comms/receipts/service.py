"""Applying provider callbacks: delivery receipts move statuses forward, never backward;
inbound SMS replies run the keyword rules (STOP, HELP, START).

Every event is stored first (as parsed), keyed by the vendor's own event id, with ON CONFLICT DO
NOTHING: the same receipt delivered twice is recorded and applied once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import msgspec
from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance import service as compliance
from comms.compliance.keywords import handle_inbound_sms
from comms.events.service import EventBuffer, item_event
from comms.kit.clock import utcnow
from comms.kit.db import is_sqlite
from comms.kit.ids import new_id
from comms.messages.status import Status, allowed_sources
from comms.models import Message, ProviderAccount, ReceiptEvent, Tenant
from comms.providers.base import DeliveryEvent, InboundSms, Provider

log = logging.getLogger("comms.receipts")
UNMATCHED = "unmatched"
UNMATCHED_FOR = timedelta(hours=1)  # how long a receipt waits for its send to be recorded


@dataclass(frozen=True, slots=True)
class Applied:
    new: bool  # False: seen before, nothing done
    outcome: str


def event_payload(event: DeliveryEvent | InboundSms) -> str:
    """What a receipt_events row keeps of one event of a callback: the event as comms read it,
    not the whole callback body (a vendor batches: 500 events would each keep all 500)."""
    return msgspec.json.encode({"event": event}).decode()


class _StoredReceipt(msgspec.Struct):
    event: DeliveryEvent


_decode_receipt = msgspec.json.Decoder(_StoredReceipt).decode


async def store_once(
    session: AsyncSession, account: ProviderAccount, kind: str, event_key: str, payload: str
) -> str | None:
    """Record the event (``event_payload``); its id, or None when it was already recorded."""
    return await record_once(
        session, account.tenant_id, account.id, account.provider, kind, event_key, payload
    )


async def record_once(
    session: AsyncSession, tenant_id: str, source: str, provider: str, kind: str, event_key: str, payload: str
) -> str | None:
    """Record an event once per ``source`` (a provider account, or another channel of reports such
    as a feedback loop) and ``event_key``; its id, or None when it was recorded before."""
    event_id = new_id("evt")
    values = {
        "id": event_id,
        "tenant_id": tenant_id,
        "account_id": source,
        "provider": provider,
        "kind": kind,
        "event_key": f"{kind}:{event_key}"[:200],
        "payload": payload,
        "received_at": utcnow(),
    }
    insert = sqlite_insert if is_sqlite(session) else pg_insert
    statement = (
        insert(ReceiptEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["account_id", "event_key"])
    )
    result = await session.execute(statement)
    return event_id if result.rowcount else None  # type: ignore[attr-defined]


COMPLAINTS_SOURCE = "complaints"  # receipt_events.account_id of complaints counted, one per message


async def first_complaint_about(session: AsyncSession, tenant_id: str, log_id: str, source: str) -> bool:
    """Whether this is the first complaint about the message from any source: a recipient who
    marks a message as spam may be reported by the provider's own event (SendGrid spamreport, SES
    Complaint, a webhook gateway's) and by the mailbox provider's feedback loop (ARF), and two
    ARF types (abuse, fraud) may name it; the complaint rate counts the complaint once."""
    payload = json.dumps({"log_id": log_id, "source": source})
    return (
        await record_once(session, tenant_id, COMPLAINTS_SOURCE, source, "complaint", log_id, payload)
        is not None
    )


class Sharing:
    """The tenant's other accounts whose vendor posts their callbacks where it posts
    ``account``'s (the same :meth:`Provider.callback_scope`): a receipt arriving on ``account``'s
    URL may be for a message one of them carried. Looked up once, and only when a receipt is not
    the account's own (their configs are decrypted to compare). An account whose config cannot be
    read now shares nothing."""

    def __init__(
        self,
        session: AsyncSession,
        account: ProviderAccount,
        provider_of: Callable[[ProviderAccount], Provider],
    ) -> None:
        self.session = session
        self.account = account
        self.provider_of = provider_of
        self._ids: frozenset[str] | None = None

    async def ids(self) -> frozenset[str]:
        if self._ids is None:
            self._ids = await self._look_up()
        return self._ids

    def _scope(self, row: ProviderAccount) -> str | None:
        try:
            return self.provider_of(row).callback_scope()
        except Exception:  # a config stored before a rule that now refuses it, a lost key
            log.warning("provider account config unusable", extra={"account": row.id})
            return None

    async def _look_up(self) -> frozenset[str]:
        scope = self._scope(self.account)
        if scope is None:
            return frozenset()
        others = (
            await self.session.scalars(
                select(ProviderAccount).where(
                    ProviderAccount.tenant_id == self.account.tenant_id,
                    ProviderAccount.provider == self.account.provider,
                    ProviderAccount.channel == self.account.channel,
                    ProviderAccount.id != self.account.id,
                )
            )
        ).all()
        return frozenset(other.id for other in others if self._scope(other) == scope)


async def _find_message(
    session: AsyncSession, account: ProviderAccount, event: DeliveryEvent, sharing: Sharing | None
) -> Message | None:
    """By our log id where the vendor echoes it, else by the vendor's own id within the account,
    then within those ``sharing`` its callbacks (where exactly one of them has it), and the
    recipient, where one vendor id covers several recipients. A message is only found through an
    account that may have carried it (see :func:`_may_have_carried`)."""
    key = _recipient_key(event.recipient)
    if event.message_id is not None:
        found = await session.get(Message, event.message_id)
        if found is not None and (key is None or found.recipient_key == key):
            if _may_have_carried(account, found, frozenset()):
                return found
            if (
                sharing is not None
                and found.provider_account_id is not None
                and _may_have_carried(account, found, await sharing.ids())
            ):
                return found
    if event.provider_message_id is None:
        return None
    vendor_ids = (event.provider_message_id, *event.other_provider_message_ids)
    found = await _by_vendor_id(session, [account.id], vendor_ids, key, unique=False)
    if found is None and sharing is not None and (siblings := await sharing.ids()):
        found = await _by_vendor_id(session, sorted(siblings), vendor_ids, key, unique=True)
    return found


async def _by_vendor_id(
    session: AsyncSession, accounts: list[str], vendor_ids: tuple[str, ...], key: str | None, unique: bool
) -> Message | None:
    """A message of these accounts with one of these vendor ids. ``unique``: None when two have
    it (ids of two accounts that happen to collide: settling either would be a guess)."""
    for vendor_id in vendor_ids:
        query = select(Message).where(
            Message.provider_account_id.in_(accounts),
            Message.provider_message_id == vendor_id,
            text("provider_message_id IS NOT NULL"),
        )
        if key is not None:
            query = query.where(Message.recipient_key == key)
        found = (await session.scalars(query.limit(2 if unique else 1))).all()
        if len(found) == 1:
            return found[0]
        if found:
            return None
    return None


async def _in_flight_elsewhere(session: AsyncSession, account: ProviderAccount, event: DeliveryEvent) -> bool:
    """Whether the message ``event`` names by our id is of the account's tenant and channel and
    still in flight (its send not recorded yet), though another account carried an earlier
    attempt of it."""
    found = await session.get(Message, event.message_id)
    return (
        found is not None
        and found.tenant_id == account.tenant_id
        and found.channel == account.channel
        and found.status in ("sending", "queued", "deferred")
    )


def _may_have_carried(account: ProviderAccount, message: Message, sharing: frozenset[str]) -> bool:
    """Whether ``account`` may have carried ``message``: the account that recorded it, or one
    ``sharing`` its callbacks (the same vendor account: its receipts are as authentic for both);
    or, while none has and its send is under way (a receipt faster than the send's own answer),
    any account of its channel; and any for a possible duplicate, whose earlier attempt may have
    gone elsewhere. Without this, whoever holds one account's callback secret (a gateway the
    tenant runs, a leaked token) could move the status of every message of the tenant, or
    suppress its recipients through fake complaints. (A message scheduled, queued, cancelled or
    refused before any send has no account either, and no receipt can be about it.)"""
    if message.channel != account.channel:
        return False
    not_recorded_yet = (
        message.provider is None and message.provider_account_id is None and message.status == "sending"
    )
    return not_recorded_yet or _recorded_by(account, message, sharing) or message.possible_duplicate


def _recorded_by(account: ProviderAccount, message: Message, sharing: frozenset[str]) -> bool:
    """Whether the account that carried ``message`` is ``account`` or one ``sharing`` its callbacks."""
    return message.provider_account_id == account.id or message.provider_account_id in sharing


def _recipient_key(recipient: str | None) -> str | None:
    """As log items key recipients: E.164 as is, email addresses wholly lower-cased."""
    if recipient is None:
        return None
    return recipient.lower() if "@" in recipient else recipient


async def apply_receipt(
    session: AsyncSession,
    tenant: Tenant,
    account: ProviderAccount,
    event: DeliveryEvent,
    events: EventBuffer | None = None,
    sharing: Sharing | None = None,
) -> str:
    """Apply one receipt that arrived on ``account``'s URL (``sharing``: the accounts whose
    callbacks arrive there too); a status it changes goes into ``events`` for the tenant's
    webhook."""
    message = await _find_message(session, account, event, sharing)
    if message is None and event.message_id is None and event.provider_message_id is not None:
        # Vendors that name only their own id can report before the dispatcher has recorded that
        # id (it records a whole claimed batch at once): kept, and applied again shortly.
        return UNMATCHED
    if (
        message is None
        and event.message_id is not None
        and await _in_flight_elsewhere(session, account, event)
    ):
        # Our id, on a row still recording an earlier attempt's account (a retry or a deferral
        # that went out through this account instead): applied once this send is recorded.
        return UNMATCHED
    if message is None or message.tenant_id != tenant.id:
        return "ignored: unknown message"
    target = Status.DELIVERED if event.status == "delivered" else Status.UNDELIVERED
    now = utcnow()
    values: dict[str, object] = {"status": target.value, "updated_at": now}
    if target is Status.DELIVERED:
        values["delivered_at"] = now
        values["error"] = None  # a possible duplicate's "no answer, re-sending" no longer holds
    else:
        values["error"] = event.error or "undelivered"
    if event.provider_message_id and not message.provider_message_id:
        values["provider_message_id"] = event.provider_message_id
    # Guarded in SQL too: a late "sent" or a second receipt racing this one cannot regress it.
    may_move = Message.status.in_(sorted(allowed_sources(target)))
    # A possible duplicate waiting for its re-send: this receipt is the earlier attempt's, so that
    # attempt did reach the provider, and the re-send is not needed.
    awaiting_resend = and_(Message.status.in_(("queued", "deferred")), Message.possible_duplicate.is_(True))
    result = await session.execute(
        update(Message)
        .where(Message.id == message.id, or_(may_move, awaiting_resend))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    changed = bool(result.rowcount)  # type: ignore[attr-defined]
    if changed and events is not None:
        error = None if target is Status.DELIVERED else str(values["error"])
        vendor_id = message.provider_message_id or event.provider_message_id
        events.add(tenant.id, item_event(message, target.value, error, message.provider, vendor_id, now))
    if event.bounce in ("hard", "complaint", "opted_out") and (
        changed or _recorded_by(account, message, await sharing.ids() if sharing is not None else frozenset())
    ):
        # A bounce suppresses the recipient only from the account that carried the message, or
        # with the status it moved: a possible duplicate's other account, whose receipt moved
        # nothing, says nothing of this recipient that the carrier did not.
        who = compliance.contact_of_message(tenant, message)
        if event.bounce == "hard":
            await compliance.suppress(session, tenant, who, "hard_bounce", "bounce")
        elif event.bounce == "opted_out":  # at the carrier or vendor: only when refused for it
            if target is Status.UNDELIVERED:
                await compliance.suppress_opted_out(session, tenant, who)
        else:
            counted = await first_complaint_about(session, tenant.id, message.id, account.provider)
            await compliance.suppress(session, tenant, who, "complaint", "complaint", counted=counted)
    return f"{target.value}" if changed else f"kept {message.status}"


async def sender_of(
    session: AsyncSession, tenant: Tenant, account: ProviderAccount, event: InboundSms
) -> str:
    """The sender's number. Where the vendor's form of it has several readings, the one this
    account last sent an SMS to (a reply answers a message, through the account that sent it; an
    opt-out must reach the number that receives the tenant's messages), else the likelier one."""
    if not event.other_readings:
        return event.from_number
    readings = (event.from_number, *event.other_readings)
    last = await session.scalar(
        select(Message.recipient_key)
        .where(
            Message.tenant_id == tenant.id,
            Message.recipient_key.in_(readings),
            Message.channel == "sms",
            Message.provider_account_id == account.id,
            Message.sent_at.is_not(None),
        )
        .order_by(Message.sent_at.desc())
        .limit(1)
    )
    return last if last is not None else event.from_number


async def apply_inbound(session: AsyncSession, tenant: Tenant, event: InboundSms) -> tuple[str, str | None]:
    """Returns (outcome, reply text to send back or None)."""
    result = await handle_inbound_sms(session, tenant, event.from_number, event.text)
    if result.keyword is None:
        return "no keyword", None
    return f"{result.keyword.value}{'' if result.changed else ' (no change)'}", result.reply


async def mark(session: AsyncSession, event_id: str, outcome: str) -> None:
    await session.execute(
        update(ReceiptEvent)
        .where(ReceiptEvent.id == event_id)
        .values(outcome=outcome[:200])
        .execution_options(synchronize_session=False)
    )


async def retry_unmatched(
    session: AsyncSession, provider_for: Callable[[ProviderAccount], Provider], limit: int = 200
) -> int:
    """Apply again the receipts that named a vendor id not recorded yet; those still unmatched
    after UNMATCHED_FOR are given up. Returns how many were applied this time."""
    now = utcnow()
    await session.execute(
        update(ReceiptEvent)
        .where(text("outcome = 'unmatched'"), ReceiptEvent.received_at < now - UNMATCHED_FOR)
        .values(outcome="ignored: no message with this provider id")
        .execution_options(synchronize_session=False)
    )
    # The newest half and the oldest half: receipts of another system's messages (an account also
    # used outside comms) stay unmatched for their hour, and must not keep a fresh one, usually
    # just ahead of its send's recording, from being tried.
    unmatched = select(ReceiptEvent).where(text("outcome = 'unmatched'"))
    newest = (
        await session.scalars(unmatched.order_by(ReceiptEvent.received_at.desc()).limit(limit // 2))
    ).all()
    oldest = (
        await session.scalars(unmatched.order_by(ReceiptEvent.received_at).limit(limit - limit // 2))
    ).all()
    waiting = list({row.id: row for row in (*oldest, *newest)}.values())
    applied = 0
    changes = EventBuffer()
    sharing_of: dict[str, Sharing] = {}
    for row in waiting:
        account = await session.get(ProviderAccount, row.account_id)
        tenant = await session.get(Tenant, row.tenant_id)
        if account is None or tenant is None:
            row.outcome = "ignored: the account is gone"
            continue
        try:
            event: DeliveryEvent | None = _decode_receipt(row.payload.encode()).event
        except (msgspec.DecodeError, msgspec.ValidationError):
            # A row stored before events were kept one by one holds the whole callback body.
            try:
                events = provider_for(account).parse_receipts(row.payload.encode())
            except Exception as exc:  # the account's config changed and no longer reads it
                row.outcome = f"ignored: unreadable now: {type(exc).__name__}"[:200]
                continue
            event = next((e for e in events if f"{row.kind}:{e.event_key}"[:200] == row.event_key), None)
        if event is None:
            row.outcome = "ignored: not in its payload"
            continue
        sharing = sharing_of.setdefault(account.id, Sharing(session, account, provider_for))
        outcome = await apply_receipt(session, tenant, account, event, changes, sharing)
        row.outcome = outcome[:200]
        applied += row.outcome != UNMATCHED
    await changes.write(session, now)
    return applied
