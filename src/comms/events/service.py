"""Status changes of log items, pushed to the tenant's event webhook.

Users of a messaging service want to be told what happened, not to poll for it (Twilio's status
callbacks, SendGrid's event webhook). Events are collected while the status changes are written
(a claimed batch's completion, a provider's receipt callback) and stored in the same transaction
as one ``event_deliveries`` row per tenant of up to :data:`MAX_EVENTS_PER_POST` events: nothing
that changed goes unreported, and 500 messages cost one row, not 500. ``events/delivery.py``
posts them, at least once; receivers deduplicate by ``event_id``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, get_args

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance.addresses import scrub_address
from comms.kit.clock import isoformat
from comms.kit.ids import new_id
from comms.kit.masking import mask_recipient
from comms.models import EventDelivery, EventWebhook, Message

# What a webhook may subscribe to; `deferred` is not among the defaults (it is no outcome).
EventStatus = Literal[
    "sent", "delivered", "undelivered", "failed", "suppressed", "rejected", "cancelled", "unknown", "deferred"
]
EVENT_STATUSES: tuple[EventStatus, ...] = get_args(EventStatus)
DEFAULT_STATUSES: tuple[EventStatus, ...] = tuple(s for s in EVENT_STATUSES if s != "deferred")
MAX_EVENTS_PER_POST = 1000
SUBSCRIPTION_TTL = 5.0  # seconds a process believes what it read of a tenant's webhook
_encode = msgspec.json.Encoder().encode


class LogItem(Protocol):
    """What an event says of the item: a claimed message or a log row."""

    @property
    def id(self) -> str: ...
    @property
    def batch_id(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def recipient(self) -> str: ...


def item_event(
    item: LogItem,
    status: str,
    error: str | None,
    provider: str | None,
    provider_message_id: str | None,
    at: datetime,
) -> dict[str, Any]:
    """One event as posted; the recipient masked, as the log shows it by default (also where the
    error quotes it)."""
    masked = mask_recipient(item.channel, item.recipient)
    return {
        "event_id": new_id("evt"),
        "type": "message.status",
        "log_id": item.id,
        "batch_id": item.batch_id,
        "channel": item.channel,
        "category": item.category,
        "recipient": masked,
        "status": status,
        "error": scrub_address(error, item.channel, item.recipient, masked),
        "provider": provider,
        "provider_message_id": provider_message_id,
        "at": isoformat(at),
    }


class TenantLogItem(LogItem, Protocol):
    """A log item with its tenant: whose webhook an event of it goes to."""

    @property
    def tenant_id(self) -> str: ...


# What an event needs of a row a statement changed: UPDATE ... RETURNING these columns.
EVENT_COLUMNS = (
    Message.id,
    Message.tenant_id,
    Message.batch_id,
    Message.channel,
    Message.category,
    Message.recipient,
    Message.status,
    Message.error,
    Message.provider,
    Message.provider_message_id,
)


async def tell_changed_rows(session: AsyncSession, rows: Iterable[Sequence[Any]], now: datetime) -> int:
    """Events of rows an UPDATE changed, read back by ``RETURNING *EVENT_COLUMNS`` (the status
    and error they now have), stored in the caller's transaction for the tenants whose webhook
    wants them. How many delivery rows were added."""
    events = EventBuffer()
    for row in rows:
        item = _ChangedRow(*row[:6])
        events.add(item.tenant_id, item_event(item, row[6], row[7], row[8], row[9], now))
    return await events.write(session, now)


@dataclass(slots=True)
class _ChangedRow:
    id: str
    tenant_id: str
    batch_id: str
    channel: str
    category: str
    recipient: str


class EventBuffer:
    """Events of one transaction, written by :meth:`write` inside it."""

    def __init__(self) -> None:
        self._events: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, tenant_id: str, event: dict[str, Any]) -> None:
        self._events[tenant_id].append(event)

    def __bool__(self) -> bool:
        return bool(self._events)

    async def write(self, session: AsyncSession, now: datetime) -> int:
        """Store the events each tenant's webhook subscribed to; returns how many rows were added."""
        if not self._events:
            return 0
        hooks = await subscribed_statuses(session, self._events)
        added = 0
        for tenant_id, events in self._events.items():
            wanted = [e for e in events if e["status"] in hooks.get(tenant_id, ())]
            for start in range(0, len(wanted), MAX_EVENTS_PER_POST):
                chunk = wanted[start : start + MAX_EVENTS_PER_POST]
                session.add(
                    EventDelivery(
                        id=new_id("evd"),
                        tenant_id=tenant_id,
                        payload=_encode({"events": chunk}).decode(),
                        events=len(chunk),
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
                added += 1
        return added  # the events stay: a transaction that is retried writes them again


async def subscribed_statuses(session: AsyncSession, tenant_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    """tenant id -> the statuses its webhook wants, for those of ``tenant_ids`` that have one."""
    rows = await session.execute(
        select(EventWebhook.tenant_id, EventWebhook.statuses).where(
            EventWebhook.tenant_id.in_(list(tenant_ids))
        )
    )
    return {tenant_id: frozenset(statuses) for tenant_id, statuses in rows}


DELIVERED_KEPT = timedelta(days=1)
FAILED_KEPT = timedelta(days=7)


async def forget_old_deliveries(session: AsyncSession, now: datetime) -> None:
    """Delivered posts are kept a day, given-up ones a week (they show in the webhook's GET)."""
    await session.execute(delete(EventDelivery).where(EventDelivery.delivered_at < now - DELIVERED_KEPT))
    await session.execute(delete(EventDelivery).where(EventDelivery.failed_at < now - FAILED_KEPT))


class Subscriptions:
    """Which tenants have a webhook, remembered for SUBSCRIPTION_TTL seconds: the dispatcher asks
    before it builds a batch's events, so tenants without one cost nothing per message. A
    webhook set or changed reaches other processes within that time."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, frozenset[str]]] = {}

    async def statuses(self, session: AsyncSession, tenant_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        """tenant id -> subscribed statuses, for those of ``tenant_ids`` with a webhook; asks the
        database only about tenants not looked at in the last SUBSCRIPTION_TTL seconds."""
        now = time.monotonic()
        wanted = set(tenant_ids)
        stale = [t for t in wanted if t not in self._known or self._known[t][0] < now]
        if stale:
            found = await subscribed_statuses(session, stale)
            for tenant_id in stale:
                self._known[tenant_id] = (now + SUBSCRIPTION_TTL, found.get(tenant_id, frozenset()))
        return {t: self._known[t][1] for t in wanted if self._known[t][1]}


__all__ = [
    "DEFAULT_STATUSES",
    "EVENT_COLUMNS",
    "EVENT_STATUSES",
    "EventBuffer",
    "EventStatus",
    "Subscriptions",
    "forget_old_deliveries",
    "item_event",
    "subscribed_statuses",
    "tell_changed_rows",
]
