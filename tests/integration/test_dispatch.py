"""The in-process dispatcher on the outbox provider: send, schedule, retry, cancel, crash recovery."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from typing import Any

import pytest
from sqlalchemy import select, text, update

from comms.dispatch import dispatcher as dispatcher_module
from comms.dispatch.queue import claim_due, release_expired_leases
from comms.kit import clock
from comms.kit.clock import set_clock, utcnow
from comms.kit.db import run_maintenance, sync_clock
from comms.models import Message
from tests.conftest import Service, TenantKeys, make_tenant, statuses, wait_for_message, wait_until
from tests.integration.conftest import add_account, standalone_dispatcher
from tests.webhook_sink import WebhookSink


async def send(service: Service, tenant: TenantKeys, body: dict[str, Any]) -> dict[str, Any]:
    answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def send_sms(service: Service, tenant: TenantKeys, *recipients: str) -> dict[str, Any]:
    """A transactional SMS with the text "x" to ``recipients``."""
    body = {"channel": "sms", "category": "transactional", "content": "x", "recipients": list(recipients)}
    return await send(service, tenant, body)


async def test_sms_and_email_reach_the_outbox(live_service: Service, live_tenant: TenantKeys) -> None:
    sms = await send(
        live_service,
        live_tenant,
        {
            "channel": "sms",
            "category": "verification",
            "content": "Code {{ code }}",
            "recipients": ["13800138000"],
            "variables": {"code": "424242"},
        },
    )
    email = await send(
        live_service,
        live_tenant,
        {
            "channel": "email",
            "category": "transactional",
            "subject": "Receipt for {{ name }}",
            "content": "Dear {{ name }}, thanks.",
            "recipients": [
                {"to": "ann@example.com", "variables": {"name": "Ann"}},
                {"to": "bo@example.com", "variables": {"name": "Bo"}},
            ],
        },
    )

    async def all_sent() -> bool:
        return await statuses(live_service, sms["batch_id"]) == {"sent": 1} and await statuses(
            live_service, email["batch_id"]
        ) == {"sent": 2}

    await wait_until(all_sent)
    sms_id = sms["items"][0]["id"]
    payload = json.loads((live_service.outbox / "sms" / f"{sms_id}.json").read_text())
    assert payload == {
        "id": sms_id,
        "to": "+8613800138000",
        "from": "ACME",
        "content": "Code 424242",
        "segments": 1,
    }
    for item, name in zip(email["items"], ["Ann", "Bo"], strict=True):
        raw = (live_service.outbox / "email" / f"{item['id']}.eml").read_bytes()
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        assert parsed["Subject"] == f"Receipt for {name}"
        assert parsed["From"] == "Acme <news@acme.example>"  # the tenant names itself (CAN-SPAM, ePD 13(4))
        assert parsed["Message-ID"] == f"<{item['id']}@acme.example>"
        assert parsed["Auto-Submitted"] == "auto-generated"
        assert parsed.get_content().strip() == f"Dear {name}, thanks."
    log = (
        await live_service.client.get(f"/communication/logs/{sms_id}", headers=live_tenant.headers())
    ).json()["data"]
    assert log["status"] == "sent" and log["provider"] == "outbox" and log["sent_at"] and log["attempts"] == 1
    assert log["content"] == "Code ******" and log["segments"] == 1 and "outbox" in log["response"]
    async with live_service.db.read() as session:
        stored = await session.get(Message, sms_id)
    assert stored is not None and "424242" not in (stored.content or "")


async def test_single_send_reaches_provider_quickly(live_service: Service, live_tenant: TenantKeys) -> None:
    """The dispatcher is woken by the commit: no once-a-second polling between 202 and the send."""
    live_service.settings.poll_interval_seconds = 5.0
    await asyncio.sleep(0)  # let the dispatcher enter its idle wait
    started = time.perf_counter()
    created = await send(
        live_service,
        live_tenant,
        {
            "channel": "sms",
            "category": "verification",
            "content": "c {{ code }}",
            "recipients": ["13800138000"],
            "variables": {"code": "1"},
        },
    )
    path = live_service.outbox / "sms" / f"{created['items'][0]['id']}.json"

    async def written() -> bool:
        return path.exists()

    await wait_until(written, timeout=2.0, interval=0.002)
    # Reported, not asserted as a benchmark; the bound only proves it did not wait for a poll.
    assert time.perf_counter() - started < 2.0


async def test_scheduled_send_waits_until_due(live_service: Service, live_tenant: TenantKeys) -> None:
    when = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()  # room for a loaded machine
    created = await send(
        live_service,
        live_tenant,
        {
            "channel": "sms",
            "category": "transactional",
            "content": "later",
            "recipients": ["13800138000"],
            "send_at": when,
        },
    )
    assert await statuses(live_service, created["batch_id"]) == {"scheduled": 1}

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1}

    await wait_until(sent, timeout=10)
    async with live_service.db.read() as session:
        row = await session.get(Message, created["items"][0]["id"])
    assert row is not None and row.sent_at is not None and row.sent_at >= datetime.fromisoformat(when)


async def test_cancelled_items_are_never_sent(service: Service, tenant: TenantKeys) -> None:
    created = await send_sms(service, tenant, "13800138000", "13900139000")
    await service.client.post(
        f"/communication/batches/{created['batch_id']}/cancel", headers=tenant.headers()
    )
    async with service.db.begin() as session:
        claimed = await claim_due(session, "w1", 100, utcnow(), timedelta(seconds=30))
    assert claimed == []


async def test_transient_errors_retry_with_backoff_then_succeed(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    # A file where the outbox's sms folder should be: every write fails with an OSError (transient).
    live_service.outbox.mkdir(parents=True, exist_ok=True)
    blocker = live_service.outbox / "sms"
    blocker.write_text("not a folder")
    created = await send(
        live_service,
        live_tenant,
        {"channel": "sms", "category": "transactional", "content": "x", "recipients": ["13800138000"]},
    )
    log_id = created["items"][0]["id"]

    async def retried() -> bool:
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        return row is not None and row.attempts >= 2 and row.status == "queued"

    await wait_until(retried)
    async with live_service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and "retrying" in (row.error or "") and row.due_at is not None
    blocker.unlink()

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1}

    await wait_until(sent)


async def test_retries_exhausted_fail_with_reason(live_service: Service, live_tenant: TenantKeys) -> None:
    live_service.settings.max_attempts = 2
    live_service.outbox.mkdir(parents=True, exist_ok=True)
    (live_service.outbox / "sms").write_text("not a folder")
    created = await send(
        live_service,
        live_tenant,
        {"channel": "sms", "category": "transactional", "content": "x", "recipients": ["13800138000"]},
    )

    async def failed() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"failed": 1}

    await wait_until(failed)
    log = (
        await live_service.client.get(
            f"/communication/logs/{created['items'][0]['id']}", headers=live_tenant.headers()
        )
    ).json()
    assert "retries exhausted after 2 attempts" in log["data"]["error"]
    retried = await live_service.client.post(
        f"/communication/batches/{created['batch_id']}/retry", headers=live_tenant.headers()
    )
    assert retried.json()["message"] == "re-queued 1 item(s)"


async def test_expired_lease_is_requeued_once_and_flagged(service: Service, tenant: TenantKeys) -> None:
    created = await send_sms(service, tenant, "13800138000")
    log_id = created["items"][0]["id"]
    now = utcnow()
    async with service.db.begin() as session:
        claimed = await claim_due(session, "dead-worker", 10, now, timedelta(seconds=1))
    assert [c.id for c in claimed] == [log_id]
    later = now + timedelta(seconds=5)
    async with service.db.begin() as session:
        assert await release_expired_leases(session, later) == 1
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.status == "queued" and row.possible_duplicate is True
    # Claimed and lost again: now its outcome is honestly unknown rather than sent a third time.
    async with service.db.begin() as session:
        await claim_due(session, "dead-worker-2", 10, later, timedelta(seconds=1))
    async with service.db.begin() as session:
        await release_expired_leases(session, later + timedelta(seconds=5))
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.status == "unknown"


async def test_the_process_follows_the_database_servers_clock_on_postgres_only(service: Service) -> None:
    clock.follow(utcnow() - timedelta(hours=1), time.monotonic())  # as if synced to a server
    offset = await sync_clock(service.db)
    if service.db.is_sqlite:  # the database is on this machine: its clock is the one
        assert offset == 0.0 and not clock.following()
        return
    assert clock.following() and abs(offset) < 1.0  # this server runs on the same machine
    async with service.db.read_one() as session:
        server = (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()
    assert abs((utcnow() - server).total_seconds()) < 0.5


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_no_lease_is_taken_back_or_written_before_a_first_reading_of_the_servers_clock(
    service: Service, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await send_sms(service, tenant, "13800138000")
    log_id = created["items"][0]["id"]
    async with service.db.begin() as session:  # a lease that has expired by the server's clock
        await claim_due(session, "dead-worker", 10, utcnow(), timedelta(seconds=1))
        await session.execute(
            update(Message).where(Message.id == log_id).values(lease_until=utcnow() - timedelta(minutes=5))
        )

    async def server_away(_db: object) -> float:
        raise ConnectionRefusedError("the database is away")

    monkeypatch.setattr(dispatcher_module, "sync_clock", server_away)
    clock.unfollow()
    async with standalone_dispatcher(service) as dispatcher:
        with pytest.raises(ConnectionRefusedError):
            await dispatcher._reap()
        with pytest.raises(ConnectionRefusedError):
            await dispatcher._on_server_clock()  # what the claim loop and the express lane await first
        async with service.db.read() as session:
            row = await session.get(Message, log_id)
        assert row is not None and row.status == "sending" and row.lease_owner == "dead-worker"
        monkeypatch.setattr(dispatcher_module, "sync_clock", sync_clock)
        await dispatcher._reap()
        assert clock.following()
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.status == "queued" and row.possible_duplicate is True


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_maintenance_reads_the_servers_clock_until_it_succeeds(service: Service) -> None:
    clock.unfollow()
    stop = asyncio.Event()
    task = asyncio.create_task(run_maintenance(service.db, stop, interval=0.05))

    async def following() -> bool:
        return clock.following()

    await wait_until(following, timeout=10)
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_a_possible_duplicate_is_reconciled_before_any_resend(
    service: Service, tenant: TenantKeys
) -> None:
    """A worker died after the provider took the message: the next worker asks the provider
    (here the outbox, which can be asked) and records ``sent`` without sending it again."""
    created = await send_sms(service, tenant, "13800138000", "13800138001")
    taken, lost = (item["id"] for item in created["items"])
    now = utcnow()
    async with service.db.begin() as session:
        assert len(await claim_due(session, "dead-worker", 10, now, timedelta(seconds=1))) == 2
    # The dead worker's provider call reached the outbox for the first message only.
    written = service.outbox / "sms" / f"{taken}.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text('{"written": "by the worker that died"}')
    async with service.db.begin() as session:
        assert await release_expired_leases(session, now + timedelta(seconds=5)) == 2
    async with standalone_dispatcher(service) as worker:
        worker.start()
        try:

            async def settled() -> bool:
                return await statuses(service, created["batch_id"]) == {"sent": 2}

            await wait_until(settled)
        finally:
            await worker.stop()
    async with service.db.read() as session:
        first, second = await session.get(Message, taken), await session.get(Message, lost)
    assert first is not None and second is not None
    assert first.response is not None and first.response.startswith("reconciled with outbox")
    assert written.read_text() == '{"written": "by the worker that died"}'  # not sent again
    # The provider had never seen the second one: it was sent, once, and stays flagged.
    assert second.response is not None and second.response.startswith("written to outbox")
    assert second.possible_duplicate is True
    assert json.loads((service.outbox / "sms" / f"{lost}.json").read_text())["id"] == lost


async def test_a_later_batch_interleaves_with_a_big_bulk_of_the_same_priority(
    service: Service, tenant: TenantKeys
) -> None:
    """Fair share: another tenant's message accepted 90 ms into a 3,000-message bulk is claimed
    after the bulk's first ~1,000 rows, not after all 3,000."""
    start = utcnow()
    set_clock(lambda: start)
    try:
        bulk = await send(
            service,
            tenant,
            {
                "channel": "sms",
                "category": "transactional",
                "content": "Parcel",
                "recipients": [f"1380013{i:04d}" for i in range(3000)],
            },
        )
        other = await make_tenant(service.db, name="Beta")
        set_clock(lambda: start + timedelta(milliseconds=90))
        single = await send(
            service,
            other,
            {"channel": "sms", "category": "transactional", "content": "Hi", "recipients": ["13900139000"]},
        )
    finally:
        set_clock(None)
    claims: list[set[str]] = []
    while True:
        async with service.db.begin() as session:
            claimed = await claim_due(session, "w", 500, start + timedelta(seconds=1), timedelta(seconds=30))
        if not claimed:
            break
        claims.append({c.batch_id for c in claimed})
    assert len(claims) == 7 and sum(single["batch_id"] in batches for batches in claims) == 1
    assert single["batch_id"] in claims[2], claims  # after 2 x 500 bulk rows ranked before it
    assert all(bulk["batch_id"] in batches for batches in claims[:6])


