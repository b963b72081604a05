"""The ``sendgrid`` provider against a local server speaking SendGrid's v3 Mail Send format.

The fake checks what SendGrid checks (Bearer key, at most 1,000 personalizations and recipients,
no address twice, a subject and a from address, content order, reserved headers, the substitution
size limit) and renders each personalization the way SendGrid does (its substitutions replaced in
the shared content), so tests can compare what each recipient would get with what comms rendered.
Event Webhook posts are signed here with a P-256 key, as SendGrid signs them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from comms.errors import PermanentProviderError, TransientProviderError
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.email.sendgrid import (
    CALLBACK_MAX_AGE,
    MAX_SUBSTITUTION_BYTES,
    SendGridConfig,
    SendGridProvider,
    derive_skeleton,
    fill_skeleton,
    share_content,
)
from tests.conftest import Service, TenantKeys, statuses, wait_until
from tests.providers.contract import FIXTURES, Callback, FakeVendor, ProviderContract

API_KEY = "SG.test-key-0123456789.abcdefghijklmnopqrstuvwxyz"
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_KEY = base64.b64encode(
    SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
RESERVED = {
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
} | {
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
}
ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def signed(
    body: bytes, timestamp: int | None = None, key: ec.EllipticCurvePrivateKey = SIGNING_KEY
) -> dict[str, str]:
    """The two headers SendGrid's Signed Event Webhook adds."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
        "x-twilio-email-event-webhook-timestamp": stamp,
    }


class SendGridVendor(FakeVendor):
    """``POST /v3/mail/send`` as SendGrid validates and renders it."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []  # accepted request bodies
        self.rendered: dict[str, dict[str, Any]] = {}  # recipient -> what it would receive
        self.refused_addresses: set[str] = set()  # answered "Does not contain a valid address."
        self.forced: list[tuple[int, dict[str, Any], dict[str, str]]] = []  # next answers, in order
        self.fail_after: int | None = None  # accept this many requests, then answer 503

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v3/mail/send", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        await self.pause_if_hanging(request)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            self.bad_signatures += 1
            return web.json_response(
                {
                    "errors": [
                        {
                            "field": None,
                            "message": "The provided authorization grant is invalid, expired, or revoked",
                        }
                    ]
                },
                status=401,
            )
        if self.forced:
            status, body, headers = self.forced.pop(0)
            return web.json_response(body, status=status, headers=headers)
        if self.mode == "fail" or (self.fail_after is not None and len(self.bodies) >= self.fail_after):
            return web.json_response(
                {"errors": [{"field": None, "message": "Service unavailable"}]}, status=503
            )
        body = json.loads(raw)
        errors, refusals = self.validate(body)
        if errors:
            if not refusals:
                self.refuse(f"invalid request: {errors}")
            return web.json_response({"errors": errors}, status=400)
        self.bodies.append(body)
        for p in body["personalizations"]:
            self.render(body, p)
        return web.Response(status=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})

    def validate(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """SendGrid's 400 errors for ``body``; and whether they are all address refusals (the
        vendor's verdict about recipients, not a malformed request)."""
        errors: list[dict[str, Any]] = []
        refusals = True

        def error(message: str, where: str | None, refusal: bool = False) -> None:
            nonlocal refusals
            errors.append({"message": message, "field": where, "help": None})
            refusals = refusals and refusal

        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not personalizations:
            error("You must have at least one personalization.", "personalizations")
            return errors, False
        if len(personalizations) > 1000:
            error(
                "The personalization block is limited to 1000 personalizations per API request. "
                f"You have provided {len(personalizations)} personalizations.",
                "personalizations",
            )
        sender = body.get("from") or {}
        if not ADDRESS.fullmatch(str(sender.get("email", ""))):
            error("The from email does not contain a valid address.", "from.email")
        content = body.get("content")
        if not isinstance(content, list) or not content:
            error("Unless a valid template_id is provided, the content parameter is required.", "content")
        else:
            types = [c.get("type") for c in content]
            if "text/plain" in types and types[0] != "text/plain":
                error("If present, text/plain content must be first.", "content")
            if any(not isinstance(c.get("value"), str) or not c["value"] for c in content):
                error("The content value must be a string at least one character in length.", "content.value")
        seen: set[str] = set()
        total = 0
        for i, p in enumerate(personalizations):
            to = p.get("to") or []
            total += len(to)
            if not to:
                error("The to array is required for all personalization objects.", f"personalizations.{i}.to")
            for j, who in enumerate(to):
                email = str(who.get("email", ""))
                where = f"personalizations.{i}.to.{j}.email"
                if email.lower() in seen:
                    error(f"Each unique email address should only be included once: {email}", where)
                seen.add(email.lower())
                if self.mode == "reject" or email in self.refused_addresses or not ADDRESS.fullmatch(email):
                    error("Does not contain a valid address.", where, refusal=True)
            if not (p.get("subject") or body.get("subject")):
                error("The subject is required.", f"personalizations.{i}.subject")
            for name, value in (p.get("headers") or {}).items():
                if name.lower() in RESERVED or not isinstance(value, str) or "\n" in value:
                    error(f"The header {name} is reserved or invalid.", f"personalizations.{i}.headers")
            args = p.get("custom_args") or {}
            if not all(isinstance(v, str) for v in args.values()):
                error("Custom args values must be strings.", f"personalizations.{i}.custom_args")
            substitutions = p.get("substitutions") or {}
            size = sum(len(k.encode()) + len(str(v).encode()) for k, v in substitutions.items())
            if size > MAX_SUBSTITUTION_BYTES or len(substitutions) > 100:
                error("Substitutions are too large.", f"personalizations.{i}.substitutions")
        if total > 1000:
            error(
                "There is a limit of 1000 total recipients (to + cc + bcc) per request.", "personalizations"
            )
        return errors, refusals

    def render(self, body: dict[str, Any], p: dict[str, Any]) -> None:
        def substitute(text: str) -> str:
            for tag, value in (p.get("substitutions") or {}).items():
                text = text.replace(tag, value)
            return text

        parts = {c["type"]: substitute(c["value"]) for c in body["content"]}
        for who in p["to"]:
            self.rendered[who["email"]] = {
                "subject": substitute(p.get("subject") or body["subject"]),
                "text": parts.get("text/plain"),
                "html": parts.get("text/html"),
                "headers": p.get("headers") or {},
                "custom_args": p.get("custom_args") or {},
                "from": body["from"],
                "tracking": body.get("tracking_settings"),
            }
            self.accept(who["email"])


