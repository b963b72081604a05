"""The generic ``webhook`` provider held to the provider contract."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web

from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.webhook import WebhookConfig, WebhookProvider, signature
from tests.providers.contract import Callback, FakeVendor, ProviderContract

SECRET = "contract-secret-0123456789"


class WebhookVendor(FakeVendor):
    """An in-house gateway: checks the HMAC signature and the message shape; ``failing`` lists
    the recipients whose requests it answers 503 (a gateway node in trouble)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()
        self.sizes: list[int] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/send", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self.pause_if_hanging(request)
        timestamp = request.headers.get("X-Comms-Timestamp", "")
        expected = (
            "v1=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(expected, request.headers.get("X-Comms-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.mode == "fail":
            return web.Response(status=503, text="maintenance")
        messages = msgspec.json.decode(body)["messages"]
        self.sizes.append(len(messages))
        if any(m["to"] in self.failing for m in messages):
            return web.Response(status=503, text="node down")
        if len(messages) > WebhookProvider.max_batch:
            self.refuse(f"{len(messages)} messages in one request")
        results = []
        for m in messages:
            if self.mode == "reject":
                results.append({"id": m["id"], "status": "rejected", "error": "number barred"})
                continue
            self.accept(m["to"])
            results.append({"id": m["id"], "status": "accepted", "message_id": f"gw-{m['id'][-6:]}"})
        return web.json_response({"results": results})


class TestWebhookContract(ProviderContract):
    provider_name = "webhook"

    def make_vendor(self) -> FakeVendor:
        return WebhookVendor()

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        config = WebhookConfig(url=f"{vendor.url}/send", secret=SECRET, timeout_seconds=1.5)
        return WebhookProvider.from_config(config, context)

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        event = {
            "event_id": f"ev-{provider_message_id}-{'d' if delivered else 'u'}",
            "id": message.id,
            "message_id": provider_message_id,
            "status": "delivered" if delivered else "undelivered",
            "error": None if delivered else "absent subscriber",
        }
        body = msgspec.json.encode({"events": [event]})
        timestamp = str(int(time.time()))
        headers = {"x-comms-timestamp": timestamp, "x-comms-signature": signature(SECRET, timestamp, body)}
        return Callback(headers, body, "https://comms.test/webhooks/webhook/acc_test/status")


class TestWebhookOneAtATimeContract(TestWebhookContract):
    """The same contract for a gateway that takes one message per request."""

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        config = WebhookConfig(
            url=f"{vendor.url}/send", secret=SECRET, timeout_seconds=1.5, batch_size=1, concurrency=4
        )
        return WebhookProvider.from_config(config, context)


async def test_requests_of_batch_size_run_concurrently_and_settle_per_request() -> None:
    vendor = await WebhookVendor().start()
    try:
        async with aiohttp.ClientSession() as http:
            config = WebhookConfig(url=f"{vendor.url}/send", secret=SECRET, batch_size=3, concurrency=2)
            provider = WebhookProvider.from_config(config, ProviderContext(http=http, outbox_dir=Path(".")))
            messages = TestWebhookContract().outbound(10)
            vendor.failing = {messages[4].to}  # the second request (messages 3-5) fails
            results = await provider.send(messages)
        assert sorted(vendor.sizes) == [1, 3, 3, 3]
        assert [r.message_id for r in results] == [m.id for m in messages]
        assert [r.outcome for r in results] == [Outcome.SENT] * 3 + [Outcome.RETRY] * 3 + [Outcome.SENT] * 4
        assert results[4].error == "HTTP 503: node down"
        assert set(vendor.delivered) == {m.to for m in messages[:3] + messages[6:]}
    finally:
        await vendor.stop()


def test_a_non_ascii_signature_header_is_refused_not_an_error() -> None:
    """Starlette decodes header values as latin-1: compare_digest on str would raise TypeError
    for "é" (a 500), where a bad signature must simply not verify (a 401)."""
    config = WebhookConfig(url="https://gateway.test/send", secret=SECRET)
    provider = WebhookProvider.from_config(config, ProviderContext(http=None, outbox_dir=Path(".")))
    body = b'{"events": []}'
    timestamp = str(int(time.time()))
    good = signature(SECRET, timestamp, body)
    url = "https://comms.test/webhooks/webhook/acc_test/status"
    assert provider.verify_callback({"x-comms-timestamp": timestamp, "x-comms-signature": good}, body, url)
    for given in ("v1=é" + good[4:], "é", good + "\u20ac"):
        headers = {"x-comms-timestamp": timestamp, "x-comms-signature": given}
        assert provider.verify_callback(headers, body, url) is False
    # Digits that are not ASCII ("²".isdigit() is True, int("²") raises): refused, not a 500.
    for stamp in ("\u00b2", "1\u00b2"):
        assert (
            provider.verify_callback({"x-comms-timestamp": stamp, "x-comms-signature": good}, body, url)
            is False
        )
