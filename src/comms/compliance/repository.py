"""Suppressions and consents: all their SQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, case, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from comms.errors import RateLimited
from comms.kit.db import is_sqlite, one_of
from comms.models import Consent, ContactLink, Message, Suppression

_CHUNK = 5000
_COUNT_CHUNK = 10_000  # bind parameters per query: SQLite allows 32,766, asyncpg 32,767
_Row = TypeVar("_Row", Suppression, Consent)


class SuppressionRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def count(self, channel: str) -> int:
        stmt = (
            select(func.count())
            .select_from(Suppression)
            .where(Suppression.tenant_id == self.tenant_id, Suppression.channel == channel)
        )
        return int(await self.session.scalar(stmt) or 0)

    async def scopes_for(self, channel: str, hashes: Sequence[str]) -> dict[str, str]:
        """hash -> scope ("marketing" or "all") for the suppressed ones among ``hashes``."""
        found: dict[str, str] = {}
        statement = _SUPPRESSED[not is_sqlite(self.session)]
        for start in range(0, len(hashes), _CHUNK):
            params = {
                "tenant_id": self.tenant_id,
                "channel": channel,
                "hashes": hashes[start : start + _CHUNK],
            }
            for h, scope, reason in await self.session.execute(statement, params):
                found[h] = f"{scope}:{reason}"
        return found


# The look-ups of a chunk of recipients, built once per dialect (see one_of).
_SUPPRESSED = {
    pg: select(Suppression.address_hash, Suppression.scope, Suppression.reason).where(
        Suppression.tenant_id == bindparam("tenant_id"),
        Suppression.channel == bindparam("channel"),
        one_of(Suppression.address_hash, "hashes", pg),
    )
    for pg in (False, True)
}


# Built once: constructing it per request cost more CPU than the rest of accepting one
# verification code (measured: 14% of the API's time for single-code requests).
_VERIFICATION_COUNTS = {
    pg: select(
        Message.recipient_key,
        func.sum(case((Message.created_at >= bindparam("minute"), 1), else_=0)),
        func.sum(case((Message.created_at >= bindparam("hour"), 1), else_=0)),
        func.count(),
    )
    .where(
        Message.tenant_id == bindparam("tenant_id"),
        one_of(Message.recipient_key, "keys", pg),
        Message.channel == "sms",
        Message.category == "verification",
        Message.created_at >= bindparam("day"),
        Message.status.not_in(("rejected", "suppressed")),
    )
    .group_by(Message.recipient_key)
    for pg in (False, True)
}


async def verification_counts(
    session: AsyncSession, tenant_id: str, keys: Sequence[str], now: datetime, lock: bool = False
) -> dict[str, tuple[int, int, int]]:
    """key -> verification SMS accepted for it in the last (minute, hour, day); ``lock``: kept
    apart from concurrent requests' counts until the transaction ends (see _serialize), for a
    request that stores what it accepts."""
    since = {
        "minute": now - timedelta(minutes=1),
        "hour": now - timedelta(hours=1),
        "day": now - timedelta(days=1),
    }
    pg = not is_sqlite(session)
    if pg and lock:
        await _serialize(session, tenant_id, keys)
    statement = _VERIFICATION_COUNTS[pg]
    counts: dict[str, tuple[int, int, int]] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        rows = await session.execute(statement, {"tenant_id": tenant_id, "keys": chunk, **since})
        for key, per_minute, per_hour, per_day in rows:
            counts[key] = (int(per_minute or 0), int(per_hour or 0), int(per_day or 0))
    return counts


# Numbers are locked in this many buckets per tenant: a request for many numbers takes at most
# this many locks (PostgreSQL's lock table is shared by the server and holds about 64 per
# connection in all), one for a few numbers takes one each. Two numbers in one bucket merely
# wait for each other's commit, as two requests for one number do.
LOCK_BUCKETS = 64  # a power of two: a number's bucket is its hash's low bits
_LOCK_NUMBERS = text(
    "SELECT count(pg_advisory_xact_lock(b)) FROM (SELECT DISTINCT"
    " hashtextextended(:tenant || ':' || (hashtextextended(k, 7) & :mask)::text, 0) AS b"
    " FROM unnest(CAST(:keys AS text[])) AS k ORDER BY b) AS s"
)
# A deadlock (two requests for many numbers, their chunks taking buckets in different orders), a
# lock the server's own lock_timeout gave up on, or a lock table that is full: the request is
# told to try again.
_TRY_AGAIN = frozenset({"40P01", "55P03", "53200"})


async def _serialize(session: AsyncSession, tenant_id: str, keys: Sequence[str]) -> None:
    """Count-then-insert is a race under PostgreSQL's READ COMMITTED: requests for one number at
    the same instant would all count the codes before any of them and all pass the limit (OTP
    pumping, toll fraud). Each request's transaction, until it commits, holds the lock of each of
    its numbers' buckets (one statement, taken in order), so the next request for one of them
    counts after it: a code waits at most as long as the request before it takes to commit (a
    verification bulk of 100,000 numbers, which holds all of its tenant's buckets: a second or
    two). SQLite writes one transaction at a time."""
    try:
        await session.execute(
            _LOCK_NUMBERS, {"tenant": tenant_id, "keys": list(keys), "mask": LOCK_BUCKETS - 1}
        )
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) in _TRY_AGAIN:
            raise RateLimited(
                "verification codes for these numbers are being accepted by another request; try again",
                retry_after=1.0,
            ) from None
        raise


# Notification and promotional SMS that reached a provider since ``since``, per recipient, for
# those at ``limit`` or more.
_AT_DAILY_LIMIT = {
    pg: select(Message.recipient_key)
    .where(
        Message.tenant_id == bindparam("tenant_id"),
        Message.channel == "sms",
        Message.category != "verification",
        Message.sent_at >= bindparam("since"),
        one_of(Message.recipient_key, "keys", pg),
    )
    .group_by(Message.recipient_key)
    .having(func.count() >= bindparam("limit"))
    for pg in (False, True)
}


async def numbers_at_daily_limit(
    session: AsyncSession, tenant_id: str, keys: Sequence[str], now: datetime, limit: int
) -> set[str]:
    """Those of ``keys`` that got ``limit`` or more notification and promotional SMS in the last
    24 hours: one grouped query per claimed batch, through the (tenant, recipient) index,
    answering only the few at the limit."""
    found: set[str] = set()
    statement = _AT_DAILY_LIMIT[not is_sqlite(session)]
    params = {"tenant_id": tenant_id, "since": now - timedelta(days=1), "limit": limit}
    for start in range(0, len(keys), _COUNT_CHUNK):
        found.update(
            await session.scalars(statement, {**params, "keys": list(keys[start : start + _COUNT_CHUNK])})
        )
    return found


class ConsentRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def latest_for(self, channel: str, hashes: Iterable[str]) -> dict[str, Consent]:
        """The newest consent record per address hash."""
        latest: dict[str, Consent] = {}
        ordered = list(hashes)
        statement = _CONSENTS[not is_sqlite(self.session)]
        for start in range(0, len(ordered), _CHUNK):
            params = {
                "tenant_id": self.tenant_id,
                "channel": channel,
                "hashes": ordered[start : start + _CHUNK],
            }
            for consent in await self.session.scalars(statement, params):
                latest[consent.address_hash] = consent
        return latest


_CONSENTS = {
    pg: select(Consent)
    .where(
        Consent.tenant_id == bindparam("tenant_id"),
        Consent.channel == bindparam("channel"),
        one_of(Consent.address_hash, "hashes", pg),
    )
    .order_by(Consent.created_at, Consent.id)
    for pg in (False, True)
}


class SuppressionStore:
    """Reads and writes of single suppression entries, scoped by tenant."""

    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def get(self, channel: str, digest: str) -> Suppression | None:
        return await self.session.get(Suppression, (self.tenant_id, channel, digest))

    def add(self, row: Suppression) -> None:
        self.session.add(row)

    async def delete(self, row: Suppression) -> None:
        await self.session.delete(row)

    async def list(
        self, offset: int, limit: int, channel: str | None = None, digest: str | None = None
    ) -> tuple[Sequence[Suppression], int]:
        return await _page_of(
            self.session, Suppression, self.tenant_id, offset, limit, channel, digest,
            (Suppression.created_at.desc(), Suppression.address_hash),
        )  # fmt: skip


class ConsentStore:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def add(self, row: Consent) -> None:
        self.session.add(row)

    async def list(
        self, offset: int, limit: int, channel: str | None = None, digest: str | None = None
    ) -> tuple[Sequence[Consent], int]:
        return await _page_of(
            self.session, Consent, self.tenant_id, offset, limit, channel, digest,
            (Consent.created_at.desc(), Consent.id.desc()),
        )  # fmt: skip

    async def latest(self, channel: str, digest: str) -> Consent | None:
        """The address's latest consent record (its current state), or None when it has none."""
        return await self.session.scalar(
            select(Consent)
            .where(
                Consent.tenant_id == self.tenant_id,
                Consent.channel == channel,
                Consent.address_hash == digest,
            )
            .order_by(Consent.created_at.desc(), Consent.id.desc())
            .limit(1)
        )

    async def forget_addresses(self, channel: str, digest: str) -> None:
        """Erasure: keep the consent history (its hash, times, wording) but drop the address."""
        await self.session.execute(
            update(Consent)
            .where(
                Consent.tenant_id == self.tenant_id,
                Consent.channel == channel,
                Consent.address_hash == digest,
            )
            .values(address=None, ip=None)
            .execution_options(synchronize_session=False)
        )


