"""The dispatcher: claims due messages in batches, sends them, records what happened.

One loop claims up to ``batch_size`` due rows at a time while fewer than ``concurrency``
batches are in flight. A second, express loop claims only verification codes, in small
batches and outside those slots, so a one-time code never waits behind a bulk's batches in
flight. Each batch is gated again (an unsubscribe after acceptance wins), rendered, handed to
its route's providers in failover order, and completed in one write. An idle loop sleeps
until it is woken (a commit made work due), the next scheduled row falls due, or the poll
interval passes, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from comms import metrics
from comms.compliance import quiet_hours
from comms.compliance.addresses import scrub_address
from comms.compliance.content import MessageDecorator
from comms.compliance.domain_checks import DomainRechecker
from comms.compliance.gates import AcceptanceGate
from comms.compliance.reputation import email_reputation, marketing_paused
from comms.compliance.retention import RecipientAnonymizer, purge_expired_content
from comms.compliance.service import contact_of_message, suppress_opted_out
from comms.compliance.unsubscribe import UnsubscribeSigner
from comms.config import Settings
from comms.dispatch.backoff import deferral_wait, retry_delay
from comms.dispatch.breaker import BreakerState
from comms.dispatch.compose import BatchCache, BatchContext, Composed, SecretUnavailable, compose
from comms.dispatch.queue import (
    ClaimedMessage,
    claim_due,
    complete,
    extend_leases,
    next_due_at,
    outcome_time,
    release_claims,
    release_expired_leases,
    settle_unknown,
    unknown_to_recheck,
)
from comms.dispatch.routing import Route, Router
from comms.dispatch.wakeup import WakeListener
from comms.errors import PermanentProviderError, TransientProviderError
from comms.events.delivery import EventSender
from comms.events.service import EventBuffer, Subscriptions, forget_old_deliveries, item_event
from comms.kit import clock
from comms.kit.clock import isoformat, utcnow
from comms.kit.db import Database, sync_clock
from comms.kit.ids import new_id
from comms.kit.masking import mask_recipient
from comms.kit.ratelimit import LocalLimiter, RateLimiter
from comms.kit.secretbox import SecretBox
from comms.messages import idempotency
from comms.messages.fairness import rank_of
from comms.messages.recipients import region_of_phone
from comms.models import Batch, Message, Tenant
from comms.providers.base import OutboundMessage, Outcome, SendResult
from comms.providers.calls import carries_code, fault
from comms.receipts.service import retry_unmatched
from comms.templates.rendering import REDACTED, TemplateError

log = logging.getLogger("comms.dispatch")
# Which of a claim's batches were cancelled: built once, as it runs for every claimed batch.
_CANCELLED = select(Batch.id).where(
    Batch.id.in_(bindparam("ids", expanding=True)), Batch.cancelled_at.is_not(None)
)
RESPONSE_LIMIT = 1000
PURGE_INTERVAL = 3600.0  # seconds between retention purges
PAUSE_RETRY = timedelta(hours=1)  # marketing held back by the complaint-rate breaker
EXPRESS_BATCH = 50  # verification codes claimed per express round
ERROR_PAUSE = 1.0  # seconds a loop waits after an error (the database away) before it tries again
# A message the provider's flow control keeps holding back (a per-number daily limit) waits twice
# as long each time (dispatch/backoff.py), up to an hour, and fails at this many deferrals: with
# a 60 s first wait the 31st comes a little over 25 hours after the first, so a per-number daily
# limit (Aliyun's 10 a day) has reset at least once before the message gives up.
MAX_PROVIDER_DEFERRALS = 31
YIELD_EVERY = 64
COMPLETE_RETRIES = (0.2, 1.0, 3.0)  # seconds before each retry of a failed completion
# A verification code the provider holds back longer than this would arrive stale: fail it.
VERIFICATION_MAX_DEFERRAL = 300.0
UNKNOWN_WINDOW = timedelta(days=1)  # how long unknown rows are asked about again
UNKNOWN_RECHECK = timedelta(minutes=1)  # between two questions about the same row
RECHECK_BUDGET = 20.0  # seconds one re-check round may spend asking providers
FINAL_COMPLETE_TIMEOUT = 5.0  # seconds a stopping worker still gives to recording known outcomes
BATCH_CANCELLED = "cancelled by request"


@dataclass(slots=True)
class _Progress:
    """How far the claimed batch being processed (in its own task) has got.

    ``handed``: ids given to a provider's send and not refused as a whole: if the batch is stopped
    or meets a fault of ours mid-way, only these may have left. ``decided``: the results known so
    far, by message id, and ``composed`` what was sent for each (to record a decided result if the
    batch is stopped before it ends). ``cancel_checked``: when the claimed messages were checked
    for a cancel of their batches (time.monotonic()), and ``batch_checked`` when a batch was
    checked again since."""

    handed: set[str] = field(default_factory=set)
    decided: dict[str, tuple[SendResult, Route | None]] = field(default_factory=dict)
    composed: dict[str, Composed] = field(default_factory=dict)
    cancel_checked: float = field(default_factory=time.monotonic)
    batch_checked: dict[str, float] = field(default_factory=dict)

    def stale(self, batch_ids: set[str], now: float) -> set[str]:
        """Those of ``batch_ids`` not checked for a cancel within CANCEL_RECHECK_SECONDS."""
        last = self.batch_checked
        return {b for b in batch_ids if now - last.get(b, self.cancel_checked) >= CANCEL_RECHECK_SECONDS}


_PROGRESS: contextvars.ContextVar[_Progress | None] = contextvars.ContextVar(
    "dispatch_progress", default=None
)
# A call of a claimed batch that starts this long after its messages were last checked for a
# cancel of their batch looks again (one indexed read, only when calls are spread out).
CANCEL_RECHECK_SECONDS = 1.0


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        secrets: SecretBox,
        router: Router,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.router = router
        self.limiter = limiter or LocalLimiter()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id('wrk')[-8:]}"
        self._cache = BatchCache(secrets)
        self._domains = DomainRechecker(db, secrets, settings.dns_nameserver)
        self._subscriptions = Subscriptions()
        self.events = EventSender(db, secrets, settings.event_webhook_allow_private)
        self._events_task: asyncio.Task[None] | None = None
        self._decorator = MessageDecorator(
            settings.resolved_public_url, UnsubscribeSigner(settings.resolved_secret_key)
        )
        self._wake = asyncio.Event()
        self._express_wake = asyncio.Event()
        self._express_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.dispatch_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None
        self._listener: WakeListener | None = None
        self._last_purge = 0.0
        self._anonymizer = RecipientAnonymizer(db)
        self._salts: dict[str, str] = {}
        self._codes_waiting: Counter[str] = Counter()  # rate-limit key -> calls with codes waiting

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease_seconds)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, express_only: bool = False) -> None:
        """``express_only``: verification codes only, woken in-process by the API that accepted
        them (an API process of a scale-out deployment: its event loop is idle next to a
        worker's, so a code goes out at once while workers carry the bulk)."""
        if express_only:
            self._express_task = asyncio.create_task(self._run_express(), name="comms-express")
            return
        if not self.db.is_sqlite and self._listener is None:
            self._listener = WakeListener(self.db.url, self.wake)
            self._listener.start()
        self._loop_task = asyncio.create_task(self.run(), name="comms-dispatcher")
        self._reaper_task = asyncio.create_task(self._reap_loop(), name="comms-reaper")
        self._events_task = asyncio.create_task(self.events.run(self._stopping), name="comms-events")
        self._express_task = asyncio.create_task(self._run_express(), name="comms-dispatcher-express")

    def stopped_tasks(self) -> list[str]:
        """Names of this dispatcher's long-lived tasks that ended although it was not stopped
        (a bug that escaped their own error handling): the process then sends nothing."""
        if self._stopping.is_set():
            return []
        tasks = (self._loop_task, self._reaper_task, self._express_task, self._events_task)
        return [task.get_name() for task in tasks if task is not None and task.done()]

    def wake(self) -> None:
        self._wake.set()
        self._express_wake.set()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let in-flight batches finish (drain) for up to ``timeout`` seconds in
        all, then cancel what is left: its claims are given back (flagged) before this returns."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        self._wake.set()
        self._express_wake.set()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._maintenance is not None:
            self._maintenance.cancel()
        # The claim loop exits at its next check of _stopping (a claim in progress ends first);
        # the express lane may be sending a round of codes: both drain like the batches.
        tasks = (self._loop_task, self._reaper_task, self._express_task, self._maintenance, self._events_task)
        running = {t for t in tasks if t is not None}
        if running:
            await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        left = [t for t in (*running, *self._tasks) if not t.done()]
        for task in left:
            task.cancel()
        if left:  # let the cancelled batches give their claims back before the database closes
            await asyncio.wait(left, timeout=FINAL_COMPLETE_TIMEOUT + 5.0)

    async def run(self) -> None:
        log.info("dispatcher started", extra={"worker": self.worker_id})
        while not self._stopping.is_set():
            holding = False  # a batch slot this round took and no task has taken over yet
            try:
                if not await self._take_slot():
                    break
                holding = True
                self._wake.clear()
                await self._on_server_clock()
                started = time.perf_counter()
                # One transaction over the levels' statements: a failure part-way must not leave
                # the levels claimed before it leased to nobody.
                async with self.db.begin() as session:
                    claimed = await claim_due(
                        session, self.worker_id, self.settings.dispatch_batch_size, utcnow(), self._lease
                    )
                metrics.CLAIM_LATENCY.observe(time.perf_counter() - started)
                metrics.CLAIMED.inc(len(claimed))
                if not claimed:
                    holding = False
                    self._slots.release()
                    await self._idle()
                    continue
                task = asyncio.create_task(self._process(claimed))
                holding = False  # the task gives it back when it ends (_finished)
                self._tasks.add(task)
                task.add_done_callback(self._finished)
            except asyncio.CancelledError:
                raise
            except Exception:
                if holding:  # a claim that failed (the database away) must not keep its slot
                    self._slots.release()
                log.exception("dispatcher loop error; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=ERROR_PAUSE)
        log.info("dispatcher stopped", extra={"worker": self.worker_id})

    async def _take_slot(self) -> bool:
        """Wait for a free batch slot; False (holding none) once the dispatcher is stopping."""
        if self._stopping.is_set():
            return False
        slot = asyncio.ensure_future(self._slots.acquire())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({slot, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            slot.cancel()
        if slot.done() and not slot.cancelled():
            if not self._stopping.is_set():
                return True
            self._slots.release()
        return False

    async def recheck_unknown(self) -> int:
        """``unknown`` rows (no answer twice) are asked about again at the provider that carried
        them, where it can be asked (CONTRACT.md): what it knows moves them to ``sent`` or
        ``failed``; otherwise they are looked at again after UNKNOWN_RECHECK, for a day."""
        now = utcnow()
        try:
            async with self.db.read() as session:
                waiting = await unknown_to_recheck(session, now, UNKNOWN_WINDOW, UNKNOWN_RECHECK)
                contexts = {b: await self._cache.get(session, b) for b in {c.batch_id for c, _ in waiting}}
            outcomes: list[dict[str, Any]] = []
            started = time.monotonic()
            for c, account_id in waiting:
                if time.monotonic() - started > RECHECK_BUDGET:
                    break  # slow providers: the rest waits for the next round
                if c.provider is None and account_id is None:
                    # Interrupted before any attempt recorded where it went: the primary route
                    # most likely has it, as for a possible duplicate (_previous_route).
                    route = _previous_route(await self.router.all_routes(c.tenant_id, c.channel), c)
                else:
                    route = await self.router.route_of(c.provider, account_id)
                outcomes.append(await self._recheck_one(c, route, contexts[c.batch_id], now))
            async with self.db.begin() as session:
                await settle_unknown(session, now, outcomes)
        except Exception:
            log.warning("re-checking unknown messages failed", exc_info=True)
            return 0
        settled = sum(1 for o in outcomes if o.get("status"))
        if settled:
            metrics.RECONCILED.labels("unknown").inc(settled)
        return settled

    async def _recheck_one(
        self, c: ClaimedMessage, route: Route | None, context: BatchContext, now: datetime
    ) -> dict[str, Any]:
        if route is None or not route.provider.can_reconcile:
            return {"id": c.id}  # nobody to ask: looked at again later, for a day
        try:
            message = compose(c, context, self._cache, self._decorator, _region(c)).message
            answer = (await route.provider.reconcile([message]))[0]
            if answer.provider_message_id in await self._ids_held_elsewhere(route, [answer]):
                return {"id": c.id}  # the record is another message's: it says nothing of this one
        except Exception as exc:
            log.warning("reconcile failed", extra={"provider": route.name, "error": str(exc)})
            return {"id": c.id}
        if answer.outcome is Outcome.SENT:
            return {
                "id": c.id,
                "status": "sent",
                "sent_at": now,
                "provider_message_id": answer.provider_message_id,
                "response": f"reconciled with {route.name}: {answer.response or 'accepted'}"[:RESPONSE_LIMIT],
                "error": None,
            }
        if answer.outcome is Outcome.FAILED:
            return {"id": c.id, "status": "failed", "error": f"reconciled with {route.name}: {answer.error}"}
        return {"id": c.id}

    async def retry_unmatched_receipts(self) -> int:
        """Receipts that arrived before their send was recorded (receipts/service.py)."""
        try:
            async with self.db.begin() as session:
                applied = await retry_unmatched(session, self.router.provider_for)
        except Exception:
            log.warning("retrying unmatched receipts failed", exc_info=True)
            return 0
        if applied:
            log.info("applied receipts that arrived before their send was recorded", extra={"count": applied})
        return applied

    async def _run_express(self) -> None:
        """Verification codes only: claimed as soon as a wake-up arrives, sent in this task."""
        while not self._stopping.is_set():
            try:
                self._express_wake.clear()
                await self._on_server_clock()
                # Codes only: one claim statement, which on PostgreSQL commits by itself (no
                # BEGIN and COMMIT round trips before a code goes out).
                async with self.db.write_one() as session:
                    claimed = await claim_due(
                        session, self.worker_id, EXPRESS_BATCH, utcnow(), self._lease, max_priority=0
                    )
                if claimed:
                    metrics.CLAIMED.inc(len(claimed))
                    await self._process(claimed)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._express_wake.wait(), self.settings.poll_interval_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("express dispatch error; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=ERROR_PAUSE)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("dispatch batch crashed", exc_info=task.exception())

    async def _idle(self) -> None:
        timeout = self.settings.poll_interval_seconds
        async with self.db.read() as session:
            due = await next_due_at(session)
        if due is not None:
            timeout = max(0.0, min(timeout, (due - utcnow()).total_seconds()))
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _reap_loop(self) -> None:
        """Every ``min(10 s, lease / 2)``, beside the claim loop (which may wait long for a batch
        slot while a slow provider holds them all): take back the rows of expired leases."""
        interval = min(10.0, self.settings.lease_seconds / 2)
        while not self._stopping.is_set():
            try:
                await self._reap()
            except Exception:
                log.exception("reaper round failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    async def _on_server_clock(self) -> None:
        """Leases and due times are the database server's (kit/clock.py): until a first reading
        of its clock, none is written or compared on this machine's own, which could be off (a
        lease already expired to the other workers, a live one taken back, a scheduled message
        claimed early). Raises while the database is away, as the statement after would."""
        if not self.db.is_sqlite and not clock.following():
            await sync_clock(self.db)

    async def _reap(self) -> None:
        await self._on_server_clock()
        async with self.db.begin() as session:
            reaped = await release_expired_leases(session, utcnow())
        metrics.REAPER_ROUNDS.inc()
        metrics.LEASES_EXPIRED.inc(reaped)
        if reaped:
            log.warning("re-queued messages whose lease expired", extra={"count": reaped})
            self._wake.set()
        if not self._stopping.is_set() and (self._maintenance is None or self._maintenance.done()):
            # Beside the claim loop, not in it: asking providers about unknown rows takes
            # network round trips that must not hold up claiming.
            self._maintenance = asyncio.create_task(self._maintain(), name="comms-maintenance")

    async def _maintain(self) -> None:
        """One maintenance round; each step's failure is logged and leaves the others to run."""
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("receipts", self.retry_unmatched_receipts),
            ("unknown", self.recheck_unknown),
        ]
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_purge >= PURGE_INTERVAL:
            self._last_purge = loop_now
            steps += [
                ("retention", self._purge),
                ("domains", self._recheck_domains),
                ("anonymize", self._anonymize),
            ]
        for name, step in steps:
            try:
                await step()
            except Exception:
                log.warning("maintenance step failed", extra={"step": name}, exc_info=True)

    async def _purge(self) -> None:
        async with self.db.begin() as session:
            purged = await purge_expired_content(session, utcnow())
            await idempotency.forget_expired(session, utcnow())
            await forget_old_deliveries(session, utcnow())
        if purged:
            log.info("purged content past its retention period", extra={"count": purged})

    async def _recheck_domains(self) -> None:
        await self._domains.run(utcnow(), budget_seconds=RECHECK_BUDGET)

    async def _anonymize(self) -> None:
        anonymized = await self._anonymizer.run(utcnow(), RECHECK_BUDGET)
        if anonymized:
            log.info("anonymized recipients past log retention", extra={"count": anonymized})

    # ---- one claimed batch ---------------------------------------------------------------------

    async def _heartbeat(self, ids: list[str]) -> None:
        """Keep the lease of a batch in flight alive (a slow provider must not get it reaped)."""
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.begin() as session:
                    await extend_leases(session, ids, self.worker_id, utcnow(), self._lease)
            except Exception:  # the database is away: the next beat tries again
                log.warning("lease heartbeat failed")

    async def _process(self, claimed: list[ClaimedMessage]) -> None:
        heartbeat = asyncio.create_task(self._heartbeat([c.id for c in claimed]))
        try:
            await self._process_claimed(claimed)
        finally:
            heartbeat.cancel()

    async def _process_claimed(self, claimed: list[ClaimedMessage]) -> None:
        # This task's own (a task runs in a copy of its creator's context; the express lane runs
        # one batch after another in one task, each setting it anew).
        progress = _Progress()
        _PROGRESS.set(progress)
        by_id = {c.id: c for c in claimed}
        try:
            rows = await self._deliver(claimed)
        except asyncio.CancelledError:
            # Stopped past the drain timeout. What a provider has already answered is recorded:
            # given back, a message it accepted would go out a second time. Of the rest, what was
            # handed to a provider may have left, so it goes back flagged; the rest as it was.
            now = utcnow()
            recorded: set[str] = set()
            if decided := self._decided_rows(by_id, progress, now):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(FINAL_COMPLETE_TIMEOUT), self.db.begin() as session:
                        await self._record(session, decided, by_id)
                    recorded = {row["id"] for row in decided}
            rest = [c for c in claimed if c.id not in recorded]
            unsent = [c.id for c in rest if c.id not in progress.handed]
            async with self.db.begin() as session:
                await release_claims(session, [(c.id, c.attempts) for c in rest], self.worker_id, now, unsent)
            raise
        except Exception as exc:
            # A fault of ours (a database hiccup, a secret that cannot be decrypted): what a
            # provider has already answered stands; the rest backs off like a transient provider
            # error, so it neither spins nor retries forever.
            log.exception("dispatch failed")
            now = utcnow()
            error = f"dispatch error: {type(exc).__name__}: {exc}"
            known = {row["id"]: row for row in self._decided_rows(by_id, progress, now)}
            rows = [
                known.get(c.id) or self._after_fault(c, now, error, c.id in progress.handed) for c in claimed
            ]
        try:
            told = await self._complete(rows, by_id)
        except asyncio.CancelledError:
            # Stopped while recording: the sends happened, so record them once more before going
            # (left `sending`, the reaper would take them for interrupted sends).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FINAL_COMPLETE_TIMEOUT), self.db.begin() as session:
                    await self._record(session, rows, by_id)
            raise
        if told:
            self.events.wake.set()
        finished = Counter(
            (by_id[row["id"]].tenant_id, by_id[row["id"]].channel, row["provider"] or "none", row["status"])
            for row in rows
        )
        for labels, count in finished.items():  # one labelled child per group, not per message
            metrics.FINISHED.labels(*labels).inc(count)

    def _decided_rows(
        self, by_id: dict[str, ClaimedMessage], progress: _Progress, now: datetime
    ) -> list[dict[str, Any]]:
        """The rows of the claimed messages whose result is already known (a provider answered,
        or reconciliation found them), for a batch stopped or failed before its end. A row that
        cannot be built (the fault being handled may be in that very code) is left out: its
        message is then given back as one whose request may have left."""
        rows = []
        vendor_text = _VendorText([x for i, x in progress.composed.items() if i in by_id], by_id)
        for c in by_id.values():
            if c.id in progress.decided and c.id in progress.composed:
                try:
                    result, route = progress.decided[c.id]
                    rows.append(self._result_row(c, progress.composed[c.id], result, route, now, vendor_text))
                except Exception:
                    log.exception("recording a known outcome failed", extra={"log_id": c.id})
        return rows

    async def _complete(self, rows: list[dict[str, Any]], by_id: dict[str, ClaimedMessage]) -> bool:
        """Record the outcomes (and their events); a database hiccup is retried, because rows
        left ``sending`` would be reaped and re-sent as possible duplicates although the provider
        has them. Whether events were written."""
        for delay in COMPLETE_RETRIES:
            try:
                async with self.db.begin() as session:
                    return await self._record(session, rows, by_id)
            except Exception:
                log.warning("recording outcomes failed; retrying", extra={"in_seconds": delay})
                await asyncio.sleep(delay)
        async with self.db.begin() as session:  # the last try: an error now goes to the caller
            return await self._record(session, rows, by_id)

    async def _record(
        self, session: AsyncSession, rows: list[dict[str, Any]], by_id: dict[str, ClaimedMessage]
    ) -> bool:
        """In the caller's transaction: the outcomes, and the events of the statuses actually set
        (not of rows whose lease was lost, nor of rows a receipt had moved on) for the tenants
        whose webhook wants them. Whether events were written."""
        now = utcnow()
        hooks = await self._subscriptions.statuses(session, {c.tenant_id for c in by_id.values()})
        updated = await complete(session, self.worker_id, now, rows, ids_set=bool(hooks))
        if opted_out := [by_id[row["id"]] for row in rows if row.get("opted_out")]:
            await _suppress_opted_out(session, opted_out)
        if not hooks:
            return False
        events = EventBuffer()
        for row in rows:
            c = by_id[row["id"]]
            if row["id"] in updated and row["status"] in hooks.get(c.tenant_id, ()):
                events.add(
                    c.tenant_id, item_event(c, row["status"], row["error"], row["provider"], row["pmid"], now)
                )
        return await events.write(session, now) > 0

    async def _deliver(self, claimed: list[ClaimedMessage]) -> list[dict[str, Any]]:
        now = utcnow()
        progress = _PROGRESS.get()
        rows: list[dict[str, Any]] = []
        contexts: dict[str, BatchContext] = {}
        gates: dict[tuple[str, str, str], AcceptanceGate] = {}
        paused: set[str] = set()
        # Independent look-ups (batches, cancellations, suppressions, consents, counts): no
        # snapshot is shared between them, so on PostgreSQL they go without BEGIN and ROLLBACK.
        async with self.db.read_one() as session:
            batch_ids = {c.batch_id for c in claimed}
            for batch_id in batch_ids:
                contexts[batch_id] = await self._cache.get(session, batch_id)
            # Read fresh, not from the cache: rows in flight when their batch was cancelled come
            # back here after a retry, a deferral or a dead worker, and must not go out.
            cancelled = set(await session.scalars(_CANCELLED, {"ids": list(batch_ids)}))
            if progress is not None:
                progress.cancel_checked = time.monotonic()
            if cancelled:
                rows.extend(self._cancelled_row(c, now) for c in claimed if c.batch_id in cancelled)
                claimed = [c for c in claimed if c.batch_id not in cancelled]
            groups: dict[tuple[str, str, str], list[ClaimedMessage]] = defaultdict(list)
            for c in claimed:
                groups[(c.tenant_id, c.channel, c.category)].append(c)
            for (tenant_id, channel, category), members in groups.items():
                salt = self._salts.get(tenant_id)
                if salt is None:  # a tenant's hash salt never changes: one read per process
                    tenant = await session.get(Tenant, tenant_id)
                    assert tenant is not None
                    salt = self._salts[tenant_id] = tenant.hash_salt
                gates[(tenant_id, channel, category)] = await AcceptanceGate.prepare(
                    session,
                    tenant_id=tenant_id,
                    salt=salt,
                    settings=contexts[members[0].batch_id].settings,
                    channel=channel,
                    category=category,
                    at_dispatch=True,
                )
                await gates[(tenant_id, channel, category)].load([m.recipient_key for m in members])
                if channel == "email" and category == "marketing":
                    reputation = await email_reputation(session, tenant_id, now)
                    if marketing_paused(reputation, contexts[members[0].batch_id].settings):
                        paused.add(tenant_id)
        outgoing: dict[tuple[str, str], list[Composed]] = defaultdict(list)
        for i, c in enumerate(claimed):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                # Composing 500 messages is ~20 ms of CPU: let the express lane's I/O in between.
                await asyncio.sleep(0)
            gate = gates[(c.tenant_id, c.channel, c.category)]
            region = _region(c)  # once per message: the gate, quiet hours and composing need it
            verdict = gate.check(c.recipient_key, region if gate.needs_region else None)
            if verdict is not None:
                rows.append(self._row(c, now, status=verdict[0], error=verdict[1]))
                continue
            if c.tenant_id in paused and c.channel == "email" and c.category == "marketing":
                # The complaint-rate breaker tripped after acceptance: hold marketing back, retry later.
                error = "marketing paused: spam complaint rate above the tenant's threshold"
                rows.append(self._row(c, now, status="deferred", error=error, due_at=now + PAUSE_RETRY))
                continue
            if quiet_hours.applies(c.channel, c.category):
                # Accepted in the window, but the window may have closed while it waited in the queue.
                wait = quiet_hours.deferral(now, c.recipient, region, contexts[c.batch_id].settings)
                if wait is not None:
                    error = f"quiet hours: deferred until {isoformat(wait)}"
                    rows.append(self._row(c, now, status="deferred", error=error, due_at=wait))
                    continue
            try:
                composed = compose(c, contexts[c.batch_id], self._cache, self._decorator, region)
            except TemplateError as exc:
                rows.append(self._row(c, now, status="failed", error=str(exc)))
                continue
            except SecretUnavailable as exc:
                rows.append(self._retry_or_fail(c, now, str(exc)))
                continue
            outgoing[(c.tenant_id, c.channel)].append(composed)
            if progress is not None:
                progress.composed[c.id] = composed
        by_id = {c.id: c for c in claimed}
        # The groups (a tenant's channel: its own accounts, rates and vendors) go at once, not one
        # after another: a tenant whose account sends one message a second, or whose vendor
        # hangs, must not hold another tenant's code claimed in the same batch behind it.
        if len(outgoing) == 1:
            ((key, composed_list),) = outgoing.items()
            rows.extend(await self._send_group(key, composed_list, by_id, now))
        else:
            # A fault of ours in one group stops the others (a TaskGroup cancels them): the batch
            # is then handled as a whole, what was decided kept and the rest given back flagged.
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._send_group(k, listed, by_id, now))
                    for k, listed in outgoing.items()
                ]
            for task in tasks:
                rows.extend(task.result())
        return rows

    async def _send_group(
        self,
        key: tuple[str, str],
        composed_list: list[Composed],
        by_id: dict[str, ClaimedMessage],
        now: datetime,
    ) -> list[dict[str, Any]]:
        """The rows of one (tenant, channel) group's messages, sent through its routes."""
        tenant_id, channel = key
        messages = [x.message for x in composed_list]
        results: list[tuple[SendResult, Route | None]]
        try:
            routes = await self.router.routes(tenant_id, channel)
            every = await self.router.all_routes(tenant_id, channel)
        except Exception as exc:  # this group sent nothing; others may already have
            log.exception("routing failed")
            error = f"routing failed: {type(exc).__name__}"
            results = [(SendResult(m.id, Outcome.RETRY, error=error), None) for m in messages]
        else:
            try:
                results = await self._reconcile_then_send(routes, every, messages, by_id)
            except Exception as exc:
                # A fault of ours part-way (provider errors are results, not exceptions): what was
                # decided stands, what was handed to a provider may have left (UNKNOWN: never
                # re-sent blindly), the rest was not sent (RETRY); the other groups keep theirs.
                log.exception("sending a group failed unexpectedly")
                results = [self._after_group_fault(m, exc) for m in messages]
        vendor_text = _VendorText(composed_list, by_id)
        return [
            self._result_row(by_id[item.message.id], item, result, route, now, vendor_text)
            for item, (result, route) in zip(composed_list, results, strict=True)
        ]

    @staticmethod
    def _after_group_fault(message: OutboundMessage, exc: Exception) -> tuple[SendResult, Route | None]:
        progress = _PROGRESS.get()
        if progress is not None and message.id in progress.decided:
            return progress.decided[message.id]
        if progress is None or message.id in progress.handed:
            return SendResult(message.id, Outcome.UNKNOWN, error=fault(exc)), None
        return SendResult(message.id, Outcome.RETRY, error=f"not sent: {fault(exc)}"), None

    async def _reconcile_then_send(
        self,
        routes: Sequence[Route],
        every: Sequence[Route],
        messages: list[OutboundMessage],
        claimed: dict[str, ClaimedMessage],
    ) -> list[tuple[SendResult, Route | None]]:
        """A possible duplicate (an earlier request got no answer, or its worker died mid-send) is
        first looked up at the provider it most likely reached: the route recorded for it, else
        the primary. What the provider knows is final; the rest is sent (once more, flagged)."""
        known: dict[str, tuple[SendResult, Route | None]] = {}
        asked: dict[int, tuple[Route, list[OutboundMessage]]] = {}
        for message in messages:
            c = claimed[message.id]
            if not c.possible_duplicate:
                continue
            route = _previous_route(every, c)  # open breaker or not: it may have the message
            if route is not None and route.provider.can_reconcile:
                asked.setdefault(id(route), (route, []))[1].append(message)
        for route, group in asked.values():
            try:
                answers = await route.provider.reconcile(group)
                claimed_elsewhere = await self._ids_held_elsewhere(route, answers)
            except Exception as exc:  # cannot ask now: fall back to sending once more, flagged
                log.warning("reconcile failed", extra={"provider": route.name, "error": str(exc)})
                continue
            for answer in answers:
                if answer.provider_message_id in claimed_elsewhere:
                    # The provider's record belongs to another of our messages (same number and
                    # text, say): it says nothing of this one, which is sent once more, flagged.
                    continue
                if answer.outcome is Outcome.SENT:
                    reply = f"reconciled with {route.name}: {answer.response or 'accepted earlier'}"
                    known[answer.message_id] = (
                        SendResult.sent(answer.message_id, answer.provider_message_id, reply),
                        route,
                    )
                elif answer.outcome is Outcome.FAILED:
                    known[answer.message_id] = (answer, route)
            metrics.RECONCILED.labels(route.name).inc(len(group))
        if (progress := _PROGRESS.get()) is not None:
            progress.decided.update(known)
        to_send = [m for m in messages if m.id not in known]
        batch_of = {m.id: claimed[m.id].batch_id for m in to_send}
        sent = dict(
            zip(
                (m.id for m in to_send),
                await self._send_with_failover(routes, every, to_send, batch_of),
                strict=True,
            )
        )
        return [known.get(m.id) or sent[m.id] for m in messages]

    async def _ids_held_elsewhere(self, route: Route, answers: Sequence[SendResult]) -> set[str]:
        """Provider ids in ``answers`` that another message already holds (recorded for the same
        account, or named for two messages of this round): a match that proves nothing."""
        ids = Counter(a.provider_message_id for a in answers if a.provider_message_id)
        held = {pmid for pmid, times in ids.items() if times > 1}
        if ids and route.account_id is not None:
            asked = {a.message_id for a in answers}
            async with self.db.read() as session:
                rows = await session.execute(
                    select(Message.id, Message.provider_message_id).where(
                        Message.provider_account_id == route.account_id,
                        Message.provider_message_id.in_(list(ids)),
                    )
                )
                held |= {pmid for message_id, pmid in rows if message_id not in asked and pmid is not None}
        return held

    async def _send_with_failover(
        self,
        routes: Sequence[Route],
        every: Sequence[Route],
        messages: list[OutboundMessage],
        batch_of: Mapping[str, str] | None = None,
    ) -> list[tuple[SendResult, Route | None]]:
        """Send through the first route; what a route refuses as a whole call goes to the next.

        Only the calls refused with a ProviderError move on: messages of calls that returned
        results are never offered to a second provider. (A provider returns UNKNOWN, rather than
        raising, for a request that may have reached the vendor.) Any other exception is a fault
        of ours in the middle of a call, after which some of its requests may have left: its
        messages are UNKNOWN (looked up or re-sent once, flagged), never offered to the next route.

        ``batch_of`` (message id -> batch id): a call that starts CANCEL_RECHECK_SECONDS or more
        after the batch's messages were checked (a slow vendor, a send rate that spreads the calls
        out) leaves out the messages whose batch was cancelled meanwhile: the cancel's answer
        promised every item not yet handed to a provider.
        """
        progress = _PROGRESS.get() or _Progress()
        # Results go straight into the batch's progress: a fault part-way keeps what was decided.
        done = progress.decided
        pending = messages
        last_error = "no provider configured for this channel"
        permanent = False
        retry_after: float | None = None
        unfit: dict[str, list[str]] = defaultdict(list)  # why routes could not carry a message
        for route in routes:
            refused: list[OutboundMessage] = []
            fitting = []
            for m in pending:
                # What a vendor cannot carry at all goes to the next route; failed if none takes it.
                reason = _unfit(route, m)
                if reason is None:
                    fitting.append(m)
                else:
                    unfit[m.id].append(reason)
                    refused.append(m)
            size = max(1, route.provider.max_batch)
            rate = route.rate_per_second or route.provider.rate_per_second
            if rate is not None:  # a call carries at most a second's worth: the rate bounds bursts too
                size = min(size, max(1, int(rate)))
            for start in range(0, len(fitting), size):
                chunk = fitting[start : start + size]
                if start and self.router.breaker(route).state() is BreakerState.OPEN:
                    # An earlier chunk of this batch opened the breaker: the rest goes elsewhere.
                    refused.extend(fitting[start:])
                    last_error, permanent = f"{route.name}: circuit open after repeated failures", False
                    break
                try:
                    await self._throttle(route, len(chunk), urgent=carries_code(chunk))
                except Exception as exc:  # nothing was sent: like a refusal, the next route or a retry
                    log.exception("send rate check failed", extra={"provider": route.name})
                    refused.extend(chunk)
                    last_error, permanent = f"{route.name}: send rate check failed: {exc}", False
                    continue
                if batch_of and (stale := progress.stale({batch_of[m.id] for m in chunk}, time.monotonic())):
                    progress.batch_checked.update(dict.fromkeys(stale, time.monotonic()))
                    stopped = await self._cancelled_batches(stale)
                    for m in chunk:
                        if batch_of[m.id] in stopped:
                            done[m.id] = (SendResult(m.id, Outcome.CANCELLED, error=BATCH_CANCELLED), None)
                    chunk = [m for m in chunk if batch_of[m.id] not in stopped]
                    if not chunk:
                        continue
                started = time.perf_counter()
                progress.handed.update(m.id for m in chunk)
                try:
                    results = await route.provider.send(chunk)
                    for result in results:
                        done[result.message_id] = (result, route)
                    # A vendor that answers nothing at all is failing, though nothing was raised.
                    self.router.report(route, ok=not all(r.outcome is Outcome.UNKNOWN for r in results))
                    metrics.PROVIDER_LATENCY.labels(route.name, "ok").observe(time.perf_counter() - started)
                except PermanentProviderError as exc:
                    metrics.PROVIDER_LATENCY.labels(route.name, "error").observe(
                        time.perf_counter() - started
                    )
                    progress.handed.difference_update(m.id for m in chunk)  # refused: none left
                    refused.extend(chunk)
                    last_error, permanent = f"{route.name}: {exc.message}", True
                    self.router.report(route, ok=False)
                except TransientProviderError as exc:
                    metrics.PROVIDER_LATENCY.labels(route.name, "error").observe(
                        time.perf_counter() - started
                    )
                    progress.handed.difference_update(m.id for m in chunk)  # refused: none left
                    refused.extend(chunk)
                    last_error, permanent = f"{route.name}: {exc.message}", False
                    retry_after = exc.retry_after
                    self.router.report(route, ok=False)
                except Exception as exc:
                    error = f"{route.name} failed mid-call: {type(exc).__name__}: {exc}"
                    for m in chunk:
                        done[m.id] = (SendResult(m.id, Outcome.UNKNOWN, error=error), route)
                    self.router.report(route, ok=False)
                    log.exception("provider call failed unexpectedly", extra={"provider": route.name})
            pending = refused
            if not pending:
                break
        outcome = Outcome.FAILED if permanent else Outcome.RETRY
        for message in pending:
            if len(unfit[message.id]) == len(routes):  # none of the routes tried can carry it
                reasons = "; ".join(unfit[message.id])
                if any(_unfit(r, message) is None for r in every):  # one whose breaker is open can
                    error = f"waiting for a route that can carry it (its breaker is open): {reasons}"
                    done[message.id] = (SendResult(message.id, Outcome.RETRY, error=error), None)
                else:
                    error = f"no provider can carry it: {reasons}"
                    done[message.id] = (SendResult(message.id, Outcome.FAILED, error=error), None)
                continue
            done[message.id] = (
                SendResult(message.id, outcome, error=last_error, retry_after=retry_after),
                None,
            )
        return [
            done.get(m.id) or (SendResult(m.id, Outcome.UNKNOWN, error="the provider gave no result"), None)
            for m in messages
        ]

    async def _cancelled_batches(self, batch_ids: set[str]) -> set[str]:
        """Those of ``batch_ids`` cancelled by now; none when the database cannot say (the send
        goes on, as it would have without asking)."""
        try:
            async with self.db.read_one() as session:
                return set(await session.scalars(_CANCELLED, {"ids": list(batch_ids)}))
        except Exception:
            log.warning("could not look up cancelled batches before a send", exc_info=True)
            return set()

    async def _throttle(self, route: Route, cost: int, urgent: bool = False) -> None:
        """Wait until the route's rate (the account's, else the provider's own) admits ``cost``
        messages; shared by every worker through Redis when it is configured.

        ``urgent`` (a call carrying a code): while one waits for a key, this process's bulk calls
        for that key step aside, so the code takes the next opening instead of queueing behind
        them (on an account slower than a few messages a second, each bulk call is one message
        and the limiter has no order of its own). Other processes' bulk still compete for it."""
        rate = route.rate_per_second or route.provider.rate_per_second
        if rate is None:
            return
        key = f"provider:{route.account_id or route.name}"
        burst = max(rate, float(cost))
        if urgent:
            self._codes_waiting[key] += 1
        try:
            while True:
                if not urgent and self._codes_waiting[key]:
                    await asyncio.sleep(min(1.0 / rate, 0.05))
                    continue
                wait = await self.limiter.acquire(key, rate, burst, float(cost))
                if wait <= 0:
                    return
                await asyncio.sleep(min(wait, 5.0))
        finally:
            if urgent:
                self._codes_waiting[key] -= 1

    def _retry_or_fail(
        self, c: ClaimedMessage, now: datetime, error: str, retry_after: float | None = None, **changes: Any
    ) -> dict[str, Any]:
        """A transient failure: back off and retry, or fail once the attempts are used up."""
        if c.attempts >= self.settings.max_attempts:
            return self._row(
                c,
                now,
                status="failed",
                error=f"retries exhausted after {c.attempts} attempts: {error}",
                **changes,
            )
        delay = retry_delay(
            c.attempts, self.settings.retry_base_seconds, self.settings.retry_max_seconds, retry_after
        )
        return self._row(
            c,
            now,
            status="queued",
            error=f"attempt {c.attempts} failed, retrying: {error}",
            due_at=now + timedelta(seconds=delay),
            **{**changes, "content": None},
        )

    def _after_fault(self, c: ClaimedMessage, now: datetime, error: str, handed: bool) -> dict[str, Any]:
        """The row of a message whose batch met a fault of ours: a message not yet handed to a
        provider backs off like a transient error; one handed over may have left, so it is sent
        once more flagged, or ends ``unknown`` if it already was (as a request without answer)."""
        if not handed:
            return self._retry_or_fail(c, now, error)
        if c.possible_duplicate:
            return self._row(c, now, status="unknown", error=error, due_at=now)
        error = f"{error}; re-sending once, may be a duplicate"
        return self._row(c, now, status="queued", error=error, due_at=now, possible_duplicate=True)

    def _cancelled_row(self, c: ClaimedMessage, now: datetime) -> dict[str, Any]:
        if c.possible_duplicate:  # an earlier request may have reached the provider: ask, do not guess
            error = f"{BATCH_CANCELLED}; an earlier attempt may have reached the provider"
            return self._row(c, now, status="unknown", error=error, due_at=now)
        return self._row(c, now, status="cancelled", error=BATCH_CANCELLED)

    def _row(self, c: ClaimedMessage, now: datetime, **changes: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": c.id,
            "status": "failed",
            "error": None,
            # Where an earlier attempt went, until this one goes somewhere: a row that ends
            # unknown or is sent again flagged must still say whom to ask (_previous_route).
            "provider": c.provider,
            "account": c.provider_account_id,
            "pmid": None,
            "response": None,
            "content": None,
            "segments": None,
            "variables": c.variables,
            "sent_at": None,
            "due_at": None,
            "rank": None,
            "possible_duplicate": c.possible_duplicate,
            "deferrals": c.deferrals,
            "attempts": c.attempts,  # whose claim this is (queue._WHERE)
        }
        row.update(changes)
        if row["due_at"] is not None:
            row["rank"] = rank_of(row["due_at"])
        for name in ("sent_at", "due_at"):
            row[name] = outcome_time(row[name], self.db.is_sqlite)
        return row

    def _result_row(
        self,
        c: ClaimedMessage,
        item: Composed,
        result: SendResult,
        route: Route | None,
        now: datetime,
        vendor_text: _VendorText,
    ) -> dict[str, Any]:
        provider = route.name if route else c.provider
        account = route.account_id if route else c.provider_account_id
        result.error = vendor_text.error(result.error)
        result.response = vendor_text.response(result.response, item)
        response = result.response[:RESPONSE_LIMIT] if result.response else None
        common = {
            "provider": provider,
            "account": account,
            "segments": item.message.segments,
            "content": item.shown_content,
            "response": response,
        }
        if result.outcome is Outcome.CANCELLED:
            return self._cancelled_row(c, now)
        if result.outcome is Outcome.SENT:
            return self._row(
                c,
                now,
                status="sent",
                sent_at=now,
                pmid=result.provider_message_id,
                variables=item.stored_variables,
                **common,
            )
        if result.outcome is Outcome.RETRY:
            return self._retry_or_fail(c, now, result.error or "failed", result.retry_after, **common)
        if result.outcome is Outcome.DEFERRED:
            wait = deferral_wait(result.retry_after, c.deferrals)
            reason = result.error or "flow control"
            if c.category == "verification" and wait > VERIFICATION_MAX_DEFERRAL:
                error = (
                    f"the provider holds this number back ({reason}); "
                    f"tried again {wait:.0f} s later, the code would be stale"
                )
                return self._row(c, now, status="failed", error=error, **common)
            deferrals = c.deferrals + 1
            progress = f"{deferrals} of {MAX_PROVIDER_DEFERRALS}"
            if deferrals >= MAX_PROVIDER_DEFERRALS:
                error = f"the provider's flow control held this message back {deferrals} times: {reason}"
                return self._row(c, now, status="failed", error=error, deferrals=deferrals, **common)
            return self._row(
                c,
                now,
                status="deferred",
                error=f"deferred by the provider's flow control ({progress}): {reason}",
                due_at=now + timedelta(seconds=wait),
                deferrals=deferrals,
                **{**common, "content": None},
            )
        if result.outcome is Outcome.UNKNOWN and not c.possible_duplicate:
            return self._row(
                c,
                now,
                status="queued",
                error=f"no answer from the provider, re-sending once: {result.error}",
                due_at=now,
                possible_duplicate=True,
                **{**common, "content": None},
            )
        if result.outcome is Outcome.UNKNOWN:  # due_at: when it became unknown (see unknown_to_recheck)
            return self._row(c, now, status="unknown", error=result.error, due_at=now, **common)
        # Failed: the encrypted variables stay, so a batch retry can still send the real code.
        if result.opted_out:  # the recipient opted out at the vendor or the carrier: suppressed too
            return self._row(
                c, now, status="failed", error=result.error or "failed", opted_out=True, **common
            )
        return self._row(c, now, status="failed", error=result.error or "failed", **common)


async def _suppress_opted_out(session: AsyncSession, claimed: list[ClaimedMessage]) -> None:
    """Recipients a vendor refused because they opted out of the sender there (a STOP to the
    carrier or the vendor, which never reached comms): suppressed for marketing like a STOP of
    comms' own (COMPLIANCE.md S3), in the transaction that records the outcome."""
    tenants: dict[str, Tenant | None] = {}
    for c in claimed:
        if c.tenant_id not in tenants:
            tenants[c.tenant_id] = await session.get(Tenant, c.tenant_id)
        tenant = tenants[c.tenant_id]
        if tenant is not None:
            await suppress_opted_out(session, tenant, contact_of_message(tenant, c))


def _unfit(route: Route, message: OutboundMessage) -> str | None:
    """Why ``route``'s vendor cannot carry ``message`` at all (its declared capabilities), or None."""
    provider = route.provider
    limit = provider.max_body_length
    if limit is not None and len(message.text) > limit:
        return f"{route.name} takes at most {limit} characters, the text has {len(message.text)}"
    if provider.requires_template and not (message.provider_template or {}).get(route.name):
        return f"{route.name} sends registered templates only: set provider_templates.{route.name}"
    return None


class _VendorText:
    """Strikes from what vendors answered about a group of messages, before it is stored, what
    must never be stored or shown in clear: the clear values of the messages' secret variables
    (an error that quotes the text it refused holds the code) and, in errors, every recipient of
    the group (the error of a refused call is every one of its messages' error, naming numbers
    that are not theirs). A response, one message's own answer, is cleared of its own secrets."""

    def __init__(self, items: Sequence[Composed], claimed: Mapping[str, ClaimedMessage]) -> None:
        self._items = items
        self._claimed = claimed
        self._errors: dict[str, str] = {}  # an error shared by a refused call is cleared once

    def error(self, text: str | None) -> str | None:
        if not text:
            return text
        done = self._errors.get(text)
        if done is None:
            done = _strike(text, {v for x in self._items for v in x.secrets})
            for x in self._items:
                c = self._claimed[x.message.id]
                done = (
                    scrub_address(done, c.channel, c.recipient, mask_recipient(c.channel, c.recipient))
                    or done
                )
            self._errors[text] = done
        return done

    @staticmethod
    def response(text: str | None, item: Composed) -> str | None:
        return _strike(text, item.secrets) if text and item.secrets else text


def _strike(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret value (longest first) replaced; values of 1-3 characters are left,
    as they would strike pieces of ordinary text."""
    for value in sorted((v for v in secrets if len(v) >= MIN_STRUCK_SECRET), key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


MIN_STRUCK_SECRET = 4


def _previous_route(routes: Sequence[Route], c: ClaimedMessage) -> Route | None:
    """Where an earlier attempt went: its recorded account, else (a worker died before it could
    record one) the primary route."""
    if c.provider_account_id is not None:
        return next((r for r in routes if r.account_id == c.provider_account_id), None)
    if c.provider is not None:
        return next((r for r in routes if r.account_id is None and r.name == c.provider), None)
    return routes[0] if routes else None


def _region(c: ClaimedMessage) -> str | None:
    return region_of_phone(c.recipient) if c.channel == "sms" else None
