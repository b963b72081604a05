"""Event webhooks: a tenant's URL told of every status change of its log items, signed, retried
until it answers, never told of what it did not subscribe to; set, read and deleted through
/communication/event-webhook."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from aiohttp import web
from sqlalchemy import func, select, update

from comms.dispatch.queue import release_claims, release_expired_leases, settle_unknown
from comms.events.delivery import EventSender
from comms.events.service import EventBuffer
from comms.kit.clock import utcnow
from comms.kit.netguard import PublicOnlyResolver
from comms.kit.secretbox import SecretBox
from comms.models import EventDelivery, EventWebhook, Message
from tests.conftest import Service, TenantKeys, wait_until
from tests.integration.conftest import signed
from tests.webhook_sink import WebhookSink


@dataclass
class Receiver:
    """The tenant's own endpoint: checks each post's signature, answers ``status``."""

    secret: str = ""
    status: int = 200
    events: list[dict[str, Any]] = field(default_factory=list)
    posts: int = 0
    bad_signatures: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        body = await request.read()
        timestamp = request.headers.get("X-Comms-Timestamp", "0")
        expected = (
            "v1="
            + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(expected, request.headers.get("X-Comms-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        assert abs(time.time() - int(timestamp)) < 300
        if self.status != 200:
            return web.Response(status=self.status, text="down for maintenance")
        self.events += msgspec.json.decode(body)["events"]
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/events", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}/events"
    yield found
    await runner.cleanup()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EventSender, "first_retry_seconds", 0.05)
    monkeypatch.setattr(EventSender, "poll_seconds", 0.05)


async def subscribe(service: Service, tenant: TenantKeys, url: str, **extra: Any) -> dict[str, Any]:
    answer = await service.client.put(
        "/communication/event-webhook", json={"url": url, **extra}, headers=tenant.headers()
    )
    assert answer.status_code in (200, 201), answer.text
    return dict(answer.json()["data"])


async def test_the_webhook_is_set_read_rotated_and_deleted(service: Service, tenant: TenantKeys) -> None:
    path, h = "/communication/event-webhook", tenant.headers()
    for bad, field_name in (
        ({"url": "ftp://x.example/e"}, "url"),
        ({"url": "https://[zz]/e"}, "url"),
        ({"url": "https://[::1/e"}, "url"),
        ({"url": "https://x.example:port/e"}, "url"),
        ({}, "url"),
        ({"url": "https://x.example/e", "statuses": ["opened"]}, "statuses.0"),
        ({"url": "https://x.example/e", "statuses": []}, "statuses"),
        ({"url": "https://x.example/e", "secret": "mine"}, "secret"),
    ):
        refused = await service.client.put(path, json=bad, headers=h)
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field_name, refused.text
    assert (await service.client.get(path, headers=h)).status_code == 404  # nothing was stored
    read_only = await service.client.put(
        path, json={"url": "https://x.example/e"}, headers=tenant.headers(tenant.read_only_token)
    )
    assert read_only.status_code == 403

    created = await service.client.put(path, json={"url": "https://x.example/e"}, headers=h)
    assert created.status_code == 201
    first = created.json()["data"]
    assert first["secret"].startswith("whsec_") and first["statuses"] == [
        "sent", "delivered", "undelivered", "failed", "suppressed", "rejected", "cancelled", "unknown",
    ]  # fmt: skip
    shown = (await service.client.get(path, headers=h)).json()["data"]
    assert "secret" not in shown and shown["secret_set"] is True and shown["pending_deliveries"] == 0
    changed = await service.client.put(
        path, json={"url": "https://y.example/e", "statuses": ["failed", "failed", "deferred"]}, headers=h
    )
    assert changed.status_code == 200 and "secret" not in changed.json()["data"]
    assert changed.json()["data"]["statuses"] == ["failed", "deferred"]
    rotated = (
        await service.client.put(path, json={"url": "https://y.example/e", "rotate_secret": True}, headers=h)
    ).json()
    assert rotated["data"]["secret"].startswith("whsec_") and rotated["data"]["secret"] != first["secret"]
    assert (await service.client.delete(path, headers=h)).status_code == 200
    assert (await service.client.get(path, headers=h)).status_code == 404
    assert (await service.client.delete(path, headers=h)).status_code == 404


async def test_event_webhooks_go_to_public_addresses_only(service: Service, tenant: TenantKeys) -> None:
    """Unless the operator allows private networks, a URL naming a private, loopback or link-local
    address is refused when set; a name is checked when it is resolved, before connecting."""
    service.settings.event_webhook_allow_private = False
    for url in (
        "http://127.0.0.1:8080/e",
        "https://10.1.2.3/e",
        "http://169.254.169.254/latest",
        "http://[::1]/e",
        "http://localhost/e",
        # IPv6 forms that lead to a private IPv4 address: NAT64, 6to4, IPv4-compatible, mapped
        "http://[64:ff9b::a00:5]/e",
        "http://[2002:a9fe:a9fe::1]/e",
        "http://[::127.0.0.1]/e",
        "http://[::ffff:10.0.0.1]/e",
        "http://[64:ff9b:1::a00:1]/e",  # RFC 8215's local-use NAT64 prefix
        # Forms the HTTP client reads as 127.0.0.1 (yarl normalizes the host), never resolved
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:8080/e",  # full-width digits
        "http://127\u30020\u30020\u30021/e",  # ideographic full stops
        "http://\u2460\u2461\u2466.0.0.1/e",  # circled digits
        "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/e",  # full-width localhost
    ):
        refused = await service.client.put(
            "/communication/event-webhook", json={"url": url}, headers=tenant.headers()
        )
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "url", url
        assert "is not a public address" in refused.json()["errors"][0]["message"]
    assert (
        await service.client.get("/communication/event-webhook", headers=tenant.headers())
    ).status_code == 404
    with pytest.raises(OSError, match="resolves to no public address"):
        await PublicOnlyResolver().resolve("localhost", 80)
    assert await subscribe(service, tenant, "https://93.184.215.14/e")  # a public address is fine
    assert await subscribe(service, tenant, "https://[64:ff9b::5db8:d70e]/e")  # and through NAT64
    # One set while the operator allowed private networks, then forbade them: refused at delivery.
    async with service.db.begin() as session:
        await session.execute(update(EventWebhook).values(url="http://10.9.9.9/e"))
        buffer = EventBuffer()
        buffer.add(tenant.tenant_id, {"event_id": "evt_1", "status": "sent"})
        assert await buffer.write(session, utcnow()) == 1
    sender = EventSender(service.db, service.app.state.comms.secrets, allow_private=False)
    assert await sender.deliver_due() == 1
    async with service.db.read() as session:
        row = await session.scalar(select(EventDelivery))
    assert (
        row is not None
        and row.delivered_at is None
        and row.last_error == "refused: 10.9.9.9 is not a public address"
    )


async def test_status_changes_are_posted_signed_and_retried_until_taken(
    live_service: Service, live_tenant: TenantKeys, receiver: Receiver, account: str
) -> None:
    """Three SMS go out: the receiver is down at first, so the post of their `sent` events waits
    (the webhook's GET says so), then arrives once it is up; a delivery receipt then posts a
    `delivered` event. Every post is signed with the secret given once."""
    receiver.secret = (await subscribe(live_service, live_tenant, receiver.url))["secret"]
    receiver.status = 503
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "category": "transactional",
            "content": "Parcel {{ p }}",
            "recipients": [{"to": f"1380013800{i}", "variables": {"p": str(i)}} for i in range(3)],
        },
        headers=live_tenant.headers(),
    )
    batch_id = answer.json()["batch_id"]
    ids = [item["id"] for item in answer.json()["items"]]

    async def failing_noticed() -> bool:
        data = (
            await live_service.client.get("/communication/event-webhook", headers=live_tenant.headers())
        ).json()
        return bool(data["data"]["last_error"] == "HTTP 503" and data["data"]["pending_deliveries"] >= 1)

    await wait_until(failing_noticed)
    receiver.status = 200

    async def told(count: int) -> bool:
        return len(receiver.events) >= count

    await wait_until(lambda: told(3))
    assert receiver.bad_signatures == 0 and receiver.posts >= 2
    assert sorted(e["log_id"] for e in receiver.events) == sorted(ids)
    first = next(e for e in receiver.events if e["log_id"] == ids[0])
    assert first["status"] == "sent" and first["batch_id"] == batch_id and first["type"] == "message.status"
    assert (
        first["recipient"] == "138****8000" and first["provider"] == "webhook" and first["channel"] == "sms"
    )
    assert first["provider_message_id"] == f"gw-{ids[0][-8:]}" and first["event_id"].startswith("evt_")

    receipt, headers = signed({"events": [{"event_id": "r1", "id": ids[0], "status": "delivered"}]})
    pushed = await live_service.client.post(
        f"/webhooks/webhook/{account}/status", content=receipt, headers=headers
    )
    assert pushed.status_code == 200
    await wait_until(lambda: told(4))
    assert (receiver.events[3]["log_id"], receiver.events[3]["status"]) == (ids[0], "delivered")
    again = await live_service.client.post(
        f"/webhooks/webhook/{account}/status", content=receipt, headers=headers
    )
    assert again.status_code == 200  # the same receipt again changes nothing, so tells nothing

    async def all_delivered() -> bool:
        async with live_service.db.read() as session:
            left = await session.scalar(
                select(func.count()).select_from(EventDelivery).where(EventDelivery.delivered_at.is_(None))
            )
        return left == 0

    await wait_until(all_delivered)
    assert len(receiver.events) == 4


async def test_only_the_statuses_subscribed_to_are_posted(
    live_service: Service, live_tenant: TenantKeys, receiver: Receiver, account: str, sink: WebhookSink
) -> None:
    receiver.secret = (await subscribe(live_service, live_tenant, receiver.url, statuses=["failed"]))[
        "secret"
    ]
    sink.per_message["+8613800138001"] = {"status": "rejected", "error": "unknown subscriber"}
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "category": "transactional",
            "content": "Hi",
            "recipients": ["13800138000", "13800138001"],
        },
        headers=live_tenant.headers(),
    )
    failed_id = answer.json()["items"][1]["id"]
    await wait_until(lambda: _at_least(receiver, 1))
    async with live_service.db.read() as session:  # every outcome is recorded by now
        rows = await session.scalar(select(func.count()).select_from(EventDelivery))
    assert rows == 1
    assert [(e["log_id"], e["status"], e["error"]) for e in receiver.events] == [
        (failed_id, "failed", "unknown subscriber")
    ]


async def _at_least(receiver: Receiver, count: int) -> bool:
    return len(receiver.events) >= count


async def test_a_tenant_whose_endpoint_is_down_does_not_hold_up_the_others(
    service: Service, tenant: TenantKeys, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hundred deliveries wait for a tenant whose endpoint fails, one for another tenant: one
    round takes at most four of the first tenant's, so the other's goes out in it too, however
    long the first tenant's backlog (its oldest four are what a round looks at); the failure
    holds back the first tenant's others as long as the failed one (its endpoint is asked once
    per wait, not once per delivery); a secret that no longer decrypts gives its delivery up."""
    from tests.conftest import make_tenant

    other = await make_tenant(service.db, "Other")
    receiver.secret = (await subscribe(service, other, receiver.url))["secret"]
    await subscribe(service, tenant, receiver.url.replace("/events", "/down"))
    async with service.db.begin() as session:  # one delivery per completed claim, as in real life
        for owner, count in ((tenant.tenant_id, 100), (other.tenant_id, 1)):
            for i in range(count):
                buffer = EventBuffer()
                buffer.add(owner, {"event_id": f"evt_{owner[-4:]}{i}", "status": "sent"})
                await buffer.write(session, utcnow())
    monkeypatch.setattr(EventSender, "first_retry_seconds", 10.0)
    sender = EventSender(service.db, service.app.state.comms.secrets, allow_private=True)
    assert await sender.deliver_due() == 5  # four of the first tenant's, and the other's
    assert [e["event_id"] for e in receiver.events] == [f"evt_{other.tenant_id[-4:]}0"]
    mine = EventDelivery.tenant_id == tenant.tenant_id
    async with service.db.read() as session:
        rows = (await session.scalars(select(EventDelivery).where(mine))).all()
    assert sum(r.attempts for r in rows) == 4 and {r.last_error for r in rows} == {"HTTP 404", None}
    assert all(r.next_attempt_at > utcnow() for r in rows)  # all held back
    assert await sender.deliver_due() == 0
    sealed_elsewhere = SecretBox("another COMMS_SECRET_KEY").encrypt("whsec_x")
    async with service.db.begin() as session:
        await session.execute(
            update(EventWebhook)
            .where(EventWebhook.tenant_id == tenant.tenant_id)
            .values(secret=sealed_elsewhere)
        )
        await session.execute(update(EventDelivery).where(mine).values(next_attempt_at=utcnow()))
    assert await sender.deliver_due() == 0
    async with service.db.read() as session:
        rows = (await session.scalars(select(EventDelivery).where(mine))).all()
    assert {(r.failed_at is not None, r.last_error) for r in rows} == {
        (True, "the webhook's secret cannot be decrypted (COMMS_SECRET_KEY changed?)")
    }


async def test_an_erasure_drops_waiting_events_that_quote_the_address(
    service: Service, tenant: TenantKeys
) -> None:
    await subscribe(service, tenant, "https://93.184.215.14/e")
    async with service.db.begin() as session:
        for error in ("invalid number +8613800138000", "invalid number +8613900139000"):
            buffer = EventBuffer()
            buffer.add(tenant.tenant_id, {"event_id": "evt_1", "status": "failed", "error": error})
            await buffer.write(session, utcnow())
    erased = await service.client.post(
        "/communication/erasures", json={"channel": "sms", "address": "13800138000"}, headers=tenant.headers()
    )
    assert erased.status_code == 200
    async with service.db.read() as session:
        left = (await session.scalars(select(EventDelivery.payload))).all()
    assert len(left) == 1 and "+8613900139000" in left[0]


LATER = (utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")  # scheduled: never claimed here


async def _told(service: Service) -> list[dict[str, Any]]:
    """Every event stored for posting, oldest row first."""
    async with service.db.read() as session:
        payloads = (
            await session.scalars(select(EventDelivery.payload).order_by(EventDelivery.created_at))
        ).all()
    return [event for payload in payloads for event in msgspec.json.decode(payload)["events"]]


async def _scheduled_sms(service: Service, tenant: TenantKeys, *recipients: str) -> dict[str, Any]:
    """A transactional SMS scheduled a month ahead (never claimed here): the 202's body."""
    answer = await service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "category": "transactional",
            "content": "Hi",
            "send_at": LATER,
            "recipients": list(recipients),
        },
        headers=tenant.headers(),
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def test_refusals_at_acceptance_and_a_cancel_are_told(service: Service, tenant: TenantKeys) -> None:
    """Items refused at acceptance are told with the 202 (in its transaction); a cancel tells
    each item it stopped; a webhook that did not subscribe to `cancelled` gets none of those, and
    a tenant without a webhook none at all."""
    unwatched = await service.client.post(
        "/communication/bulk",
        json={"channel": "sms", "category": "transactional", "content": "Hi", "recipients": ["12345"]},
        headers=tenant.headers(),
    )
    assert unwatched.json()["items"][0]["status"] == "rejected" and await _told(service) == []
    await subscribe(service, tenant, "https://93.184.215.14/e")
    added = await service.client.post(
        "/communication/suppressions",
        json={"channel": "sms", "address": "13900139000", "reason": "hard_bounce"},
        headers=tenant.headers(),
    )
    assert added.status_code == 201
    accepted = await _scheduled_sms(service, tenant, "13800138000", "12345", "13900139000", "13700137000")
    items = accepted["items"]
    assert [i["status"] for i in items] == ["scheduled", "rejected", "suppressed", "scheduled"]
    told = await _told(service)
    assert [(e["log_id"], e["status"], e["provider"]) for e in told] == [
        (items[1]["id"], "rejected", None),
        (items[2]["id"], "suppressed", None),
    ]
    assert told[1]["recipient"] == "139****9000" and told[1]["error"] == items[2]["error"]
    assert told[0]["batch_id"] == accepted["batch_id"] and told[0]["category"] == "transactional"

    batch_id = accepted["batch_id"]
    cancelled = await service.client.post(
        f"/communication/batches/{batch_id}/cancel", headers=tenant.headers()
    )
    assert cancelled.status_code == 200
    told = await _told(service)
    assert sorted((e["log_id"], e["status"], e["error"]) for e in told[2:]) == sorted(
        (items[i]["id"], "cancelled", "cancelled by request") for i in (0, 3)
    )
    again = await service.client.post(f"/communication/batches/{batch_id}/cancel", headers=tenant.headers())
    assert again.status_code == 200 and len(await _told(service)) == 4  # nothing more was stopped

    await subscribe(service, tenant, "https://93.184.215.14/e", statuses=["failed"])
    second = await _scheduled_sms(service, tenant, "12345", "13800138000")
    stopped = await service.client.post(
        f"/communication/batches/{second['batch_id']}/cancel", headers=tenant.headers()
    )
    assert stopped.status_code == 200 and stopped.json()["message"] == "cancelled 1 item(s)"
    assert len(await _told(service)) == 4  # neither `rejected` nor `cancelled` is wanted now


async def test_the_reapers_unknown_and_a_settled_recheck_are_told(
    service: Service, tenant: TenantKeys
) -> None:
    """A row interrupted twice ends `unknown` through the reaper, and what a provider later says
    of it moves it on: both are told. A row re-queued after its first interruption is not (it is
    no outcome yet)."""
    await subscribe(service, tenant, "https://93.184.215.14/e")
    answer = await _scheduled_sms(service, tenant, "13800138000", "13700137000")
    twice, once = (i["id"] for i in answer["items"])
    now = utcnow()
    async with service.db.begin() as session:
        for log_id, flagged in ((twice, True), (once, False)):
            await session.execute(
                update(Message)
                .where(Message.id == log_id)
                .values(
                    status="sending",
                    lease_owner="w-dead",
                    lease_until=now - timedelta(minutes=1),
                    possible_duplicate=flagged,
                    provider="webhook",
                )
            )
    async with service.db.begin() as session:
        assert await release_expired_leases(session, now) == 2
    told = await _told(service)
    assert [(e["log_id"], e["status"], e["error"], e["provider"]) for e in told] == [
        (twice, "unknown", "outcome unknown: interrupted twice while sending", "webhook")
    ]
    outcome = {"id": twice, "status": "sent", "sent_at": now, "provider_message_id": "gw-1", "error": None}
    async with service.db.begin() as session:
        await settle_unknown(session, now, [outcome, {"id": once}])
    async with service.db.begin() as session:
        await settle_unknown(session, now, [outcome])  # no longer unknown: nothing changes
    told = await _told(service)
    assert [(e["log_id"], e["status"], e["provider_message_id"]) for e in told[1:]] == [
        (twice, "sent", "gw-1")
    ]
    # A stopping worker gives back what it holds the same way: the twice-interrupted one is told.
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == once)
            .values(status="sending", lease_owner="w-stopping", lease_until=now + timedelta(minutes=1))
        )
    async with service.db.begin() as session:
        await release_claims(session, [(once, 0)], "w-stopping", now)
    told = await _told(service)
    assert [(e["log_id"], e["status"]) for e in told[2:]] == [(once, "unknown")]