_LOCK_CONTACTS = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


class ContactLinkStore:
    """The addresses a tenant links as one person's (``contact`` is the tenant's id for them)."""

    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def lock(self) -> None:
        """Until the transaction ends: links and consent records of this tenant one at a time,
        so an objection and a link made at the same instant never miss each other, and two
        opt-ins of one number at the same instant never both find it new (two confirmations)
        (PostgreSQL's READ COMMITTED would let each see the other's state before it). SQLite
        writes one transaction at a time already."""
        if not is_sqlite(self.session):
            await self.session.execute(_LOCK_CONTACTS, {"key": f"contacts:{self.tenant_id}"})

    async def addresses(self, contact: str) -> Sequence[ContactLink]:
        return (
            await self.session.scalars(
                select(ContactLink)
                .where(ContactLink.tenant_id == self.tenant_id, ContactLink.contact == contact)
                .order_by(ContactLink.channel, ContactLink.created_at, ContactLink.address_hash)
            )
        ).all()

    async def replace(self, contact: str, rows: Sequence[ContactLink]) -> None:
        await self.unlink(contact)
        self.session.add_all(rows)
        await self.session.flush()

    async def unlink(self, contact: str) -> int:
        result = await self.session.execute(
            delete(ContactLink)
            .where(ContactLink.tenant_id == self.tenant_id, ContactLink.contact == contact)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def linked_with(self, channel: str, digest: str) -> Sequence[ContactLink]:
        """Every other address of every contact that has this one."""
        contacts = (
            select(ContactLink.contact)
            .where(
                ContactLink.tenant_id == self.tenant_id,
                ContactLink.channel == channel,
                ContactLink.address_hash == digest,
            )
            .scalar_subquery()
        )
        return (
            await self.session.scalars(
                select(ContactLink).where(
                    ContactLink.tenant_id == self.tenant_id,
                    ContactLink.contact.in_(contacts),
                    ~((ContactLink.channel == channel) & (ContactLink.address_hash == digest)),
                )
            )
        ).all()

    async def forget_address(self, channel: str, digest: str) -> None:
        """Erasure: the link itself is the person's data."""
        await self.session.execute(
            delete(ContactLink)
            .where(
                ContactLink.tenant_id == self.tenant_id,
                ContactLink.channel == channel,
                ContactLink.address_hash == digest,
            )
            .execution_options(synchronize_session=False)
        )


async def _page_of(
    session: AsyncSession,
    model: type[_Row],
    tenant_id: str,
    offset: int,
    limit: int,
    channel: str | None,
    digest: str | None,
    order: tuple[Any, ...],
) -> tuple[Sequence[_Row], int]:
    """One page of a tenant's suppressions or consents, optionally for one channel and address."""
    where = [model.tenant_id == tenant_id]
    if channel:
        where.append(model.channel == channel)
    if digest:
        where.append(model.address_hash == digest)
    total = int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)
    rows = await session.scalars(select(model).where(*where).order_by(*order).offset(offset).limit(limit))
    return rows.all(), total
