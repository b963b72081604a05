"""Event webhooks: a tenant's URL told of every status change of its log items, signed, retried
until it answers, never told of what it did not subscribe to; set, read and deleted through
/communication/event-webhook."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from sqlalchemy import func, select

from comms.events.delivery import EventSender
from comms.models import EventDelivery
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