async def test_completion_requires_holding_the_lease(service: Service, tenant: TenantKeys) -> None:
    from comms.dispatch.queue import complete, outcome_time

    created = await send_sms(service, tenant, "13800138000")
    log_id = created["items"][0]["id"]
    async with service.db.begin() as session:
        await claim_due(session, "w-a", 10, utcnow(), timedelta(seconds=30))
    async with service.db.begin() as session:
        await session.execute(update(Message).where(Message.id == log_id).values(lease_owner="w-b"))
    now = utcnow()
    row = {
        "id": log_id,
        "status": "sent",
        "error": None,
        "provider": "outbox",
        "account": None,
        "pmid": None,
        "response": None,
        "content": None,
        "segments": None,
        "variables": None,
        "sent_at": outcome_time(now, service.db.is_sqlite),
        "due_at": None,
        "rank": None,
        "possible_duplicate": False,
        "deferrals": 0,
        "attempts": 1,
    }
    async with service.db.begin() as session:
        assert (
            await complete(session, "w-a", now, [row], ids_set=True) == set()
        )  # nothing set: nothing to tell
    async with service.db.read() as session:
        stored = await session.get(Message, log_id)
    assert stored is not None and stored.status == "sending" and stored.lease_owner == "w-b"
    # A receipt came before the provider's answer was recorded: the row keeps `delivered`, takes
    # the send's details, and is not among the ids set (no `sent` event after the `delivered`).
    async with service.db.begin() as session:
        await session.execute(
            update(Message).where(Message.id == log_id).values(lease_owner="w-a", status="delivered")
        )
    async with service.db.begin() as session:
        assert await complete(session, "w-a", now, [{**row, "pmid": "gw-1"}], ids_set=True) == set()
    async with service.db.read() as session:
        stored = await session.get(Message, log_id)
    assert stored is not None and (stored.status, stored.provider_message_id) == ("delivered", "gw-1")
    async with service.db.begin() as session:
        await session.execute(
            update(Message).where(Message.id == log_id).values(status="sending", lease_owner="w-a")
        )
    async with service.db.begin() as session:
        assert await complete(session, "w-a", now, [row], ids_set=True) == {log_id}


