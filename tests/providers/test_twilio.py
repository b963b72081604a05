"""Twilio Programmable Messaging held to the provider contract, plus Twilio's own rules: basic auth,
per-message calls issued concurrently, error codes, X-Twilio-Signature, receipts, inbound, reconcile."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import select

from comms.errors import PermanentProviderError, TransientProviderError
from comms.kit.ids import new_id
from comms.models import Message, ReceiptEvent
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.sms.twilio import TwilioConfig, TwilioProvider, form, signature
from tests.conftest import Service, TenantKeys, statuses, wait_until
from tests.providers.contract import FIXTURES, Callback, FakeVendor, ProviderContract

HERE = FIXTURES / "twilio"
ACCOUNT_SID = "AC" + "0a1b2c3d" * 4
AUTH_TOKEN = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
FROM = "+15017122661"
STATUS_URL = "https://comms.test/webhooks/twilio/acc_test/status"
ERRORS: dict[str, dict[str, Any]] = json.loads((HERE / "errors.json").read_text())
RESOURCE: dict[str, Any] = json.loads((HERE / "message_created.json").read_text())


def twilio_sign(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """The vendor side of X-Twilio-Signature, written from Twilio's security docs."""
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode("utf-8"), hashlib.sha1).digest()).decode()


class TwilioVendor(FakeVendor):
    """api.twilio.com's Messages resource: basic auth, required parameters, E.164 ``To``, body
    length, Twilio's JSON answers and error objects; message fetch and list."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: dict[str, dict[str, Any]] = {}  # sid -> Message resource, oldest first
        self.forms: list[dict[str, str]] = []
        self.per_number: dict[str, tuple[int, str]] = {}  # To -> (HTTP status, error code)
        self.final_status: dict[str, str] = {}  # To -> status the created message ends in
        self.latency = 0.0  # the vendor's own answer time
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_page_size = 1000

    def routes(self, app: web.Application) -> None:
        base = "/2010-04-01/Accounts/{sid}"
        app.router.add_post(base + "/Messages.json", self.create)
        app.router.add_get(base + "/Messages.json", self.list)
        app.router.add_get(base + "/Messages/{message_sid}.json", self.fetch)

    def authorized(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            login = password = ""
        ok = (
            scheme == "Basic"
            and request.match_info["sid"] == ACCOUNT_SID
            and login == ACCOUNT_SID
            and hmac.compare_digest(password, AUTH_TOKEN)
        )
        if not ok:
            self.bad_signatures += 1
        return ok

    @staticmethod
    def error(code: str, status: int | None = None, **headers: str) -> web.Response:
        body = ERRORS[code]
        return web.json_response(body, status=status or int(body["status"]), headers=headers)

    async def create(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._create(request)
        finally:
            self.in_flight -= 1

    async def _create(self, request: web.Request) -> web.Response:
        params = {k: str(v) for k, v in (await request.post()).items()}
        if not self.authorized(request):
            return self.error("20003")
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.mode == "fail":
            self.requests += 1
            return self.error("20503")
        self.forms.append(params)
        to, body = params.get("To", ""), params.get("Body", "")
        for missing, code in (("To", "21604"), ("Body", "21602")):
            if not params.get(missing):
                self.refuse(f"no {missing}")
                return self.error(code)
        if not params.get("From") and not params.get("MessagingServiceSid"):
            self.refuse("neither From nor MessagingServiceSid")
            return self.error("21603")
        if self.mode == "reject":
            self.requests += 1
            return self.error("21211")
        if not (to.startswith("+") and to[1:].isdigit() and 8 <= len(to) <= 16):
            self.refuse(f"To {to!r} is not E.164")
            return self.error("21211")
        if len(body) > 1600:
            self.refuse(f"body of {len(body)} characters")
            return self.error("21617")
        if to in self.per_number:
            self.requests += 1
            status, code = self.per_number[to]
            extra = {"Retry-After": "7"} if status == 429 else {}
            return self.error(code, status, **extra)
        resource = self.record(params)
        self.accept(to)
        await self.pause_if_hanging(request)  # "hang": created, but the answer never comes in time
        return web.json_response(resource, status=201)

    def record(self, params: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(datetime.now(UTC))
        resource = copy.deepcopy(RESOURCE)
        resource.update(
            account_sid=ACCOUNT_SID,
            sid=sid,
            to=params["To"],
            body=params["Body"],
            messaging_service_sid=params.get("MessagingServiceSid"),
            date_created=now,
            date_updated=now,
            uri=f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
            subresource_uris={"media": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media.json"},
        )
        resource["from"] = params.get("From") or "+15550000000"
        stored = dict(resource)  # what fetch/list show later: handed to the carrier
        final = self.final_status.get(params["To"], "sent")
        stored.update(status=final, date_sent=now)
        if final in ("failed", "undelivered"):
            stored.update(error_code=30003, error_message="Unreachable destination handset")
        self.messages[sid] = stored
        return resource

    async def fetch(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.error("20003")
        found = self.messages.get(request.match_info["message_sid"])
        return web.json_response(found) if found else self.error("20404")

    async def list(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.error("20003")
        query = request.query
        since = date.fromisoformat(query["DateSent>"]) if "DateSent>" in query else None
        size = min(int(query.get("PageSize", "50")), self.max_page_size)
        page = int(query.get("Page", "0"))
        chosen = [
            m
            for m in reversed(self.messages.values())  # newest first
            if ("To" not in query or m["to"] == query["To"])
            and (
                since is None
                or (
                    m["date_sent"]
                    and datetime.strptime(m["date_sent"], "%a, %d %b %Y %H:%M:%S %z").date() >= since
                )
            )
        ]
        rows = chosen[page * size : (page + 1) * size]
        more = len(chosen) > (page + 1) * size
        uri = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        following = {k: v for k, v in query.items() if k not in ("Page", "PageSize")}
        next_uri = f"{uri}?{urlencode({**following, 'PageSize': size, 'Page': page + 1})}" if more else None
        return web.json_response(
            {"messages": rows, "page": page, "page_size": size, "next_page_uri": next_uri, "uri": uri}
        )


def config(vendor: FakeVendor, **overrides: Any) -> TwilioConfig:
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from_number": FROM,
        "endpoint": vendor.url,
        "timeout_seconds": 1.5,
    }
    values.update(overrides)
    return TwilioConfig(**values)


def status_callback(
    sid: str | None, to: str, status: str, error_code: str | None = None
) -> list[tuple[str, str]]:
    params = [
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("From", FROM),
        ("MessageSid", sid or ""),
        ("MessageStatus", status),
        ("SmsSid", sid or ""),
        ("SmsStatus", status),
        ("To", to),
    ]
    if error_code:
        params.append(("ErrorCode", error_code))
    return params


class TestTwilioContract(ProviderContract):
    provider_name = "twilio"
    status_url = STATUS_URL

    def make_vendor(self) -> FakeVendor:
        return TwilioVendor()

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        return TwilioProvider.from_config(config(vendor), context)

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        params = status_callback(
            provider_message_id,
            message.to,
            "delivered" if delivered else "undelivered",
            None if delivered else "30003",
        )
        headers = {
            "x-twilio-signature": twilio_sign(AUTH_TOKEN, STATUS_URL, params),
            "content-type": "application/x-www-form-urlencoded",
        }
        return Callback(headers, urlencode(params).encode(), STATUS_URL)


# ---- Twilio's own rules ------------------------------------------------------------------------


@pytest.fixture
async def vendor() -> AsyncIterator[TwilioVendor]:
    async with TwilioVendor() as server:
        yield server


def make(
    vendor: TwilioVendor, http: aiohttp.ClientSession | None, tmp_path: Path, **overrides: Any
) -> Provider:
    context = ProviderContext(http=http, outbox_dir=tmp_path, status_url=STATUS_URL)
    return TwilioProvider.from_config(config(vendor, **overrides), context)


def sms(i: int, to: str | None = None, text: str | None = None, log_id: str | None = None) -> OutboundMessage:
    return OutboundMessage(
        id=log_id or f"log_{i:032x}",
        tenant_id="ten_test",
        channel="sms",
        category="transactional",
        to=to or f"+1415555{i:04d}",
        text=text or f"Your parcel {i} is ready",
    )


def test_the_documented_signature_example_verifies() -> None:
    example = json.loads((HERE / "signature_example.json").read_text())
    params = list(example["params"].items())
    assert signature(example["auth_token"], example["url"], params) == example["signature"]
    assert twilio_sign(example["auth_token"], example["url"], params) == example["signature"]
    # verify_callback on the same request, as our endpoint sees it (the docs' token is short, so
    # the config is built without the length check that guards real tokens)
    cfg = TwilioConfig.model_construct(
        account_sid=ACCOUNT_SID, auth_token=example["auth_token"], from_number=FROM, endpoint="https://x"
    )
    provider = TwilioProvider(cfg, ProviderContext(http=None, outbox_dir=Path(".")))
    body = urlencode(params).encode()
    headers = {"x-twilio-signature": example["signature"]}
    assert provider.verify_callback(headers, body, example["url"])
    assert not provider.verify_callback(headers, body, example["url"].replace("foo=1", "foo=2"))
    assert not provider.verify_callback({}, body, example["url"])
    # a proxy that adds the default port does not break it
    assert provider.verify_callback(headers, body, example["url"].replace(".com/", ".com:443/"))


def test_config_needs_exactly_one_sender() -> None:
    base = {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}
    with pytest.raises(ValidationError):
        TwilioConfig(**base)
    with pytest.raises(ValidationError):
        TwilioConfig(**base, from_number=FROM, messaging_service_sid="MG" + "1" * 32)
    with pytest.raises(ValidationError):
        TwilioConfig(**{**base, "account_sid": "AC123"}, from_number=FROM)
    assert TwilioConfig(**base, messaging_service_sid="MG" + "1" * 32).endpoint == "https://api.twilio.com"


async def test_the_request_carries_what_twilio_needs(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    results = await make(vendor, http, tmp_path).send([sms(1)])
    assert results[0].outcome is Outcome.SENT and results[0].provider_message_id in vendor.messages
    assert vendor.forms == [
        {"To": "+14155550001", "Body": "Your parcel 1 is ready", "From": FROM, "StatusCallback": STATUS_URL}
    ]
    assert "Your parcel" not in (results[0].response or "")  # the answer's body is not kept
    service_sid = "MG" + "2" * 32
    provider = make(vendor, http, tmp_path, from_number=None, messaging_service_sid=service_sid)
    await provider.send([sms(2)])
    assert vendor.forms[-1]["MessagingServiceSid"] == service_sid and "From" not in vendor.forms[-1]
    assert vendor.problems == []


async def test_a_wrong_auth_token_is_permanent(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = make(vendor, http, tmp_path, auth_token="0" * 32, concurrency=2)
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send([sms(i) for i in range(10)])
    assert "20003" in caught.value.message
    assert not vendor.delivered
    assert 1 <= vendor.bad_signatures <= 2  # the first refusal stops the calls not yet started


async def test_error_codes_map_per_message(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    messages = [sms(i) for i in range(6)]
    vendor.per_number = {
        messages[0].to: (400, "21610"),  # replied STOP
        messages[1].to: (400, "21408"),  # region not enabled
        messages[2].to: (400, "21614"),  # not a mobile
        messages[3].to: (503, "20503"),  # this one call failed
        messages[4].to: (429, "20429"),  # throttled, Retry-After: 7
    }
    results = await make(vendor, http, tmp_path).send(messages)
    assert [r.outcome for r in results] == [
        Outcome.FAILED,
        Outcome.FAILED,
        Outcome.FAILED,
        Outcome.RETRY,
        Outcome.RETRY,
        Outcome.SENT,
    ]
    assert "21610" in (results[0].error or "") and "unsubscribed" in (results[0].error or "")
    assert "STOP" in (results[0].error or "")  # the tenant sees why: the recipient opted out
    # ...and comms suppresses marketing to them (the STOP went to Twilio, not to comms)
    assert [r.opted_out for r in results] == [True, False, False, False, False, False]
    assert "21408" in (results[1].error or "") and "21614" in (results[2].error or "")
    assert "20503" in (results[3].error or "") and results[4].retry_after == 7.0
    assert list(vendor.delivered) == [messages[5].to]


async def test_a_missing_from_number_refuses_the_account(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """21603 ('From' is required) is the account's sender, not the message: the call is refused
    as a whole so the dispatcher fails over, instead of every message failing."""
    messages = [sms(i) for i in range(3)]
    vendor.per_number = {m.to: (400, "21603") for m in messages}
    with pytest.raises(PermanentProviderError, match="21603"):
        await make(vendor, http, tmp_path, concurrency=1).send(messages)
    assert vendor.requests == 1 and not vendor.delivered  # refused: no further calls


async def test_a_missing_from_number_midway_leaves_the_rest_for_later(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    messages = [sms(i) for i in range(3)]
    vendor.per_number = {messages[1].to: (400, "21603")}
    results = await make(vendor, http, tmp_path, concurrency=1).send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.RETRY, Outcome.RETRY]
    assert "21603" in (results[1].error or "")


def test_a_signature_over_the_url_without_its_port_verifies(tmp_path: Path) -> None:
    """Twilio signs the URL as configured in its console; behind a proxy we may see it with a port
    (any port, not only the default). Twilio's own validator tries the URL with the port removed."""
    provider = TwilioProvider.from_config(
        TwilioConfig(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=FROM),
        ProviderContext(http=None, outbox_dir=tmp_path),
    )
    params = status_callback("SM1", "+14155550100", "delivered")
    body = urlencode(params).encode()
    seen = "https://comms.test:8443/webhooks/twilio/acc_1/status?x=1"

    def signed_over(url: str, token: str = AUTH_TOKEN) -> dict[str, str]:
        return {"x-twilio-signature": twilio_sign(token, url, params)}

    assert provider.verify_callback(
        signed_over("https://comms.test/webhooks/twilio/acc_1/status?x=1"), body, seen
    )
    assert provider.verify_callback(signed_over(seen), body, seen)
    assert not provider.verify_callback(signed_over(seen, "0" * 32), body, seen)  # forged
    assert not provider.verify_callback(
        signed_over("https://comms.test:9000/webhooks/twilio/acc_1/status?x=1"), body, seen
    )
    assert not provider.verify_callback(
        signed_over("https://comms.test/webhooks/twilio/acc_1/status"), body, seen
    )
    assert not provider.verify_callback(signed_over(seen), body, "https://comms.test:99999/x")  # no crash