def make_config(vendor: FakeVendor, **extra: Any) -> SendGridConfig:
    return SendGridConfig(
        api_key=API_KEY, endpoint=vendor.url, webhook_public_key=PUBLIC_KEY, timeout_seconds=1.5, **extra
    )


def event(message: OutboundMessage, kind: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "email": message.to,
        "timestamp": int(time.time()),
        "event": kind,
        "sg_event_id": event_id,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "comms_id": message.id,
        "comms_tenant": message.tenant_id,
        **extra,
    }


class TestSendGridContract(ProviderContract):
    provider_name = "sendgrid"
    channel = "email"

    def make_vendor(self) -> FakeVendor:
        return SendGridVendor()

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        return SendGridProvider.from_config(make_config(vendor), context)

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        kind = "delivered" if delivered else "bounce"
        extra = {} if delivered else {"type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 unknown user"}
        item = event(message, kind, f"ev-{provider_message_id}-{kind}", **extra)
        item["sg_message_id"] = f"{provider_message_id}.filterdrecv-p3mdm1-756b745b58-kmzbl-18-5F5FC76C-9.0"
        body = json.dumps([item]).encode()
        return Callback(signed(body), body, "https://comms.test/webhooks/sendgrid/acc_test/status")


# ---- vendor-specific -------------------------------------------------------------------------------


@pytest.fixture
async def vendor() -> AsyncIterator[SendGridVendor]:
    async with SendGridVendor() as server:
        yield server


@pytest.fixture
async def provider(vendor: SendGridVendor) -> AsyncIterator[SendGridProvider]:
    async with aiohttp.ClientSession() as http:
        instance = SendGridProvider(make_config(vendor), http)
        yield instance


def mail(i: int, **changes: Any) -> OutboundMessage:
    base = OutboundMessage(
        id=f"log_{i:032x}",
        tenant_id="ten_test",
        channel="email",
        category="transactional",
        to=f"user{i}@example.com",
        text=f"Hello {i}",
        subject="Your parcel",
        sender="shop@acme.example",
        sender_name="Acme",
    )
    return dataclasses.replace(base, **changes)