async def test_a_slow_send_reclaimed_by_its_own_worker_keeps_the_flagged_outcome(
    service: Service, tenant: TenantKeys
) -> None:
    """A worker's send is slow past its lease; the reaper re-queues the row, flagged, and the same
    worker claims it again (the owner is the same). The first claim's late outcome changes
    nothing: the second's, flagged possible_duplicate, is what the log keeps."""
    from comms.dispatch.queue import complete, outcome_time, release_expired_leases

    log_id = (await send_sms(service, tenant, "13800138000"))["items"][0]["id"]
    start = utcnow()
    async with service.db.begin() as session:
        [first] = await claim_due(session, "w-a", 10, start, timedelta(seconds=30))
    async with service.db.begin() as session:
        assert await release_expired_leases(session, start + timedelta(seconds=31)) == 1
    async with service.db.begin() as session:
        [second] = await claim_due(session, "w-a", 10, start + timedelta(seconds=32), timedelta(seconds=30))
    assert (first.attempts, second.attempts, second.possible_duplicate) == (1, 2, True)
    now = utcnow()

    def outcome(claim: Any, pmid: str) -> dict[str, Any]:
        return {
            "id": log_id, "status": "sent", "error": None, "provider": "outbox", "account": None,
            "pmid": pmid, "response": None, "content": None, "segments": None, "variables": None,
            "sent_at": outcome_time(now, service.db.is_sqlite), "due_at": None, "rank": None,
            "possible_duplicate": claim.possible_duplicate, "deferrals": 0, "attempts": claim.attempts,
        }  # fmt: skip

    async with service.db.begin() as session:
        assert await complete(session, "w-a", now, [outcome(first, "gw-first")], ids_set=True) == set()
    async with service.db.begin() as session:
        assert await complete(session, "w-a", now, [outcome(second, "gw-second")], ids_set=True) == {log_id}
    async with service.db.read() as session:
        stored = await session.get(Message, log_id)
    assert stored is not None
    assert (stored.status, stored.provider_message_id, stored.possible_duplicate) == (
        "sent",
        "gw-second",
        True,
    )


async def test_graceful_stop_drains_in_flight(live_service: Service, live_tenant: TenantKeys) -> None:
    created = await send(
        live_service,
        live_tenant,
        {
            "channel": "sms",
            "category": "transactional",
            "content": "x",
            "recipients": [f"138001380{i:02d}" for i in range(50)],
        },
    )
    await live_service.app.state.dispatcher.stop()
    counts = await statuses(live_service, created["batch_id"])
    assert "sending" not in counts, counts
    assert sum(counts.values()) == 50