def test_a_non_ascii_signature_header_is_refused_not_an_error(tmp_path: Path) -> None:
    """Starlette decodes header values as latin-1: compare_digest on str would raise TypeError
    for "é" (a 500), where a bad signature must simply not verify (a 401)."""
    provider = TwilioProvider.from_config(
        TwilioConfig(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=FROM),
        ProviderContext(http=None, outbox_dir=tmp_path),
    )
    params = status_callback("SM1", "+14155550100", "delivered")
    good = twilio_sign(AUTH_TOKEN, STATUS_URL, params)
    body = urlencode(params).encode()
    assert provider.verify_callback({"x-twilio-signature": good}, body, STATUS_URL)
    for given in ("é" + good[1:], "é", good + "\u20ac"):
        assert provider.verify_callback({"x-twilio-signature": given}, body, STATUS_URL) is False


async def test_every_call_throttled_is_transient_with_the_wait(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    messages = [sms(i) for i in range(4)]
    vendor.per_number = {m.to: (429, "20429") for m in messages}
    with pytest.raises(TransientProviderError) as caught:
        await make(vendor, http, tmp_path, concurrency=1).send(messages)
    assert caught.value.retry_after == 7.0
    assert vendor.requests == 1  # throttled: no further calls were started


async def test_throttling_midway_leaves_the_rest_for_later(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    messages = [sms(i) for i in range(4)]
    vendor.per_number = {messages[1].to: (429, "20429")}
    results = await make(vendor, http, tmp_path, concurrency=1).send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.RETRY, Outcome.RETRY, Outcome.RETRY]
    assert "not attempted" in (results[3].error or "")
    assert list(vendor.delivered) == [messages[0].to]


async def test_calls_run_concurrently_within_the_bound(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    vendor.latency = 0.05
    messages = [sms(i) for i in range(16)]
    results = await make(vendor, http, tmp_path, concurrency=4).send(messages)
    assert all(r.outcome is Outcome.SENT for r in results)
    assert 1 < vendor.max_in_flight <= 4
    assert len({r.provider_message_id for r in results}) == 16


async def test_batches_in_flight_share_the_accounts_bound(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The dispatcher keeps several batches in flight; together they keep the account's bound."""
    vendor.latency = 0.05
    provider = make(vendor, http, tmp_path, concurrency=3)
    batches = [[sms(b * 10 + i) for i in range(6)] for b in range(4)]
    answers = await asyncio.gather(*(provider.send(batch) for batch in batches))
    assert all(r.outcome is Outcome.SENT for results in answers for r in results)
    assert vendor.max_in_flight == 3


async def test_a_code_does_not_queue_behind_the_bulk_requests_in_flight(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Codes have lanes of their own: sixty bulk requests queued for four lanes (~0.75 s of work)
    do not hold back a verification code sent meanwhile."""
    vendor.latency = 0.05
    provider = make(vendor, http, tmp_path, concurrency=4)
    bulk = [asyncio.create_task(provider.send([sms(b * 20 + i) for i in range(20)])) for b in range(3)]
    await asyncio.sleep(0.06)
    code = dataclasses.replace(sms(99, to="+14155550199"), category="verification")
    [result] = await provider.send([code])
    assert result.outcome is Outcome.SENT
    assert not all(task.done() for task in bulk)  # the bulk was still in flight
    await asyncio.gather(*bulk)


async def test_receipts_from_the_documented_callbacks(tmp_path: Path) -> None:
    provider = TwilioProvider.from_config(
        TwilioConfig(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=FROM),
        ProviderContext(http=None, outbox_dir=tmp_path),
    )
    delivered = provider.parse_receipts((HERE / "status_delivered.form").read_bytes())
    assert [(e.status, e.provider_message_id, e.message_id) for e in delivered] == [
        ("delivered", "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", None)
    ]
    undelivered = provider.parse_receipts((HERE / "status_undelivered.form").read_bytes())
    assert undelivered[0].status == "undelivered" and undelivered[0].bounce == "soft"
    assert "30003" in (undelivered[0].error or "") and "unreachable" in (undelivered[0].error or "")
    assert undelivered[0].event_key != delivered[0].event_key
    assert provider.parse_receipts((HERE / "status_sent.form").read_bytes()) == []  # progress only
    dead = provider.parse_receipts(
        urlencode(status_callback("SM1", "+14155550100", "failed", "30005")).encode()
    )
    assert dead[0].status == "undelivered" and dead[0].bounce == "hard"
    stopped = provider.parse_receipts(
        urlencode(status_callback("SM2", "+14155550100", "failed", "21610")).encode()
    )
    assert stopped[0].status == "undelivered" and stopped[0].bounce == "opted_out"  # suppressed by receipts
    with pytest.raises(ValueError):
        provider.parse_receipts(b"MessageStatus=delivered")


async def test_inbound_messages_and_the_twiml_answer(tmp_path: Path) -> None:
    provider = TwilioProvider.from_config(
        TwilioConfig(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=FROM),
        ProviderContext(http=None, outbox_dir=tmp_path),
    )
    body = (HERE / "inbound.form").read_bytes()
    [inbound] = provider.parse_inbound(body)
    assert inbound.event_key == "SMbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    assert (inbound.from_number, inbound.to, inbound.text) == ("+14155550100", "+14155552345", "STOP please")
    url = "https://comms.test/webhooks/twilio/acc_1/inbound"
    signed = {"x-twilio-signature": twilio_sign(AUTH_TOKEN, url, form(body))}
    assert provider.verify_callback(signed, body, url)
    assert provider.callback_answer == (
        200,
        "text/xml",
        b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>',
    )


async def test_reconcile_finds_what_arrived_without_an_answer(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = make(vendor, http, tmp_path)
    lost = sms(0, log_id=new_id("log"))
    vendor.mode, vendor.hang_seconds = "hang", 5.0
    assert (await provider.send([lost]))[0].outcome is Outcome.UNKNOWN
    vendor.mode = "ok"
    never = sms(1, log_id=new_id("log"))  # never reached Twilio
    vendor.final_status["+14155550002"] = "undelivered"
    failed = sms(2, log_id=new_id("log"))
    await provider.send([failed])
    same_number_other_text = sms(0, text="Another text entirely", log_id=new_id("log"))
    found, missing, gone, other = await provider.reconcile([lost, never, failed, same_number_other_text])
    assert found.outcome is Outcome.SENT and found.provider_message_id in vendor.messages
    assert vendor.messages[found.provider_message_id or ""]["body"] == lost.text
    assert missing.outcome is Outcome.UNKNOWN and missing.error
    assert gone.outcome is Outcome.FAILED and "30003" in (gone.error or "")
    assert other.outcome is Outcome.UNKNOWN  # same number, different body: not ours
    assert vendor.delivered[lost.to] == 1  # asking never sends


async def test_reconcile_follows_pages(
    vendor: TwilioVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = make(vendor, http, tmp_path)
    first = sms(0, text="the first one", log_id=new_id("log"))
    await provider.send([first])
    await provider.send([sms(0, text=f"later {i}") for i in range(4)])
    vendor.max_page_size = 2  # newest first: the first one is on the third page
    [result] = await provider.reconcile([first])
    assert result.outcome is Outcome.SENT
    assert vendor.messages[result.provider_message_id or ""]["body"] == "the first one"


# ---- end to end through the API ----------------------------------------------------------------


async def test_bulk_through_twilio_then_a_signed_receipt(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    vendor = TwilioVendor()
    await vendor.start()
    try:
        h = live_tenant.headers()
        created = await live_service.client.post(
            "/communication/providers",
            json={
                "channel": "sms",
                "provider": "twilio",
                "name": "twilio",
                "priority": 1,
                "config": {
                    "account_sid": ACCOUNT_SID,
                    "auth_token": AUTH_TOKEN,
                    "from_number": FROM,
                    "endpoint": vendor.url,
                },
            },
            headers=h,
        )
        assert created.status_code == 201, created.text
        account = created.json()["data"]
        assert account["secret_fields_set"] == ["auth_token"] and "auth_token" not in account["config"]
        answer = await live_service.client.post(
            "/communication/bulk",
            json={
                "channel": "sms",
                "category": "transactional",
                "content": "Parcel {{ p }} is ready",
                "variables": {"p": "PX"},
                "recipients": [f"138001{i:05d}" for i in range(3)],
            },
            headers=h,
        )
        assert answer.status_code == 202, answer.text
        batch = answer.json()["batch_id"]

        async def sent() -> bool:
            return await statuses(live_service, batch) == {"sent": 3}

        await wait_until(sent)
        assert len(vendor.delivered) == 3 and vendor.problems == [] and vendor.bad_signatures == 0
        status_url = account["callback_urls"]["status"]
        assert {f["StatusCallback"] for f in vendor.forms} == {status_url}
        log_id = answer.json()["items"][0]["id"]
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        assert row is not None and row.provider_message_id in vendor.messages

        params = status_callback(row.provider_message_id, row.recipient, "delivered")
        body = urlencode(params).encode()
        path = status_url.removeprefix("https://comms.test")
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        forged = await live_service.client.post(
            path,
            content=body,
            headers={**form_type, "X-Twilio-Signature": twilio_sign("0" * 32, status_url, params)},
        )
        assert forged.status_code == 401
        good = await live_service.client.post(
            path,
            content=body,
            headers={**form_type, "X-Twilio-Signature": twilio_sign(AUTH_TOKEN, status_url, params)},
        )
        assert good.status_code == 200 and good.headers["content-type"].startswith("text/xml")
        assert good.content == b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
        async with live_service.db.read() as session:
            events = (await session.scalars(select(ReceiptEvent))).all()
            item = await session.get(Message, log_id)
        assert len(events) == 1  # the forged one changed nothing
        # Twilio receipts name the message by its sid only (MessageSid): applying one needs the
        # receipt service to find the message by (account, provider_message_id).
        assert item is not None and item.status == "delivered", f"receipt outcome: {events[0].outcome!r}"
    finally:
        await vendor.stop()