def marketing(i: int, name: str) -> OutboundMessage:
    """A message rendered as comms renders marketing mail: own name, own unsubscribe link."""
    url = f"https://comms.test/u/{secrets.token_urlsafe(24)}"
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    body = "".join(f"<tr><td>Item {n}</td><td>{n * 3}.99 EUR</td></tr>" for n in range(300))
    return mail(
        i,
        category="marketing",
        subject=f"Winter sale for you, {name}",
        text=f"Hi {name},\n\nour winter sale starts now.\n"
        + "Great deals.\n" * 40
        + f"\n--\nAcme, 1 Main St, Springfield\nUnsubscribe: {url}\n",
        html=f'<html><body><h1>Hi {escaped},</h1><table>{body}</table><hr><p style="font-size:12px">'
        f'Acme, 1 Main St<br><a href="{url}">Unsubscribe</a></p></body></html>',
        headers=(
            ("Auto-Submitted", "auto-generated"),
            ("List-Unsubscribe", f"<{url}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("List-Id", '"Äcme" <ten-test.marketing.comms>'),
        ),
    )


NAMES = ["Anna", "Bob", "Carla Maria", 'Dé "the boss" <Ö>', "李雷", "O'Brien & Sons", "", "-x-"]


async def test_marketing_mail_shares_one_content_and_each_recipient_gets_exactly_its_own(
    vendor: SendGridVendor, provider: SendGridProvider
) -> None:
    messages = [marketing(i, NAMES[i % len(NAMES)]) for i in range(400)]
    results = await provider.send(messages)
    assert all(r.outcome is Outcome.SENT for r in results) and vendor.problems == []
    assert len(vendor.bodies) == 1  # one request: the differing parts went as substitutions
    [body] = vendor.bodies
    assert len(body["personalizations"]) == 400 and len(json.dumps(body)) < 400 * 2_000
    assert body["tracking_settings"] == {"subscription_tracking": {"enable": False}}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    for m in messages:
        got = vendor.rendered[m.to]
        assert (got["subject"], got["text"], got["html"]) == (m.subject, m.text, m.html)
        assert got["headers"]["List-Unsubscribe"] == dict(m.headers)["List-Unsubscribe"]
        assert got["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert got["headers"]["List-Id"].startswith("=?utf-8?")  # RFC 2047 for the non-ASCII name
        assert got["custom_args"] == {"comms_id": m.id, "comms_tenant": "ten_test"}
        assert got["from"] == {"email": "shop@acme.example", "name": "Acme"}
    assert {r.provider_message_id for r in results} == {results[0].provider_message_id}  # X-Message-Id


async def test_content_too_different_to_share_goes_in_requests_of_its_own(
    vendor: SendGridVendor, provider: SendGridProvider
) -> None:
    unique = [mail(i, text=secrets.token_hex(MAX_SUBSTITUTION_BYTES)) for i in range(3)]
    same = [mail(i, text="The same notice for everyone") for i in range(3, 8)]
    results = await provider.send(unique + same)
    assert all(r.outcome is Outcome.SENT for r in results) and vendor.problems == []
    sizes = sorted(len(b["personalizations"]) for b in vendor.bodies)
    assert sizes == [1, 1, 1, 5]  # identical content still shares a request, without substitutions
    assert all("substitutions" not in p for b in vendor.bodies for p in b["personalizations"])
    for m in unique + same:
        assert vendor.rendered[m.to]["text"] == m.text


async def test_one_address_twice_goes_in_two_requests(
    vendor: SendGridVendor, provider: SendGridProvider
) -> None:
    messages = [mail(1), mail(2, to="USER1@example.com", text="Hello again"), mail(3)]
    results = await provider.send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT] * 3 and vendor.problems == []
    assert len(vendor.bodies) == 2


def test_the_skeleton_reproduces_every_text() -> None:
    texts = ["Hi Anna,\nbye", "Hi Bob Smith,\nbye", "Hi Anne,\nbye!", "totally\ndifferent"]
    literals, holes = derive_skeleton(texts)
    for text, values in zip(texts, holes, strict=True):
        assert fill_skeleton(literals, text) is not None
        rebuilt = literals[0] + "".join(v + lit for v, lit in zip(values, literals[1:], strict=True))
        assert rebuilt == text
    narrow, _ = derive_skeleton(["Dear Anna, see you", "Dear Anne, see you"])
    assert narrow == ["Dear Ann", ", see you"] and fill_skeleton(narrow, "Dear Bob, see you") is None
    # ... so a text the first skeleton does not fit joins the sample, and it is derived again:
    shared, each = share_content(["Dear Anna, see you", "Dear Anne, see you", "Dear Bob, see you"])
    assert shared == ["Dear ", ", see you"] and each == [["Anna"], ["Anne"], ["Bob"]]


async def test_a_refused_address_fails_alone_and_the_others_are_sent_once(
    vendor: SendGridVendor, provider: SendGridProvider
) -> None:
    vendor.refused_addresses.add("user1@example.com")
    messages = [mail(0), mail(1), mail(2)]
    results = await provider.send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    assert results[1].error and "Does not contain a valid address" in results[1].error
    assert vendor.requests == 2 and dict(vendor.delivered) == {"user0@example.com": 1, "user2@example.com": 1}


ERRORS = json.loads((FIXTURES / "sendgrid" / "errors.json").read_text())["answers"]


@pytest.mark.parametrize("answer", ERRORS, ids=lambda a: f"{a['status']}-{a['expect']}")
async def test_documented_error_answers(
    vendor: SendGridVendor, provider: SendGridProvider, answer: dict[str, Any]
) -> None:
    headers = dict(answer.get("headers", {}))
    if answer["status"] == 429:
        headers["X-RateLimit-Reset"] = str(int(time.time()) + 30)
    vendor.forced.append((answer["status"], answer["body"], headers))
    messages = [mail(0), mail(1)]
    expect = answer["expect"]
    if expect in ("transient", "permanent"):
        error = TransientProviderError if expect == "transient" else PermanentProviderError
        with pytest.raises(error) as raised:
            await provider.send(messages)
        assert answer["body"]["errors"][0]["message"][:40] in raised.value.message
        if answer["status"] == 429:
            assert raised.value.retry_after is not None and 25 <= raised.value.retry_after <= 30
        assert not vendor.delivered
        return
    results = await provider.send(messages)
    message = answer["body"]["errors"][0]["message"]
    if expect == "failed":
        assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.FAILED]
        assert all(message[:40] in (r.error or "") for r in results) and not vendor.delivered
    else:  # the first personalization refused: it fails, the other is sent in a second request
        assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.SENT]
        assert message in (results[0].error or "") and dict(vendor.delivered) == {"user1@example.com": 1}


