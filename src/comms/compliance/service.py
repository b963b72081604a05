"""Suppressions, consents and erasure: the rules around them, recorded in the audit trail.

Every change is keyed by the salted address hash (compliance/addresses.py), so it applies to the
same person however their address was written, and survives erasure of the address itself.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from sqlalchemy import Text, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance import audit
from comms.compliance.addresses import address_hash, address_spellings
from comms.compliance.repository import ConsentStore, ContactLinkStore, SuppressionStore
from comms.errors import ValidationFailed
from comms.kit.clock import utcnow
from comms.kit.ids import new_id
from comms.kit.masking import ANONYMIZED_KEY_PREFIX
from comms.messages.recipients import InvalidRecipient, normalize_email, normalize_phone, recipient_key
from comms.models import (
    Consent,
    ContactLink,
    EventDelivery,
    IdempotencyKey,
    Message,
    ReceiptEvent,
    Suppression,
    Tenant,
)

# Reasons that block every category but verification; an opt-out only blocks subscription mail.
SCOPE_ALL_REASONS = frozenset({"hard_bounce", "complaint"})
SuppressionReason = Literal[
    "unsubscribed", "stop", "objection", "hard_bounce", "complaint", "manual", "erasure"
]
Source = Literal[
    "one_click",
    "link",
    "mailto",
    "sms_keyword",
    "api",
    "complaint",
    "feedback_loop",
    "bounce",
    "erasure",
    "provider",  # a vendor refused a send: the recipient opted out of the sender there
    "linked",  # an objection on another address the tenant linked as the same person's (E6)
]


ERASED = "[erased]"


async def _strike_from_stored_answers(
    session: AsyncSession, tenant_id: str, spellings: Collection[str]
) -> None:
    rows = await session.scalars(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, _quoting(IdempotencyKey.response_body, spellings)
        )
    )
    # Longest first: "+8613800138000" goes whole, not as "+86" and the national number.
    pattern = re.compile(
        "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True)), re.IGNORECASE
    )
    for row in rows:
        row.response_body = pattern.sub(ERASED, row.response_body)


def _quoting(column: Any, spellings: Iterable[str]) -> Any:
    """Rows whose ``column`` quotes any of ``spellings``, in any letter case (LIKE is
    case-sensitive on PostgreSQL)."""
    lowered = func.lower(column, type_=Text)
    return or_(*(lowered.contains(s.lower(), autoescape=True) for s in spellings))


# What may lift a suppression of each reason: 0 a START keyword too, 1 an opt-in given after it
# (record_consent), 2 only the tenant deleting it. A suppression takes the firmest reason given.
_DURABILITY: dict[str, int] = {
    "stop": 0,
    "unsubscribed": 1,
    "objection": 1,
    "manual": 2,
    "erasure": 2,
    "hard_bounce": 2,
    "complaint": 2,
}
LIFTED_BY_KEYWORD = frozenset(reason for reason, level in _DURABILITY.items() if level == 0)  # START
LIFTED_BY_OPT_IN = frozenset(reason for reason, level in _DURABILITY.items() if level <= 1)
# Complaints a provider or a mailbox provider reports: each counts in the complaint rate.
REPORTED_COMPLAINT_SOURCES = frozenset({"complaint", "feedback_loop"})

COMPLAINT_EVENT = "complaint.received"


@dataclass(frozen=True, slots=True)
class Contact:
    channel: str
    address: str  # normalized
    key: str  # what dedupe and suppression compare
    digest: str


class Addressed(Protocol):
    """A log item, or a claimed one: whom it was sent to."""

    @property
    def channel(self) -> str: ...

    @property
    def recipient(self) -> str: ...

    @property
    def recipient_key(self) -> str: ...


def contact_of_message(tenant: Tenant, message: Addressed) -> Contact:
    """The recipient of a log item, already normalized when it was accepted. Past log retention
    the item keeps only the masked address and the salted hash, which is what suppressions and
    consents are keyed by: an unsubscribe from an old message still reaches the person."""
    if message.recipient_key.startswith(ANONYMIZED_KEY_PREFIX):
        digest = message.recipient_key.removeprefix(ANONYMIZED_KEY_PREFIX)
        return Contact(message.channel, message.recipient, message.recipient_key, digest)
    return Contact(
        message.channel,
        message.recipient,
        message.recipient_key,
        address_hash(tenant.hash_salt, message.channel, message.recipient_key),
    )


def contact(tenant: Tenant, channel: str, raw: str, default_region: str, field: str = "address") -> Contact:
    """Normalize an address as the bulk endpoint does; a bad one is a 422 naming ``field``."""
    if channel not in ("sms", "email"):
        raise ValidationFailed.single("channel", "must be one of: sms, email")
    try:
        normalized = normalize_phone(raw, default_region) if channel == "sms" else normalize_email(raw)
    except InvalidRecipient as exc:
        raise ValidationFailed.single(field, exc.reason) from None
    key = recipient_key(channel, normalized)
    return Contact(channel, normalized, key, address_hash(tenant.hash_salt, channel, key))


async def suppress(
    session: AsyncSession,
    tenant: Tenant,
    who: Contact,
    reason: SuppressionReason,
    source: Source,
    *,
    actor: str | None = None,
    ip: str | None = None,
    counted: bool = True,
    at: datetime | None = None,
) -> bool:
    """Add (or widen) a suppression at once; True when something changed. Idempotent.

    ``at``: when the person opted out (default now). The suppression keeps the latest opt-out's
    time, so an opt-in counts as newer only if it was given after every opt-out (record_consent).

    A complaint is also an event of its own (``complaint.received`` in the append-only audit
    trail), which the complaint-rate breaker counts: every complaint a provider reports, even
    from an address suppressed already, and one a tenant records when it changes something.
    Deleting the suppression later does not take the complaint back. ``counted=False``: a
    complaint about a message that was complained about before (another report of the same
    one, receipts.service.first_complaint_about) suppresses but does not count again."""
    store = SuppressionStore(session, tenant.id)
    scope = "all" if reason in SCOPE_ALL_REASONS else "marketing"
    existing = await store.get(who.channel, who.digest)
    if (
        reason == "complaint"
        and counted
        and (source in REPORTED_COMPLAINT_SOURCES or existing is None or existing.scope != "all")
    ):
        audit.record(
            session, tenant.id, COMPLAINT_EVENT, actor=actor, ip=ip,
            channel=who.channel, address_hash=who.digest, source=source,
        )  # fmt: skip
    when = at or utcnow()
    if existing is not None:
        if existing.created_at < when:  # a later opt-out: an opt-in must come after this one
            existing.created_at = when
        widens = existing.scope != "all" and scope != existing.scope
        # A reason fewer things may lift replaces one more may (a START lifts a STOP, never an
        # objection recorded on top of it), whatever the scope does.
        firmer = _DURABILITY[reason] > _DURABILITY.get(existing.reason, 2)
        if not widens and not firmer:
            return False
        if widens:
            existing.scope = scope
        if firmer or widens:
            existing.reason = reason
    else:
        await session.flush()  # what came before goes out first: only the row below is at stake
        try:
            async with session.begin_nested():
                store.add(
                    Suppression(
                        tenant_id=tenant.id,
                        channel=who.channel,
                        address_hash=who.digest,
                        address=who.address,
                        reason=reason,
                        scope=scope,
                        source=source,
                        created_at=when,
                    )
                )
        except IntegrityError:
            # Another request suppressed the address at the same instant (a mailbox provider
            # retrying a one-click POST, the person clicking beside it): its row stands, and this
            # one applies over it as over any earlier one (its complaint, if any, counted above).
            return await suppress(
                session, tenant, who, reason, source, actor=actor, ip=ip, counted=False, at=at
            )
    audit.record(
        session, tenant.id, "suppression.added", actor=actor, ip=ip,
        channel=who.channel, address_hash=who.digest, reason=reason, source=source,
    )  # fmt: skip
    return True


async def suppress_opted_out(session: AsyncSession, tenant: Tenant, who: Contact) -> bool:
    """The recipient opted out of the sender at the vendor or the carrier (a STOP comms never
    saw): an SMS one is a STOP (a START lifts it), an email one an unsubscribe."""
    if who.channel == "sms":
        return await suppress(session, tenant, who, "stop", "provider")
    return await suppress(session, tenant, who, "unsubscribed", "provider")


async def unsuppress(
    session: AsyncSession,
    tenant: Tenant,
    who: Contact,
    source: Source,
    *,
    actor: str | None = None,
    ip: str | None = None,
    only_reasons: frozenset[str] | None = None,
    given_after: datetime | None = None,
) -> bool:
    """Lift a suppression (re-subscribe); ``only_reasons`` limits which kinds may be lifted, and
    ``given_after`` (when the new consent was given) lifts only a suppression older than it."""
    store = SuppressionStore(session, tenant.id)
    existing = await store.get(who.channel, who.digest)
    if existing is None or (only_reasons is not None and existing.reason not in only_reasons):
        return False
    if given_after is not None and existing.created_at >= given_after:
        return False
    await store.delete(existing)
    await session.flush()
    audit.record(
        session, tenant.id, "suppression.removed", actor=actor, ip=ip,
        channel=who.channel, address_hash=who.digest, reason=existing.reason, source=source,
    )  # fmt: skip
    return True


class RecordedConsent(NamedTuple):
    row: Consent
    lifted: bool  # an earlier opt-out of the person's own was lifted
    earlier: str | None  # the address's state before: "opted_in", "opted_out", or no record


async def record_consent(
    session: AsyncSession,
    tenant: Tenant,
    who: Contact,
    *,
    status: str,
    basis: str | None,
    source: str | None,
    wording_version: str | None,
    written: bool,
    collected_with_optout: bool,
    actor: str | None,
    ip: str | None,
    subject_ip: str | None = None,
    collected_at: datetime | None = None,
) -> RecordedConsent:
    """Append a consent record (who, when, source, wording, IP); opting out also suppresses (E6).
    An opt-in lifts an earlier opt-out of the person's own only when ``collected_at`` says it was
    given after it (a re-sync of old records must not undo an unsubscribe). Returns the record,
    whether an opt-out was lifted, and the address's state before it."""
    # The tenant's consent lock before any read or write (ContactLinkStore.lock): links take it
    # too, and taking it after this consent's suppression row (as the objection's spread once did)
    # deadlocked against a link holding the lock and writing that row; under it, two opt-ins of
    # one number at once cannot both find it new.
    consents = ConsentStore(session, tenant.id)
    await ContactLinkStore(session, tenant.id).lock()
    before = await consents.latest(who.channel, who.digest)
    row = Consent(
        id=new_id("cns"),
        tenant_id=tenant.id,
        channel=who.channel,
        address_hash=who.digest,
        address=who.address,
        status=status,
        basis=basis,
        source=source,
        wording_version=wording_version,
        ip=subject_ip,  # the person's, as evidence (E5); the API caller's goes to the audit trail
        written=written,
        collected_with_optout=collected_with_optout,
        collected_at=collected_at,
        created_at=utcnow(),
    )
    consents.add(row)
    audit.record(
        session, tenant.id, "consent.recorded", actor=actor, ip=ip,
        channel=who.channel, address_hash=who.digest, status=status, basis=basis, source=source,
        wording_version=wording_version,
    )  # fmt: skip
    lifted = False
    if status == "opted_out":
        await suppress(session, tenant, who, "objection", "api", actor=actor, ip=ip, at=collected_at)
        await _object_on_linked(session, tenant, who, actor=actor, ip=ip, at=collected_at)
    elif status == "opted_in" and collected_at is not None:
        # An opt-in given after an opt-out of the person's own lifts it; never a bounce or a complaint.
        lifted = await unsuppress(
            session, tenant, who, "api", actor=actor, ip=ip,
            only_reasons=LIFTED_BY_OPT_IN, given_after=collected_at,
        )  # fmt: skip
    return RecordedConsent(row, lifted, before.status if before is not None else None)


