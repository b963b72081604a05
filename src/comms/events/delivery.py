"""Posting stored events to tenants' webhooks (see events/service.py).

A due ``event_deliveries`` row is taken with a lease (its next attempt moved a minute on, under
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so workers never post the same row at once), posted as
JSON signed like the ``webhook`` provider's requests (``X-Comms-Timestamp``, ``X-Comms-Signature:
v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``), and marked delivered on a 2xx. Anything
else is tried again after 10 s, 20 s, 40 s... up to an hour between tries; a delivery still failing
a day after its events happened is given up (``failed_at``, ``last_error``) and shows in
``GET /communication/event-webhook``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from sqlalchemy import delete, func, select, update

from comms.kit.clock import unix_time, utcnow
from comms.kit.db import Database
from comms.kit.netguard import PublicOnlyResolver, private_host
from comms.kit.secretbox import SecretBox
from comms.models import DELIVERY_DUE_SQL, EventDelivery, EventWebhook
from comms.providers.calls import bounded_map
from comms.providers.webhook import signature

log = logging.getLogger("comms.events")


@dataclass(frozen=True, slots=True)
class _Post:
    id: str
    tenant_id: str
    url: str
    secret: str
    payload: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    post: _Post
    error: str | None  # None: delivered


class EventSender:
    """Posts due deliveries until stopped. One per dispatcher (``comms serve`` and ``comms worker``)."""

    batch = 20  # deliveries taken per round
    per_tenant = 4  # of them at most for one tenant
    concurrency = 4
    timeout_seconds = 10.0
    lease = timedelta(minutes=1)
    first_retry_seconds = 10.0
    max_retry_seconds = 3600.0
    give_up_after = timedelta(days=1)
    poll_seconds = 1.0

    def __init__(self, db: Database, box: SecretBox, allow_private: bool = False) -> None:
        self.db = db
        self.box = box
        self.allow_private = allow_private  # COMMS_EVENT_WEBHOOK_ALLOW_PRIVATE (kit/netguard.py)
        self.wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    posted = await self.deliver_due()
                except Exception:
                    log.warning("event delivery round failed", exc_info=True)
                    posted = 0
                if posted:
                    continue
                self.wake.clear()
                waiters = {asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stopping.wait())}
                try:
                    await asyncio.wait(
                        waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            if self._http is not None:
                await self._http.close()
                self._http = None

    async def deliver_due(self) -> int:
        """One round: post what is due now; returns how many deliveries were tried."""
        posts = await self._take(utcnow())
        if not posts:
            return 0
        outcomes = await bounded_map(posts, self._post, self.concurrency)
        await self._record(outcomes, utcnow())
        return len(posts)

    async def _take(self, now: datetime) -> list[_Post]:
        """Due deliveries, leased: at most ``per_tenant`` of one tenant per round, so a tenant whose
        endpoint hangs cannot fill every round while the others wait."""
        async with self.db.read() as session:  # the usual answer, without a write lock (SQLite)
            due = await session.scalar(
                select(EventDelivery.id)
                .where(DELIVERY_DUE_SQL, EventDelivery.next_attempt_at <= now)
                .limit(1)
            )
        if due is None:
            return []
        async with self.db.begin() as session:
            # The oldest per_tenant of each tenant's due rows: a tenant with a backlog of thousands
            # must not fill the round's window, or the others would wait behind all of it.
            ranked = (
                select(
                    EventDelivery.id,
                    func.row_number()
                    .over(partition_by=EventDelivery.tenant_id, order_by=EventDelivery.next_attempt_at)
                    .label("n"),
                )
                .where(DELIVERY_DUE_SQL, EventDelivery.next_attempt_at <= now)
                .subquery()
            )
            query = (
                select(EventDelivery)
                .where(
                    EventDelivery.id.in_(select(ranked.c.id).where(ranked.c.n <= self.per_tenant)),
                    # Again on the locked rows: PostgreSQL re-checks only this level's conditions
                    # on a row another worker leased and committed while this statement ran; with
                    # the subquery's alone, that row (its lease now in the future) came back too.
                    DELIVERY_DUE_SQL,
                    EventDelivery.next_attempt_at <= now,
                )
                .order_by(EventDelivery.next_attempt_at)
                .limit(self.batch * 4)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = (await session.scalars(query)).all()
            if not rows:
                return []
            hooks = {
                hook.tenant_id: hook
                for hook in await session.scalars(
                    select(EventWebhook).where(EventWebhook.tenant_id.in_({r.tenant_id for r in rows}))
                )
            }
            posts: list[_Post] = []
            taken: Counter[str] = Counter()
            for row in rows:
                hook = hooks.get(row.tenant_id)
                if hook is None:  # the webhook was deleted since: nobody to tell
                    await session.execute(delete(EventDelivery).where(EventDelivery.id == row.id))
                    continue
                if now - row.created_at >= self.give_up_after:  # also when every try so far died
                    row.failed_at, row.last_error = now, row.last_error or "not delivered within a day"
                    continue
                if len(posts) >= self.batch or taken[row.tenant_id] >= self.per_tenant:
                    continue  # left for the next round
                try:
                    secret = self.box.decrypt(hook.secret)
                except Exception:
                    # None of the tenant's deliveries can be signed: all of them are given up now,
                    # not the few a round looks at.
                    lost = "the webhook's secret cannot be decrypted (COMMS_SECRET_KEY changed?)"
                    await session.execute(
                        update(EventDelivery)
                        .where(EventDelivery.tenant_id == row.tenant_id, DELIVERY_DUE_SQL)
                        .values(failed_at=now, last_error=lost)
                        .execution_options(synchronize_session=False)
                    )
                    row.failed_at, row.last_error = now, lost
                    continue
                row.next_attempt_at = now + self.lease
                taken[row.tenant_id] += 1
                posts.append(_Post(row.id, row.tenant_id, hook.url, secret, row.payload))
            return posts

    async def _post(self, post: _Post) -> _Outcome:
        if not self.allow_private and (host := private_host(post.url)) is not None:
            return _Outcome(post, f"refused: {host} is not a public address")
        if self._http is None or self._http.closed:
            resolver = None if self.allow_private else PublicOnlyResolver()
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver),
                cookie_jar=aiohttp.DummyCookieJar(),  # tenants' endpoints share this session
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
            )
        body = post.payload.encode()
        timestamp = str(int(unix_time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "comms-events/1",
            "X-Comms-Timestamp": timestamp,
            "X-Comms-Signature": signature(post.secret, timestamp, body),
        }
        try:
            # Neither a redirect followed (it could lead anywhere) nor the answer's body read
            # (only its status counts, and a hostile endpoint could send gigabytes).
            async with self._http.post(post.url, data=body, headers=headers, allow_redirects=False) as answer:
                if 200 <= answer.status < 300:
                    return _Outcome(post, None)
                return _Outcome(post, f"HTTP {answer.status}")
        except TimeoutError:
            return _Outcome(post, f"no answer within {self.timeout_seconds:.0f} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return _Outcome(post, f"{type(exc).__name__}: {exc}"[:500])

    async def _record(self, outcomes: list[_Outcome], now: datetime) -> None:
        """Delivered, or tried again later. A failure holds back the tenant's other waiting
        deliveries as long: its endpoint is down for them too, and is asked once per wait."""
        async with self.db.begin() as session:
            for outcome in outcomes:
                row = await session.get(EventDelivery, outcome.post.id)
                if row is None:
                    continue
                row.attempts += 1
                if outcome.error is None:
                    row.delivered_at, row.last_error = now, None
                    continue
                row.last_error = outcome.error
                if now - row.created_at >= self.give_up_after:
                    row.failed_at = now
                    log.warning(
                        "event delivery given up", extra={"tenant": row.tenant_id, "error": outcome.error}
                    )
                    continue
                wait = min(self.first_retry_seconds * 2 ** min(row.attempts - 1, 20), self.max_retry_seconds)
                row.next_attempt_at = now + timedelta(seconds=wait)
                await session.execute(
                    update(EventDelivery)
                    .where(
                        EventDelivery.tenant_id == row.tenant_id,
                        DELIVERY_DUE_SQL,
                        EventDelivery.next_attempt_at < row.next_attempt_at,
                    )
                    .values(next_attempt_at=row.next_attempt_at)
                    .execution_options(synchronize_session=False)
                )


__all__ = ["EventSender"]