async def test_failed_otp_is_retried_with_the_real_code(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    live_service.settings.max_attempts = 1
    live_service.outbox.mkdir(parents=True, exist_ok=True)
    blocker = live_service.outbox / "sms"
    blocker.write_text("not a folder")
    created = await send(
        live_service,
        live_tenant,
        {
            "channel": "sms",
            "category": "verification",
            "content": "Code {{ code }}",
            "recipients": [{"to": "13800138000", "variables": {"code": "556677"}}],
        },
    )

    async def failed() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"failed": 1}

    await wait_until(failed)
    blocker.unlink()
    await live_service.client.post(
        f"/communication/batches/{created['batch_id']}/retry", headers=live_tenant.headers()
    )

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1}

    await wait_until(sent)
    payload = json.loads((live_service.outbox / "sms" / f"{created['items'][0]['id']}.json").read_text())
    assert payload["content"] == "Code 556677"
    async with live_service.db.read() as session:
        row = await session.get(Message, created["items"][0]["id"])
    assert row is not None and row.variables == {"code": "******"}  # wiped once sent


async def test_header_injection_through_a_variable_fails_only_that_message(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    """A recipient's own value with a line break is refused at acceptance (its item `rejected`);
    one the template turns into two lines gets past that look and is stopped when the message is
    built: that message fails, the others go out."""
    created = await send(
        live_service,
        live_tenant,
        {
            "channel": "email",
            "category": "transactional",
            "subject": "Hello {{ name }}{{ '\\n' if tag == 'wrap' else '' }}",
            "content": "Hi",
            "recipients": [
                {"to": "ok@example.com", "variables": {"name": "Ann", "tag": "vip"}},
                {"to": "evil@example.com", "variables": {"name": "x\r\nBcc: victim@example.com", "tag": "a"}},
                {"to": "wrapped@example.com", "variables": {"name": "Bo", "tag": "wrap"}},
            ],
        },
    )
    evil = created["items"][1]
    assert evil["status"] == "rejected" and "line break" in evil["error"]

    async def settled() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1, "failed": 1, "rejected": 1}

    await wait_until(settled)
    wrapped = (
        await live_service.client.get(
            f"/communication/logs/{created['items'][2]['id']}", headers=live_tenant.headers()
        )
    ).json()["data"]
    assert wrapped["status"] == "failed" and "not buildable" in wrapped["error"]


async def test_an_api_process_without_a_dispatcher_sends_codes_through_its_express_lane(
    settings: Any,
) -> None:
    """Scale-out: `comms serve --no-dispatcher` leaves bulk to the workers but sends the
    verification codes it accepts itself, from its idle event loop."""
    import httpx

    from comms.app import create_app
    from tests.conftest import make_tenant

    app = create_app(settings.model_copy(update={"express_lane": True}), dispatcher=False)
    async with app.router.lifespan_context(app):
        db = app.state.comms.db
        tenant = await make_tenant(db)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://comms.test") as client:
            service = Service(app, client, settings, db)
            code = await send(
                service,
                tenant,
                {
                    "channel": "sms",
                    "category": "verification",
                    "content": "Code {{ code }}",
                    "variables": {"code": "4711"},
                    "recipients": ["13800138000"],
                },
            )
            notice = await send(
                service,
                tenant,
                {
                    "channel": "sms",
                    "category": "transactional",
                    "content": "Hi",
                    "recipients": ["13800138001"],
                },
            )

            async def code_sent() -> bool:
                return await statuses(service, code["batch_id"]) == {"sent": 1}

            await wait_until(code_sent)
            assert await statuses(service, notice["batch_id"]) == {"queued": 1}  # for the workers


async def test_scheduled_rows_stay_out_of_the_claim_and_tell_when_work_is_next_due(
    service: Service, tenant: TenantKeys
) -> None:
    from comms.dispatch.queue import next_due_at

    send_at = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    later = await send(
        service,
        tenant,
        {
            "channel": "sms",
            "category": "transactional",
            "content": "Tomorrow",
            "send_at": send_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "recipients": [f"1380013{i:04d}" for i in range(1200)],
        },
    )
    assert later["counts"] == {"scheduled": 1200}
    async with service.db.read() as session:
        assert await next_due_at(session) == send_at
    now_item = await send(
        service,
        tenant,
        {
            "channel": "sms",
            "category": "marketing",
            "content": "Now",
            "recipients": ["13900139000"],
            "dry_run": False,
        },
    )
    async with service.db.begin() as session:
        claimed = await claim_due(session, "w", 500, utcnow(), timedelta(seconds=30))
    assert [c.batch_id for c in claimed] == [
        now_item["batch_id"]
    ] or not claimed  # marketing may lack consent
    async with service.db.begin() as session:
        tomorrow = await claim_due(session, "w", 500, send_at + timedelta(seconds=1), timedelta(seconds=30))
    assert len(tomorrow) == 500 and {c.batch_id for c in tomorrow} == {later["batch_id"]}


async def test_unknown_rows_are_asked_about_again_and_settled_by_what_the_provider_knows(
    service: Service, tenant: TenantKeys
) -> None:
    """CONTRACT.md: `unknown` is resolved by reconciliation with the provider. Two rows whose
    second attempt also got no answer: the outbox has one of them (-> `sent`), not the other
    (stays `unknown`, asked again later)."""
    created = await send_sms(service, tenant, "13800138000", "13800138001")
    there, missing = (item["id"] for item in created["items"])
    a_while_ago = utcnow() - timedelta(minutes=2)
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.batch_id == created["batch_id"])
            .values(status="unknown", provider="outbox", possible_duplicate=True, updated_at=a_while_ago)
        )
    written = service.outbox / "sms" / f"{there}.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text("{}")
    async with standalone_dispatcher(service) as worker:
        assert await worker.recheck_unknown() == 1
        assert await worker.recheck_unknown() == 0  # the other was just asked: not again at once
    async with service.db.read() as session:
        settled, open_ = await session.get(Message, there), await session.get(Message, missing)
    assert settled is not None and settled.status == "sent" and settled.sent_at is not None
    assert settled.response is not None and settled.response.startswith("reconciled with outbox")
    assert open_ is not None and open_.status == "unknown" and open_.updated_at > a_while_ago