def _linked_contact(link: ContactLink) -> Contact:
    return Contact(link.channel, link.address, recipient_key(link.channel, link.address), link.address_hash)


async def _object_on_linked(
    session: AsyncSession,
    tenant: Tenant,
    who: Contact,
    *,
    actor: str | None,
    ip: str | None,
    at: datetime | None,
) -> list[Contact]:
    """E6: an objection to direct marketing is the person's, not one address's: it covers every
    address the tenant linked with ``who``. Returns those it suppressed now. The caller holds the
    tenant's consent lock (record_consent)."""
    links = ContactLinkStore(session, tenant.id)
    others = [_linked_contact(link) for link in await links.linked_with(who.channel, who.digest)]
    return await _extend_objection(session, tenant, who, others, actor=actor, ip=ip, at=at)


async def _extend_objection(
    session: AsyncSession,
    tenant: Tenant,
    objected: Contact,
    others: Sequence[Contact],
    *,
    actor: str | None,
    ip: str | None,
    at: datetime | None,
) -> list[Contact]:
    """Suppress ``others`` for the objection recorded on ``objected`` at ``at`` (None: now), dated
    as the objection, so a later opt-in of their own still lifts it; one whose own opt-in is later
    than the objection keeps it."""
    when = at or utcnow()
    consents = ConsentStore(session, tenant.id)
    newly: list[Contact] = []
    for other in others:
        own = await consents.latest(other.channel, other.digest)
        if own is not None and own.status == "opted_in" and (own.collected_at or own.created_at) > when:
            continue
        if await suppress(session, tenant, other, "objection", "linked", actor=actor, ip=ip, at=when):
            newly.append(other)
    if newly:
        audit.record(
            session, tenant.id, "objection.extended", actor=actor, ip=ip, channel=objected.channel,
            address_hash=objected.digest, to=[f"{c.channel}:{c.digest}" for c in newly],
        )  # fmt: skip
    return newly