async def test_a_later_request_refused_as_a_whole_retries_only_its_messages(
    vendor: SendGridVendor, provider: SendGridProvider
) -> None:
    vendor.fail_after = 1
    messages = [mail(0), mail(1, sender="news@acme.example"), mail(2, sender="info@acme.example")]
    results = await provider.send(messages)
    assert results[0].outcome is Outcome.SENT  # the first request went alone, and was taken
    assert [r.outcome for r in results[1:]] == [Outcome.RETRY, Outcome.RETRY]
    assert all("503" in (r.error or "") for r in results[1:]) and dict(vendor.delivered) == {
        "user0@example.com": 1
    }


async def test_a_message_sendgrid_cannot_carry_fails_without_a_request(
    vendor: SendGridVendor, provider: SendGridProvider
) -> None:
    results = await provider.send([mail(0, subject=None), mail(1, headers=(("Reply-To", "x@example.com"),))])
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.FAILED]
    assert "subject" in (results[0].error or "") and "Reply-To" in (results[1].error or "")
    assert vendor.requests == 0


# ---- Event Webhook ---------------------------------------------------------------------------------

EVENTS = json.loads((FIXTURES / "sendgrid" / "events.json").read_text())["events"]


def test_documented_events_map_to_statuses(provider: SendGridProvider) -> None:
    body = json.dumps([e["event"] for e in EVENTS]).encode()
    assert provider.verify_callback(signed(body), body, "https://comms.test/x")
    parsed = {e.event_key: e for e in provider.parse_receipts(body)}
    for item in EVENTS:
        got = parsed.get(item["event"]["sg_event_id"])
        if item["expect"] is None:
            assert got is None, item["event"]["event"]
            continue
        assert got is not None
        assert (got.status, got.bounce) == (item["expect"]["status"], item["expect"]["bounce"])
        assert got.message_id == item["event"]["comms_id"]
        assert got.provider_message_id == item["event"]["sg_message_id"].split(".")[0]
        assert (got.status == "delivered" and got.bounce is None) or got.error


def test_unsigned_stale_or_foreign_callbacks_are_refused(vendor: SendGridVendor) -> None:
    provider = SendGridProvider(make_config(vendor), None)
    body = json.dumps([{"event": "delivered", "sg_event_id": "x", "comms_id": "log_1"}]).encode()
    assert provider.verify_callback(signed(body), body, "")
    now = int(time.time())
    for headers in (
        {},
        signed(body, now - CALLBACK_MAX_AGE - 60),  # a replay
        signed(body, now + CALLBACK_MAX_AGE + 60),
        signed(body, key=ec.generate_private_key(ec.SECP256R1())),  # someone else's key
        {**signed(body), "x-twilio-email-event-webhook-signature": "not base64!"},
    ):
        assert not provider.verify_callback(headers, body, "")
    stamped = signed(body)
    assert not provider.verify_callback(stamped, body.replace(b"delivered", b"bounce"), "")
    keyless = SendGridProvider(SendGridConfig(api_key=API_KEY, endpoint=vendor.url), None)
    assert not keyless.verify_callback(signed(body), body, "")  # no key configured: nothing is trusted