async def test_a_group_that_fails_unexpectedly_leaves_the_groups_sent_before_it_alone(
    service: Service, tenant: TenantKeys
) -> None:
    """One claimed batch holds three tenants' messages, sent group by group. A fault of ours in
    the second group after its send keeps that send's outcome; one in the third before any
    request leaves it to be retried, unflagged; the first group keeps its `sent`. Nothing is put
    back to be sent again unannounced."""
    second_tenant, third_tenant = (
        await make_tenant(service.db, "Second"),
        await make_tenant(service.db, "Third"),
    )
    first = (await send_sms(service, tenant, "13800138000"))["items"][0]["id"]
    second = (await send_sms(service, second_tenant, "13900139000"))["items"][0]["id"]
    third = (await send_sms(service, third_tenant, "13700137000"))["items"][0]["id"]
    async with standalone_dispatcher(service) as worker:
        real = worker._reconcile_then_send

        async def faulty(routes: Any, every: Any, messages: Any, claimed: Any) -> Any:
            if any(m.id == third for m in messages):
                raise KeyError("a bug of ours, before any request")
            results = await real(routes, every, messages, claimed)
            if any(m.id == second for m in messages):
                raise KeyError("a bug of ours, after the request")
            return results

        worker._reconcile_then_send = faulty  # type: ignore[method-assign]
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        order = [first, second, third]
        claimed.sort(key=lambda c: order.index(c.id))
        await worker._process(claimed)
    async with service.db.read() as session:
        rows = {m.id: m for m in (await session.scalars(select(Message))).all()}
    assert (rows[first].status, rows[second].status) == ("sent", "sent")
    assert (rows[third].status, rows[third].possible_duplicate) == ("queued", False)
    assert "not sent" in (rows[third].error or "") and "KeyError" in (rows[third].error or "")


async def test_a_fault_after_the_send_puts_nothing_back_unflagged(
    service: Service, tenant: TenantKeys
) -> None:
    """A fault of ours after a message was handed to its provider (here: building the row that
    records the answer) cannot know whether it left: it goes back flagged, never as a plain
    retry that would send it again unannounced."""
    log_id = (await send_sms(service, tenant, "13800138000"))["items"][0]["id"]
    async with standalone_dispatcher(service) as worker:

        def broken(*_: Any) -> Any:
            raise RuntimeError("a bug of ours after the send")

        worker._result_row = broken  # type: ignore[method-assign]
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        await worker._process(claimed)
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and (row.status, row.possible_duplicate) == ("queued", True)
    assert row.error is not None and row.error.endswith("re-sending once, may be a duplicate")


async def test_rows_in_flight_when_their_batch_is_cancelled_are_not_sent(
    service: Service, tenant: TenantKeys
) -> None:
    """Cancel only touches rows still waiting; rows a worker had already claimed come back to a
    dispatcher (a retry, a deferral, a dead worker) and must end `cancelled`, not go out. One
    that may already have reached the provider is left `unknown` for the re-check, not guessed."""
    created = await send_sms(service, tenant, "13800138000", "13800138001")
    plain, flagged = (item["id"] for item in created["items"])
    async with standalone_dispatcher(service) as worker:
        async with service.db.begin() as session:
            await session.execute(
                update(Message).where(Message.id == flagged).values(possible_duplicate=True)
            )
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        assert len(claimed) == 2
        answer = await service.client.post(
            f"/communication/batches/{created['batch_id']}/cancel", headers=tenant.headers()
        )
        assert answer.status_code == 200, answer.text
        assert await statuses(service, created["batch_id"]) == {"sending": 2}  # in flight: untouched
        await worker._process(claimed)
    async with service.db.read() as session:
        first, second = await session.get(Message, plain), await session.get(Message, flagged)
    assert first is not None and first.status == "cancelled" and first.error == "cancelled by request"
    assert second is not None and second.status == "unknown" and second.error is not None
    assert "may have reached the provider" in second.error
    assert not (service.outbox / "sms").exists() or not any((service.outbox / "sms").iterdir())


async def test_a_worker_stopping_mid_send_never_causes_a_third_send(
    service: Service, tenant: TenantKeys
) -> None:
    """release_claims (a stop past the drain timeout) follows the reaper's rule: a row already
    re-sent once as a possible duplicate ends `unknown` instead of going back to the queue."""
    from comms.dispatch.queue import release_claims

    created = await send_sms(service, tenant, "13800138000", "13800138001")
    fresh, resent = (item["id"] for item in created["items"])
    async with service.db.begin() as session:
        await session.execute(update(Message).where(Message.id == resent).values(possible_duplicate=True))
    now = utcnow()
    async with service.db.begin() as session:
        assert len(await claim_due(session, "w", 10, now, timedelta(seconds=30))) == 2
    async with service.db.begin() as session:
        await release_claims(session, [(fresh, 1), (resent, 1)], "w", now)
    async with service.db.read() as session:
        first, second = await session.get(Message, fresh), await session.get(Message, resent)
    assert first is not None and (first.status, first.possible_duplicate) == ("queued", True)
    assert second is not None and second.status == "unknown" and second.lease_owner is None


async def test_giving_back_a_claim_leaves_a_later_claim_of_the_same_row_alone(
    service: Service, tenant: TenantKeys
) -> None:
    """The reaper took a slow send's row back and the same worker claimed it again (attempt 2):
    giving back the first claim (a stop past the drain) must not undo the second, whose holder
    is still sending it."""
    from comms.dispatch.queue import release_claims

    log_id = (await send_sms(service, tenant, "13800138000"))["items"][0]["id"]
    now = utcnow()
    async with service.db.begin() as session:
        assert len(await claim_due(session, "w", 10, now, timedelta(seconds=30))) == 1
    async with service.db.begin() as session:  # the first lease ran out: taken back, flagged
        assert await release_expired_leases(session, now + timedelta(minutes=1)) == 1
    async with service.db.begin() as session:
        again = await claim_due(session, "w", 10, now + timedelta(minutes=1), timedelta(seconds=30))
    assert [(c.id, c.attempts) for c in again] == [(log_id, 2)]
    async with service.db.begin() as session:
        await release_claims(session, [(log_id, 1)], "w", now, unsent=[log_id])
        await release_claims(session, [(log_id, 1)], "w", now)
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and (row.status, row.lease_owner, row.attempts) == ("sending", "w", 2)