async def link_contact(
    session: AsyncSession,
    tenant: Tenant,
    contact_id: str,
    addresses: Sequence[Contact],
    *,
    actor: str | None,
    ip: str | None,
) -> list[Contact]:
    """Make ``addresses`` (and only them) the addresses of the tenant's ``contact_id``. If the
    person's current state on one of them is an objection (its latest consent record is an
    opt-out), it now covers the others of this contact too, dated as it was made: returns those
    suppressed by it now."""
    links = ContactLinkStore(session, tenant.id)
    await links.lock()
    now = utcnow()
    await links.replace(
        contact_id,
        [
            ContactLink(
                tenant_id=tenant.id,
                contact=contact_id,
                channel=a.channel,
                address_hash=a.digest,
                address=a.address,
                created_at=now,
            )
            for a in addresses
        ],
    )
    audit.record(
        session, tenant.id, "contact.linked", actor=actor, ip=ip,
        contact_hash=address_hash(tenant.hash_salt, "contact", contact_id),
        addresses=[f"{a.channel}:{a.digest}" for a in addresses],
    )  # fmt: skip
    consents = ConsentStore(session, tenant.id)
    newly: list[Contact] = []
    for who in addresses:
        own = await consents.latest(who.channel, who.digest)
        if own is not None and own.status == "opted_out":
            others = [a for a in addresses if a is not who and a not in newly]
            newly += await _extend_objection(
                session, tenant, who, others, actor=actor, ip=ip, at=own.collected_at or own.created_at
            )
    return newly