def test_config_checks_the_verification_key() -> None:
    with pytest.raises(ValidationError):
        SendGridConfig(api_key=API_KEY, webhook_public_key="bm90IGEga2V5")
    pem = SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert SendGridConfig(api_key=API_KEY, webhook_public_key=pem.decode()).webhook_public_key


# ---- through the API -------------------------------------------------------------------------------


@pytest.fixture
async def live_vendor() -> AsyncIterator[SendGridVendor]:
    async with SendGridVendor() as server:
        yield server


async def test_bulk_through_sendgrid_then_bounce_complaint_and_delivery_receipts(
    live_service: Service, live_tenant: TenantKeys, live_vendor: SendGridVendor
) -> None:
    created = await live_service.client.post(
        "/communication/providers",
        json={
            "channel": "email",
            "provider": "sendgrid",
            "name": "sendgrid",
            "config": {"api_key": API_KEY, "endpoint": live_vendor.url, "webhook_public_key": PUBLIC_KEY},
        },
        headers=live_tenant.headers(),
    )
    assert created.status_code == 201, created.text
    account = created.json()["data"]
    assert "api_key" not in account["config"] and account["secret_fields_set"] == ["api_key"]
    recipients = ["gone@example.com", "fine@example.com", "angry@example.com"]
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "email",
            "category": "transactional",
            "subject": "Your receipt",
            "content": "Thanks for your order, {{ name }}",
            "variables": {"name": "friend"},
            "recipients": recipients,
        },
        headers=live_tenant.headers(),
    )
    assert answer.status_code in (200, 201, 202), answer.text
    batch = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 3}

    await wait_until(sent)
    assert live_vendor.problems == [] and len(live_vendor.bodies) == 1  # one request for all three
    ids = [live_vendor.rendered[address]["custom_args"]["comms_id"] for address in recipients]
    assert set(ids) == {item["id"] for item in answer.json()["items"]}
    for address in recipients:
        got = live_vendor.rendered[address]
        assert got["text"].startswith("Thanks for your order, friend") and got["subject"] == "Your receipt"
        assert got["headers"]["Auto-Submitted"] == "auto-generated"

    def receipt(i: int, kind: str, **extra: Any) -> dict[str, Any]:
        return {
            "email": recipients[i],
            "timestamp": int(time.time()),
            "event": kind,
            "sg_event_id": f"{kind}-{i}-{secrets.token_hex(4)}",
            "sg_message_id": "abc.filter0001",
            "comms_id": ids[i],
            "comms_tenant": live_tenant.tenant_id,
            **extra,
        }

    events = [
        receipt(0, "processed"),
        receipt(
            0, "bounce", type="bounce", status="5.1.1", reason="550 5.1.1 The email account does not exist"
        ),
        receipt(1, "delivered", response="250 OK"),
        receipt(2, "delivered", response="250 OK"),
        receipt(2, "spamreport"),
    ]
    body = json.dumps(events).encode()
    path = urlsplit(account["callback_urls"]["status"]).path
    posted = await live_service.client.post(path, content=body, headers=signed(body))
    assert posted.status_code == 200, posted.text
    assert await statuses(live_service, batch) == {"undelivered": 1, "delivered": 2}
    again = await live_service.client.post(path, content=body, headers=signed(body))  # SendGrid retries
    assert again.status_code == 200 and await statuses(live_service, batch) == {
        "undelivered": 1,
        "delivered": 2,
    }
    forged = await live_service.client.post(
        path, content=body, headers=signed(body, key=ec.generate_private_key(ec.SECP256R1()))
    )
    assert forged.status_code == 401
    listed = await live_service.client.get("/communication/suppressions", headers=live_tenant.headers())
    assert listed.status_code == 200, listed.text
    reasons = {item["reason"] for item in listed.json()["items"]}
    assert reasons == {"hard_bounce", "complaint"} and listed.json()["total"] == 2
    log = await live_service.client.get(f"/communication/logs/{ids[0]}", headers=live_tenant.headers())
    assert "550 5.1.1" in (log.json()["data"]["error"] or "")