@pytest.mark.parametrize("handed", [True, False], ids=["handed-to-the-provider", "not-yet-handed"])
async def test_stop_is_bounded_even_with_every_slot_taken_and_gives_claims_back(
    service: Service, tenant: TenantKeys, handed: bool
) -> None:
    """The claim loop may wait for a free slot while every batch in flight is stuck: stop() still
    returns after its timeout, with the stuck claims given back rather than left `sending` for the
    reaper. One already handed to a provider (stuck in its call) may have left: flagged. One not
    handed over yet (held back before its call) goes back as it was, the attempt not counted."""
    from comms.dispatch import dispatcher as dispatcher_module

    created = await send_sms(service, tenant, "13800138000")
    stuck = asyncio.Event()

    async def never_answers(routes: Any, every: Any, messages: Any, batch_of: Any = None) -> Any:
        if handed:  # as _send_with_failover marks a call it starts
            dispatcher_module._PROGRESS.get().handed.update(m.id for m in messages)  # type: ignore[union-attr]
        stuck.set()
        await asyncio.Event().wait()

    async with standalone_dispatcher(service) as worker:
        worker._slots = asyncio.Semaphore(1)
        worker._send_with_failover = never_answers  # type: ignore[method-assign]
        worker.start()
        await asyncio.wait_for(stuck.wait(), timeout=10)
        await asyncio.wait_for(worker.stop(timeout=0.2), timeout=10)
        assert worker._loop_task is not None and worker._loop_task.done()
    async with service.db.read() as session:
        row = await session.get(Message, created["items"][0]["id"])
    assert row is not None and (row.status, row.lease_owner) == ("queued", None)
    assert (row.possible_duplicate, row.attempts) == ((True, 1) if handed else (False, 0))


async def test_a_stop_past_the_drain_records_what_the_provider_already_accepted(
    service: Service, tenant: TenantKeys
) -> None:
    """A batch sent in parts (a rate limit spreads its calls over seconds) is stopped past the drain
    timeout after its first part was accepted: that part is recorded `sent`, as the provider
    answered, and is not given back (a provider that cannot be asked would get it twice); the part
    whose call was under way goes back flagged."""
    from comms.providers.base import SendResult

    created = await send_sms(service, tenant, "13800138000", "13800138001")
    accepted, in_call = (item["id"] for item in created["items"])
    stuck = asyncio.Event()

    async def first_part_answered(routes: Any, every: Any, messages: Any, batch_of: Any = None) -> Any:
        progress = dispatcher_module._PROGRESS.get()
        assert progress is not None
        progress.handed.update(m.id for m in messages)
        progress.decided[accepted] = (SendResult.sent(accepted, "gw-accepted-1", "accepted"), routes[0])
        stuck.set()
        await asyncio.Event().wait()  # the second part's call never answers

    async with standalone_dispatcher(service) as worker:
        worker._send_with_failover = first_part_answered  # type: ignore[method-assign]
        worker.start()
        await asyncio.wait_for(stuck.wait(), timeout=10)
        await asyncio.wait_for(worker.stop(timeout=0.2), timeout=20)
    async with service.db.read() as session:
        sent, back = await session.get(Message, accepted), await session.get(Message, in_call)
    assert sent is not None and back is not None
    assert (sent.status, sent.provider_message_id, sent.provider, sent.lease_owner) == (
        "sent",
        "gw-accepted-1",
        "outbox",
        None,
    )
    assert sent.possible_duplicate is False and sent.content == "x"
    assert (back.status, back.possible_duplicate, back.lease_owner) == ("queued", True, None)


async def test_a_fault_of_ours_keeps_the_outcomes_already_known(service: Service, tenant: TenantKeys) -> None:
    """A fault of ours after the provider answered for part of a batch: the answered part keeps
    its answer; only what cannot be recorded goes back flagged."""
    created = await send_sms(service, tenant, "13800138000", "13800138001")
    fine, broken_id = (item["id"] for item in created["items"])
    async with standalone_dispatcher(service) as worker:
        build = worker._result_row

        def breaks_for_one(c: Any, *args: Any) -> Any:
            if c.id == broken_id:
                raise RuntimeError("a bug of ours for one message")
            return build(c, *args)

        worker._result_row = breaks_for_one  # type: ignore[method-assign]
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        await worker._process(claimed)
    async with service.db.read() as session:
        ok, flagged = await session.get(Message, fine), await session.get(Message, broken_id)
    assert ok is not None and (ok.status, ok.provider, ok.possible_duplicate) == ("sent", "outbox", False)
    assert flagged is not None and (flagged.status, flagged.possible_duplicate) == ("queued", True)


async def test_an_unknown_row_keeps_whom_to_ask_and_is_settled_there(
    service: Service, tenant: TenantKeys
) -> None:
    """A possible duplicate whose earlier attempt reached the outbox, claimed when its batch is
    cancelled, ends `unknown` with that route kept (rows written by this attempt used to clear
    it, leaving nobody to ask); the re-check then finds it there and settles it `sent`. A row
    interrupted before any route was recorded is asked about at the primary route."""
    created = await send_sms(service, tenant, "13800138000", "13800138001")
    recorded, never_recorded = (item["id"] for item in created["items"])
    async with standalone_dispatcher(service) as worker:
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        await worker._process(claimed)  # both reach the outbox
        now = utcnow()
        async with service.db.begin() as session:
            await session.execute(
                update(Message)
                .where(Message.id == recorded)
                .values(
                    status="queued",
                    possible_duplicate=True,
                    provider_message_id=None,
                    due_at=now,
                    queue_rank=0,
                )
            )
            await session.execute(
                update(Message)
                .where(Message.id == never_recorded)
                .values(status="unknown", possible_duplicate=True, provider=None, provider_message_id=None)
            )
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        assert [c.id for c in claimed] == [recorded]
        cancel = await service.client.post(
            f"/communication/batches/{created['batch_id']}/cancel", headers=tenant.headers()
        )
        assert cancel.status_code == 200, cancel.text
        await worker._process(claimed)
        async with service.db.read() as session:
            row = await session.get(Message, recorded)
        assert row is not None and (row.status, row.provider) == ("unknown", "outbox")
        async with service.db.begin() as session:  # became unknown a while ago, not looked at since
            await session.execute(
                update(Message)
                .where(Message.id.in_([recorded, never_recorded]))
                .values(due_at=now - timedelta(minutes=5), updated_at=now - timedelta(minutes=5))
            )
        assert await worker.recheck_unknown() == 2
    async with service.db.read() as session:
        settled = [await session.get(Message, i) for i in (recorded, never_recorded)]
    assert [(m.status, m.provider_message_id) for m in settled if m is not None] == [
        ("sent", recorded),
        ("sent", never_recorded),
    ]