async def unlink_contact(
    session: AsyncSession, tenant: Tenant, contact_id: str, *, actor: str | None, ip: str | None
) -> int:
    """Forget which addresses were ``contact_id``'s; how many. Suppressions stay."""
    links = ContactLinkStore(session, tenant.id)
    await links.lock()
    removed = await links.unlink(contact_id)
    if removed:
        audit.record(
            session, tenant.id, "contact.unlinked", actor=actor, ip=ip,
            contact_hash=address_hash(tenant.hash_salt, "contact", contact_id),
        )  # fmt: skip
    return removed


async def erase(
    session: AsyncSession, tenant: Tenant, who: Contact, *, actor: str | None, ip: str | None
) -> int:
    """GDPR Art. 17: delete the person's message logs and drop the address everywhere, but keep
    a hashed do-not-contact entry so a later import of the address is still suppressed (E7).
    Returns how many log items were deleted."""
    result = await session.execute(
        delete(Message)
        .where(
            Message.tenant_id == tenant.id,
            Message.channel == who.channel,
            # and the items past log retention, which keep only the salted hash
            Message.recipient_key.in_((who.key, ANONYMIZED_KEY_PREFIX + who.digest)),
        )
        .execution_options(synchronize_session=False)
    )
    await ConsentStore(session, tenant.id).forget_addresses(who.channel, who.digest)
    await ContactLinkStore(session, tenant.id).forget_address(who.channel, who.digest)
    # Raw provider callbacks (inbound replies, receipts) may quote the address, in the vendor's
    # own spelling: form-encoded (Twilio, Kannel) or national (Aliyun, Tencent), and in any
    # letter case (an email's, %2b for +): matched case-insensitively on both databases (LIKE is
    # case-sensitive on PostgreSQL).
    spellings = address_spellings(who.channel, who.address)
    await session.execute(
        delete(ReceiptEvent)
        .where(
            ReceiptEvent.tenant_id == tenant.id,
            _quoting(ReceiptEvent.payload, spellings),
        )
        .execution_options(synchronize_session=False)
    )
    # Events waiting for the tenant's webhook show the address masked, but a provider's error
    # in them may quote it.
    await session.execute(
        delete(EventDelivery)
        .where(
            EventDelivery.tenant_id == tenant.id,
            _quoting(EventDelivery.payload, spellings),
        )
        .execution_options(synchronize_session=False)
    )
    # A bulk answered with unmask=true keeps that answer for its Idempotency-Key's replays (a
    # day): the address is struck out of it, and the replay kept (forgotten, a retry of the same
    # request would run, and send, again).
    await _strike_from_stored_answers(session, tenant.id, spellings)
    store = SuppressionStore(session, tenant.id)
    existing = await store.get(who.channel, who.digest)
    if existing is None:
        store.add(
            Suppression(
                tenant_id=tenant.id,
                channel=who.channel,
                address_hash=who.digest,
                address=None,
                reason="erasure",
                scope="marketing",
                source="erasure",
                created_at=utcnow(),
            )
        )
    else:
        existing.address = None
    deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
    audit.record(
        session, tenant.id, "contact.erased", actor=actor, ip=ip,
        channel=who.channel, address_hash=who.digest, deleted_log_items=deleted,
    )  # fmt: skip
    return deleted