async def test_one_tenants_stuck_group_does_not_hold_another_tenants_code(
    service: Service, tenant: TenantKeys, sink: WebhookSink
) -> None:
    """A claimed batch holds several tenants' messages; each tenant's (channel's) group goes
    through its own accounts at once: a tenant whose gateway hangs (or sends one a second) does
    not hold another tenant's verification code, claimed in the same batch, behind it."""
    code = {
        "channel": "sms",
        "category": "verification",
        "content": "Code {{ code }}",
        "variables": {"code": "1234"},
    }
    other = await make_tenant(service.db, "Other")
    await add_account(service, tenant, sink.url)  # this tenant's codes go to a gateway that hangs
    sink.hold = asyncio.Event()
    mine = (await send(service, tenant, {**code, "recipients": ["13800138000"]}))["items"][0]["id"]
    theirs = (await send(service, other, {**code, "recipients": ["13900139000"]}))["items"][0]["id"]
    async with standalone_dispatcher(service) as worker:
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        assert len(claimed) == 2
        processing = asyncio.create_task(worker._process(claimed))
        delivered = service.outbox / "sms" / f"{theirs}.json"

        async def other_tenants_code_is_out() -> bool:
            return delivered.exists()

        await wait_until(other_tenants_code_is_out)
        assert not processing.done()  # the first tenant's group is still waiting on its gateway
        sink.hold.set()
        await asyncio.wait_for(processing, timeout=10)
    async with service.db.read() as session:
        rows = [await session.get(Message, i) for i in (mine, theirs)]
    assert [(r.status, r.provider) for r in rows if r is not None] == [
        ("sent", "webhook"),
        ("sent", "outbox"),
    ]


async def test_a_code_takes_the_next_opening_of_a_slow_accounts_rate_before_bulk(service: Service) -> None:
    """On an account slower than a few messages a second every bulk call is one message, as a
    code's is, and the limiter keeps no order: a code waiting for the account's rate makes this
    process's bulk calls step aside, so it takes the next opening (it waited 1-22 s beside bulk)."""
    from types import SimpleNamespace

    from comms.dispatch.routing import Route

    route = Route(SimpleNamespace(name="slow", rate_per_second=None), "acc_slow", rate_per_second=20.0)  # type: ignore[arg-type]
    order: list[str] = []
    async with standalone_dispatcher(service) as worker:

        async def call(name: str, urgent: bool) -> None:
            await worker._throttle(route, 1, urgent=urgent)
            order.append(name)

        bulk = [asyncio.create_task(call(f"bulk{i}", False)) for i in range(8)]

        async def some_bulk_went() -> bool:
            return len(order) >= 3

        await wait_until(some_bulk_went)
        admitted_before = len(order)
        await asyncio.wait_for(call("code", True), timeout=10)
        await asyncio.wait_for(asyncio.gather(*bulk), timeout=10)
    assert order.index("code") == admitted_before, order
    assert len(order) == 9


async def test_a_batch_retry_sends_again_instead_of_reconciling_the_earlier_attempt(
    service: Service, tenant: TenantKeys
) -> None:
    """A retry the user asked for is a new attempt: an earlier attempt's possible-duplicate flag
    is cleared, so the provider's record of that attempt is not taken for this one's outcome."""
    created = await send_sms(service, tenant, "13800138000")
    log_id = created["items"][0]["id"]
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == log_id)
            .values(status="undelivered", provider="outbox", possible_duplicate=True, error="bounced")
        )
    answer = await service.client.post(
        f"/communication/batches/{created['batch_id']}/retry", headers=tenant.headers()
    )
    assert answer.status_code == 200, answer.text
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.status == "queued" and row.possible_duplicate is False


async def test_unknown_rows_are_asked_about_for_a_day_from_when_they_became_unknown(
    service: Service, tenant: TenantKeys
) -> None:
    """Each look bumps `updated_at`; the window is anchored on `due_at`, set once when the row
    became unknown, so a row nobody can settle stops being asked about after a day."""
    created = await send_sms(service, tenant, "13800138000")
    log_id = created["items"][0]["id"]
    now = utcnow()
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == log_id)
            .values(
                status="unknown",
                provider="outbox",
                possible_duplicate=True,
                due_at=now - timedelta(days=2),
                updated_at=now - timedelta(minutes=2),
            )
        )
    written = service.outbox / "sms" / f"{log_id}.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text("{}")
    async with standalone_dispatcher(service) as worker:
        assert await worker.recheck_unknown() == 0
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.status == "unknown"


async def test_a_reconciled_record_that_another_message_holds_proves_nothing(
    service: Service, tenant: TenantKeys
) -> None:
    """Twilio is matched by number and text: a lost message can be matched with the record of a
    later message of ours with the same text. A provider id already recorded for another message
    of the account, or named for two messages at once, does not settle a possible duplicate."""
    from comms.dispatch.routing import Route
    from comms.providers.base import SendResult
    from comms.providers.outbox import OutboxProvider

    created = await send_sms(service, tenant, "13800138000", "13800138001", "13800138002")
    holder, asked, twin = (item["id"] for item in created["items"])
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == holder)
            .values(provider_account_id="acc_twilio", provider_message_id="SM-held")
        )
    async with standalone_dispatcher(service) as worker:
        route = Route(OutboxProvider(service.outbox), "acc_twilio")
        held = await worker._ids_held_elsewhere(
            route,
            [
                SendResult.sent(asked, "SM-held", "found"),
                SendResult.sent(asked, "SM-fresh", "found"),
                SendResult.sent(twin, "SM-twice", "found"),
                SendResult.sent(asked, "SM-twice", "found"),
            ],
        )
        # The holder's own id, asked about for the holder itself, would not count against it.
        own = await worker._ids_held_elsewhere(route, [SendResult.sent(holder, "SM-held", "found")])
    assert held == {"SM-held", "SM-twice"}
    assert own == set()


async def test_an_internationalized_domain_goes_out_in_its_ascii_form(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    """Mail servers without SMTPUTF8, SES and SendGrid take only ASCII domains: the address goes
    out with the punycode domain, while the log keeps (and masks) what the user gave."""
    created = await send(
        live_service,
        live_tenant,
        {
            "channel": "email",
            "category": "transactional",
            "subject": "Hallo",
            "content": "Guten Tag",
            "recipients": ["anna@bücher.example"],
        },
    )

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1}

    await wait_until(sent)
    eml = (live_service.outbox / "email" / f"{created['items'][0]['id']}.eml").read_bytes()
    parsed = BytesParser(policy=policy.default).parsebytes(eml)
    assert parsed["To"] == "anna@xn--bcher-kva.example"
    assert eml.isascii()


async def test_a_value_that_looks_sealed_is_only_text_unless_its_variable_is_secret(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    """Only secret variables were encrypted at acceptance: a sender's value that merely starts
    like a sealed one is sent as written, and one batch's bad secret fails only its own messages."""
    from comms.models import Batch

    plain = await send(
        live_service,
        live_tenant,
        {
            "channel": "sms",
            "category": "transactional",
            "content": "Hi {{ name }}",
            "variables": {"name": "enc:v1:not-a-token"},
            "recipients": ["13800138000"],
        },
    )
    other = await make_tenant(live_service.db, "Other")
    broken = await send(
        live_service,
        other,
        {
            "channel": "sms",
            "category": "verification",
            "content": "Code {{ code }}",
            "variables": {"code": "123456"},
            "recipients": ["13800138001"],
            # Far enough ahead that the UPDATE below lands before it falls due.
            "send_at": (datetime.now(UTC) + timedelta(seconds=3)).isoformat(),
        },
    )
    async with live_service.db.begin() as session:  # a sealed value this deployment cannot open
        await session.execute(
            update(Batch).where(Batch.id == broken["batch_id"]).values(variables={"code": "enc:v1:garbage"})
        )

    async def settled() -> bool:
        return await statuses(live_service, plain["batch_id"]) == {"sent": 1} and await statuses(
            live_service, broken["batch_id"]
        ) == {"failed": 1}

    await wait_until(settled)
    written = json.loads((live_service.outbox / "sms" / f"{plain['items'][0]['id']}.json").read_text())
    assert written["content"].startswith("Hi enc:v1:not-a-token")
    # A sealed value this process cannot open is a deployment mistake (another COMMS_SECRET_KEY):
    # retried with backoff like a transient error, failed only once the attempts are used up.
    async with live_service.db.read() as session:
        row = await session.get(Message, broken["items"][0]["id"])
    assert row is not None and row.error is not None and row.error.startswith("retries exhausted")
    assert "could not be decrypted" in row.error


async def test_a_retry_after_a_cancel_sends_what_it_requeues(service: Service, tenant: TenantKeys) -> None:
    """What the cancel stopped stays cancelled; what failed and is asked for again goes out."""
    created = await send_sms(service, tenant, "13800138000", "13800138001")
    failed, waiting = (item["id"] for item in created["items"])
    async with service.db.begin() as session:
        await session.execute(update(Message).where(Message.id == failed).values(status="failed", error="x"))
    headers = tenant.headers()
    assert (
        await service.client.post(f"/communication/batches/{created['batch_id']}/cancel", headers=headers)
    ).status_code == 200
    retried = await service.client.post(
        f"/communication/batches/{created['batch_id']}/retry", headers=headers
    )
    assert retried.status_code == 200 and retried.json()["message"] == "re-queued 1 item(s)"
    async with standalone_dispatcher(service) as worker:
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 10, utcnow(), timedelta(seconds=30))
        assert [c.id for c in claimed] == [failed]
        await worker._process(claimed)
    assert await statuses(service, created["batch_id"]) == {"sent": 1, "cancelled": 1}
    async with service.db.read() as session:
        row = await session.get(Message, waiting)
    assert row is not None and row.status == "cancelled"


async def test_claims_that_fail_more_often_than_there_are_batch_slots_stop_nothing(
    live_service: Service, live_tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that raises (the database away) gives its batch slot back: after more failures
    than the dispatcher has slots, it still claims, sends and reaps."""
    from comms.dispatch import dispatcher as dispatcher_module

    real = dispatcher_module.claim_due
    failures = live_service.settings.dispatch_concurrency + 2
    failed: list[int] = []

    async def fails_at_first(session: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("max_priority") is None and len(failed) < failures:
            failed.append(1)
            raise ConnectionError("the database went away")
        return await real(session, *args, **kwargs)

    monkeypatch.setattr(dispatcher_module, "ERROR_PAUSE", 0.01)
    monkeypatch.setattr(dispatcher_module, "claim_due", fails_at_first)
    log_id = (await send_sms(live_service, live_tenant, "13800138000"))["items"][0]["id"]
    await wait_for_message(live_service, log_id, lambda m: m.status == "sent")
    assert len(failed) == failures


async def test_a_claim_that_fails_part_way_leaves_nothing_leased(
    live_service: Service, live_tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main loop claims one priority level after another in one transaction: when a later
    statement fails (a connection dropped between two levels), the rows an earlier one claimed go
    back as they were, and are claimed again at once: sent once, not flagged as a duplicate."""
    from comms.dispatch import dispatcher as dispatcher_module

    real = dispatcher_module.claim_due
    failed: list[int] = []

    async def fails_once_after_claiming(session: Any, *args: Any, **kwargs: Any) -> Any:
        claimed = await real(session, *args, **kwargs)
        if claimed and not failed:
            failed.append(len(claimed))
            raise RuntimeError("the connection dropped between two priority levels")
        return claimed

    monkeypatch.setattr(dispatcher_module, "claim_due", fails_once_after_claiming)
    log_id = (await send_sms(live_service, live_tenant, "13800138000"))["items"][0]["id"]
    await wait_for_message(live_service, log_id, lambda m: m.status == "sent")
    async with live_service.db.read() as session:
        row = await session.get(Message, log_id)
    assert failed == [1]
    assert row is not None and row.possible_duplicate is False and row.attempts == 1
