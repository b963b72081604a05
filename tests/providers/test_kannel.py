"""The ``kannel`` provider held to the provider contract, against a local smsbox look-alike.

:class:`KannelVendor` speaks smsbox's ``/cgi-bin/sendsms`` the way Kannel 1.4.5 does
(gw/smsbox.c): the POST form (``text/plain`` body, ``X-Kannel-*`` headers) and the GET form (CGI
query, where ``+`` is a space). It checks the sendsms-user's username and password, reads several
numbers in ``to`` as a multi-cast, refuses what smsbox refuses with smsbox's words and status codes,
and keeps each request's dlr-url. A delivery report is then that dlr-url with the ``%`` escapes
substituted as Kannel does, so the callback tests run on the URL the provider really built.
tests/e2e/test_kannel_real.py runs the same provider against the real Kannel.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlsplit

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from comms.errors import PermanentProviderError, TransientProviderError
from comms.models import Message
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.sms.kannel import DLR_TYPES, KannelConfig, KannelProvider
from tests.conftest import Service, TenantKeys, statuses, wait_until
from tests.providers.contract import FIXTURES, Callback, FakeVendor, ProviderContract

USERNAME = "comms"
PASSWORD = "kannel-pass-1"
TOKEN = "kannel-callback-token-0123456789"
STATUS_URL = "https://comms.test/webhooks/kannel/acc_test/status"
KANNEL = FIXTURES / "kannel"
SENDSMS_CHARS = set("0123456789 +-")  # smsbox's default sendsms-chars
GSM_TEXT = "Prix 5£ é € [ok]"
UNICODE_TEXT = "验证码 739154 😀"


def fixture(name: str) -> bytes:
    return (KANNEL / name).read_bytes()


def kannel_query(raw: str) -> dict[str, list[str]]:
    """A query as Kannel's CGI parser reads it (``+`` is a space, repeated names kept)."""
    out: dict[str, list[str]] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        out.setdefault(key, []).append(value)
    return out


def substitute(dlr_url: str, kind: int, answer: str = "", smsc: str = "smsc1", ts: int = 1795717008) -> str:
    """The URL Kannel calls for a delivery report of type ``kind``: the escapes our dlr-url
    uses, substituted the way smsbox does (``%A`` url-encoded, the others plain)."""
    values = {
        "d": str(kind),
        "i": smsc,
        "T": str(ts),
        "A": quote_plus(answer),
        "p": quote_plus("+8613800000001"),
    }
    return re.sub(r"%([A-Za-z])", lambda m: values.get(m.group(1), m.group(0)), dlr_url)


# smsbox's POST form: which X-Kannel-* header carries which sendsms parameter.
POST_HEADERS = {
    "X-Kannel-Username": "username",
    "X-Kannel-Password": "password",
    "X-Kannel-To": "to",
    "X-Kannel-From": "from",
    "X-Kannel-Coding": "coding",
    "X-Kannel-SMSC": "smsc",
    "X-Kannel-DLR-Mask": "dlr-mask",
    "X-Kannel-DLR-URL": "dlr-url",
}


class KannelVendor(FakeVendor):
    """smsbox's sendsms interface, with a sendsms-user ``comms``/``kannel-pass-1`` and no
    default or global sender (so ``from`` is required, as on a bare smsbox)."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, str]] = []  # each accepted request's parameters
        self.answers: dict[str, tuple[int, str]] = {}  # recipient -> (status, body) to answer
        self.in_flight = 0
        self.most_in_flight = 0
        self.latency = 0.0
        self.token = TOKEN  # the account's callback_token, which each dlr-url must carry

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/cgi-bin/sendsms", self.sendsms)

    async def sendsms(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)  # the vendor's own response time
            await self.pause_if_hanging(request)
            if request.method == "GET":
                query = kannel_query(request.rel_url.raw_query_string)
            elif request.method == "POST":
                if request.content_type not in ("text/plain", "application/octet-stream"):
                    return web.Response(status=400, text="Invalid content-type")
                # smsbox's POST form: parameters in X-Kannel-* headers, the text is the body
                query = {
                    name: [request.headers[header]]
                    for header, name in POST_HEADERS.items()
                    if header in request.headers
                }
                if request.charset != "UTF-8":
                    self.refuse(f"body charset {request.charset!r}")
                query["text"] = [(await request.read()).decode(request.charset or "latin-1")]
                query["charset"] = [request.charset or ""]
            else:
                return web.Response(status=405)
            answer = self._answer(query, request.method)
            if answer.status == 0 and request.transport is not None:  # scripted: drop the connection
                request.transport.abort()
            return answer
        finally:
            self.in_flight -= 1

    def _answer(self, query: dict[str, list[str]], method: str) -> web.Response:
        def one(name: str) -> str | None:
            values = query.get(name) or query.get({"username": "user", "password": "pass"}.get(name, ""), [])
            if len(values) > 1:
                self.refuse(f"{name} given {len(values)} times")
            return values[0] if values else None

        if one("username") != USERNAME or one("password") != PASSWORD:
            self.bad_signatures += 1
            return web.Response(status=403, text="Authorization failed for sendsms")
        if self.mode == "fail":
            return web.Response(status=503, text="Temporal failure, try again later.")
        to = one("to")
        if to is None:
            return web.Response(status=400, text="Missing receiver number, rejected")
        if not to:
            return web.Response(status=400, text="Empty receiver number not allowed, rejected")
        receivers = to.split()
        if len(receivers) != 1:
            self.refuse(f"multi-cast to {receivers!r} (an unencoded '+' reads as a space)")
        if any(set(r) - SENDSMS_CHARS for r in receivers):
            return web.Response(
                status=400, text="Number(s) has/have been denied by white- and/or black-lists."
            )
        if not one("from"):
            return web.Response(status=400, text="Sender missing and no global set, rejected")
        if one("text") is None:
            self.refuse("no text")
        if one("charset") != "UTF-8" or one("coding") not in ("0", "2"):
            return web.Response(status=400, text="Coding field misformed, rejected")
        dlr_url, dlr_mask = one("dlr-url"), one("dlr-mask")
        if dlr_url is not None:
            if not dlr_url.lower().startswith(("http://", "https://")):
                return web.Response(status=400, text="DLR-URL field misformed, rejected")
            if f"token={self.token}" not in dlr_url or "%d" not in dlr_url:
                self.refuse(f"dlr-url without the token or the type escape: {dlr_url}")
            if dlr_mask is None or not dlr_mask.isdigit() or not 0 <= int(dlr_mask) <= 63:
                return web.Response(status=400, text="DLR-Mask field misformed, rejected")
        if self.mode == "reject":
            return web.Response(status=403, text="Not routable. Do not try again.")
        scripted = self.answers.get(receivers[0])
        if scripted is not None and scripted[0] == 0:
            self.accept(receivers[0])  # queued, but the answer is lost on the way
            return web.Response(status=0)
        if scripted is not None and scripted[0] >= 300:
            return web.Response(status=scripted[0], text=scripted[1])
        self.accept(receivers[0])
        self.received.append({"method": method} | {k: v[0] for k, v in query.items()})
        return web.Response(status=202, text=scripted[1] if scripted else "0: Accepted for delivery")

    def request_for(self, recipient: str) -> dict[str, str]:
        return next(r for r in self.received if r["to"] == recipient)


def make_config(vendor: FakeVendor, **extra: Any) -> KannelConfig:
    values: dict[str, Any] = {
        "sendsms_url": f"{vendor.url}/cgi-bin/sendsms",
        "username": USERNAME,
        "password": PASSWORD,
        "callback_token": TOKEN,
        "timeout_seconds": 1.5,
    }
    values.update(extra)
    return KannelConfig(**values)


class TestKannelContract(ProviderContract):
    provider_name = "kannel"
    status_url = STATUS_URL

    def make_vendor(self) -> FakeVendor:
        return KannelVendor()

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        return KannelProvider.from_config(make_config(vendor), context)

    def recipient_key(self, message: OutboundMessage) -> str:
        return message.to  # to_format "plus", the default

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        assert isinstance(provider, KannelProvider)
        answer = "" if delivered else "id:0a1b2c3d sub:001 dlvrd:000 stat:UNDELIV err:001"
        url = substitute(provider.dlr_url(message.id), 1 if delivered else 2, answer)
        return Callback({}, urlsplit(url).query.encode(), url)

    def forge(self, callback: Callback) -> Callback:
        """A report from someone who does not know the token (the rest is all guessable)."""
        forged = callback.body.replace(f"token={TOKEN}".encode(), b"token=kannel-callback-token-guessed00")
        assert forged != callback.body
        return Callback(callback.headers, forged, callback.url)


# -------------------------------------------------------------------------------------------------
# vendor-specific behaviour


@pytest.fixture
async def vendor() -> AsyncIterator[KannelVendor]:
    async with KannelVendor() as server:
        yield server


def provider_for(
    vendor: KannelVendor, http: aiohttp.ClientSession | None, tmp_path: Path, **extra: Any
) -> KannelProvider:
    status_url = extra.pop("status_url", STATUS_URL)
    context = ProviderContext(http=http, outbox_dir=tmp_path, status_url=status_url)
    provider = KannelProvider.from_config(make_config(vendor, **extra), context)
    assert isinstance(provider, KannelProvider)
    return provider


def sms(
    i: int, text: str = "Your code is 739154", sender: str | None = "ACME", category: str = "verification"
) -> OutboundMessage:
    return OutboundMessage(
        id=f"log_{i:032x}",
        tenant_id="ten_test",
        channel="sms",
        category=category,
        to=f"+86138{i:08d}",
        text=text,
        sender=sender,
    )


async def test_the_request_carries_what_smsbox_needs(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = provider_for(vendor, http, tmp_path, smsc="smpp-cn", dlr_mask=3)
    [result] = await provider.send([sms(1)])
    assert result.outcome is Outcome.SENT and result.response == "HTTP 202: 0: Accepted for delivery"
    request = vendor.request_for("+8613800000001")
    assert request["method"] == "POST"  # never a GET, which HTTP clients may re-send on their own
    assert request["from"] == "ACME" and request["text"] == "Your code is 739154"
    assert request["smsc"] == "smpp-cn" and request["dlr-mask"] == "3"
    assert request["charset"] == "UTF-8" and request["coding"] == "0"
    # The dlr-url arrives decoded once, with Kannel's escapes intact for Kannel to fill in.
    assert request["dlr-url"] == (
        f"{STATUS_URL}?token={TOKEN}&id=log_{1:032x}&type=%d&smsc=%i&ts=%T&answer=%A&to=%p"
    )
    assert vendor.problems == []


@pytest.mark.parametrize(
    ("to_format", "expected"),
    [("digits", "8613800000002"), ("plus", "+8613800000002"), ("00", "008613800000002")],
)
async def test_recipient_formats(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path, to_format: str, expected: str
) -> None:
    provider = provider_for(vendor, http, tmp_path, to_format=to_format)
    [result] = await provider.send([sms(2)])
    assert result.outcome is Outcome.SENT
    assert vendor.delivered == {expected: 1}  # a "+" arrives as "+", not as a space (a multi-cast)
    assert vendor.problems == []


@pytest.mark.parametrize(("text", "coding"), [(GSM_TEXT, "0"), (UNICODE_TEXT, "2"), ("a" * 400, "0")])
async def test_text_goes_as_utf8_with_the_coding_of_its_alphabet(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path, text: str, coding: str
) -> None:
    provider = provider_for(vendor, http, tmp_path)
    [result] = await provider.send([sms(3, text)])
    assert result.outcome is Outcome.SENT
    request = vendor.request_for("+8613800000003")
    assert request["text"] == text and request["coding"] == coding and request["charset"] == "UTF-8"


async def test_sender_falls_back_to_the_account_default(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    bare = provider_for(vendor, http, tmp_path)
    [refused] = await bare.send([sms(4, sender=None)])
    assert refused.outcome is Outcome.FAILED
    assert refused.error == "HTTP 400: Sender missing and no global set, rejected"
    provider = provider_for(vendor, http, tmp_path, from_number="10690000")
    [result] = await provider.send([sms(4, sender=None)])
    assert result.outcome is Outcome.SENT and vendor.request_for("+8613800000004")["from"] == "10690000"


async def test_the_contracts_from_is_the_sender_and_from_number_still_reads(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The contract names the account's sender ``from`` (sendsms's own name); accounts stored
    with ``from_number``, its earlier name, keep loading. Either way it goes as sendsms ``from``."""
    base = {"sendsms_url": f"{vendor.url}/cgi-bin/sendsms", "username": USERNAME, "password": PASSWORD}
    given = KannelConfig.model_validate({**base, "callback_token": TOKEN, "from": "10690001"})
    legacy = KannelConfig.model_validate({**base, "callback_token": TOKEN, "from_number": "10690002"})
    assert (given.from_number, legacy.from_number) == ("10690001", "10690002")
    # Stored (and shown) under the contract's name; what is stored loads back unchanged.
    dumped = given.model_dump(mode="json")
    assert dumped["from"] == "10690001" and "from_number" not in dumped
    assert KannelConfig.model_validate(dumped) == given
    with pytest.raises(ValidationError):  # one sender, not two
        KannelConfig.model_validate({**base, "callback_token": TOKEN, "from": "1", "from_number": "2"})
    with pytest.raises(ValidationError):
        KannelConfig.model_validate({**base, "callback_token": TOKEN, "from": "1069\n"})
    for i, config in ((6, given), (7, legacy)):
        context = ProviderContext(http=http, outbox_dir=tmp_path, status_url=STATUS_URL)
        provider = KannelProvider.from_config(config, context)
        [result] = await provider.send([sms(i, sender=None)])
        assert result.outcome is Outcome.SENT
        assert vendor.request_for(f"+86138{i:08d}")["from"] == config.from_number
    assert vendor.problems == []


async def test_without_a_status_url_no_reports_are_asked_for(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = provider_for(vendor, http, tmp_path, status_url=None)
    [result] = await provider.send([sms(5)])
    assert result.outcome is Outcome.SENT
    request = vendor.request_for("+8613800000005")
    assert "dlr-url" not in request and "dlr-mask" not in request


def _answers() -> list[dict[str, Any]]:
    return list(json.loads(fixture("sendsms_answers.json"))["answers"])


@pytest.mark.parametrize("answer", _answers(), ids=lambda a: f"{a['status']}-{a['body'][:24]}")
async def test_each_smsbox_answer_maps_to_an_outcome(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path, answer: dict[str, Any]
) -> None:
    provider = provider_for(vendor, http, tmp_path)
    messages = [sms(10), sms(11)]
    for m in messages:
        vendor.answers[m.to] = (answer["status"], answer["body"])
    expected = answer["outcome"]
    if expected in ("permanent", "transient"):
        error = PermanentProviderError if expected == "permanent" else TransientProviderError
        with pytest.raises(error) as raised:
            await provider.send(messages)
        assert answer["body"] in raised.value.message
        return
    results = await provider.send(messages)
    assert {r.outcome.value for r in results} == {expected}
    for r in results:
        assert answer["body"] in (r.response or "")
        assert (r.error is None) == (expected == "sent")


async def test_a_transient_refusal_of_some_messages_retries_only_those(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = provider_for(vendor, http, tmp_path)
    vendor.answers["+8613800000021"] = (503, "Temporal failure, try again later.")
    vendor.answers["+8613800000022"] = (403, "Not routable. Do not try again.")
    results = await provider.send([sms(20), sms(21), sms(22)])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.RETRY, Outcome.FAILED]
    assert results[1].error == "HTTP 503: Temporal failure, try again later."
    assert vendor.delivered == {"+8613800000020": 1}


async def test_after_a_refusal_the_rest_of_the_call_is_not_attempted(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = provider_for(vendor, http, tmp_path, concurrency=1)
    vendor.answers["+8613800000051"] = (503, "Temporal failure, try again later.")
    results = await provider.send([sms(50), sms(51), sms(52), sms(53)])
    assert [r.outcome for r in results] == [Outcome.SENT] + [Outcome.RETRY] * 3
    assert results[2].error == "not attempted: HTTP 503: Temporal failure, try again later."
    assert vendor.requests == 2 and vendor.delivered == {"+8613800000050": 1}


async def test_a_lost_answer_is_unknown(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = provider_for(vendor, http, tmp_path)
    vendor.answers["+8613800000061"] = (0, "")
    results = await provider.send([sms(60), sms(61)])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.UNKNOWN]
    assert (results[1].error or "").startswith("connection lost")
    assert vendor.delivered == {"+8613800000060": 1, "+8613800000061": 1}  # not re-sent by the client


async def test_why_post_a_get_whose_answer_is_lost_goes_twice(
    vendor: KannelVendor, http: aiohttp.ClientSession
) -> None:
    """smsbox's GET form through the same client: aiohttp re-sends an idempotent method once when
    the connection drops, so the SMS would go twice. The provider POSTs (above: once)."""
    vendor.answers["8613800000062"] = (0, "")
    query = {"username": USERNAME, "password": PASSWORD, "to": "8613800000062", "from": "ACME"}
    query |= {"text": "hi", "charset": "UTF-8", "coding": "0"}
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"{vendor.url}/cgi-bin/sendsms", params=query) as answer:
            await answer.read()
    assert vendor.delivered == {"8613800000062": 2}


async def test_a_sender_no_header_can_carry_fails_without_a_request(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = provider_for(vendor, http, tmp_path)
    [result] = await provider.send([sms(70, sender="ACME\r\nX-Kannel-To: 1")])
    assert result.outcome is Outcome.FAILED and "X-Kannel-From" in (result.error or "")
    assert vendor.requests == 0
    with pytest.raises(ValidationError):
        make_config(vendor, from_number="10690000\n")


async def test_bad_credentials_stop_the_batch_after_the_first_refusal(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = provider_for(vendor, http, tmp_path, password="wrong", concurrency=1)
    with pytest.raises(PermanentProviderError, match="Authorization failed for sendsms"):
        await provider.send([sms(i) for i in range(30, 40)])
    assert vendor.bad_signatures == 1 and not vendor.delivered


async def test_a_batch_goes_concurrently_within_the_bound(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    vendor.latency = 0.02
    provider = provider_for(vendor, http, tmp_path, concurrency=4)
    results = await provider.send([sms(i, category="transactional") for i in range(100, 120)])
    assert all(r.outcome is Outcome.SENT for r in results)
    assert [r.message_id for r in results] == [sms(i).id for i in range(100, 120)]
    assert vendor.most_in_flight == 4 and len(vendor.delivered) == 20
    # A batch of codes alone keeps to the bound too (the extra lanes are for codes beside bulk).
    vendor.most_in_flight = 0
    await provider.send([sms(i) for i in range(300, 308)])
    assert vendor.most_in_flight == 4


async def test_a_fault_of_ours_in_one_request_makes_only_that_message_unknown(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in one request (not a refusal by Kannel) leaves the others' results intact: they
    were sent and stay SENT; that one may have left, so it is UNKNOWN, never re-sent blindly."""
    provider = provider_for(vendor, http, tmp_path, concurrency=2)
    send_one = type(provider)._send_one
    faulty = sms(402, category="transactional")

    async def sometimes_faulty(self: Any, session: Any, message: OutboundMessage) -> Any:
        if message.id == faulty.id:
            raise KeyError("a bug")
        return await send_one(self, session, message)

    monkeypatch.setattr(type(provider), "_send_one", sometimes_faulty)
    messages = [sms(400, category="transactional"), sms(401, category="transactional"), faulty]
    results = await provider.send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT, Outcome.UNKNOWN]
    assert "KeyError" in (results[2].error or "")
    assert len(vendor.delivered) == 2


async def test_batches_in_flight_share_the_accounts_bound(
    vendor: KannelVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The dispatcher keeps several batches in flight; together they keep the account's bound."""
    vendor.latency = 0.02
    provider = provider_for(vendor, http, tmp_path, concurrency=3)
    batches = [[sms(200 + b * 10 + i, category="transactional") for i in range(5)] for b in range(4)]
    answers = await asyncio.gather(*(provider.send(batch) for batch in batches))
    assert all(r.outcome is Outcome.SENT for results in answers for r in results)
    assert vendor.most_in_flight == 3 and len(vendor.delivered) == 20


async def test_a_callback_only_instance_cannot_send(vendor: KannelVendor, tmp_path: Path) -> None:
    with pytest.raises(TransientProviderError):
        await provider_for(vendor, None, tmp_path).send([sms(1)])
    assert vendor.requests == 0


def test_config_keeps_the_password_and_token_secret_and_validates() -> None:
    assert KannelProvider.secret_fields == {"password", "callback_token"}
    base = {"sendsms_url": "http://k:13013/cgi-bin/sendsms", "username": "u", "password": "p"}
    with pytest.raises(ValidationError, match="callback_token"):
        KannelConfig(**base)
    for bad in ({"callback_token": "short"}, {"callback_token": "has spaces in it!!!!"}):
        with pytest.raises(ValidationError):
            KannelConfig(**base, **bad)
    with pytest.raises(ValidationError):
        KannelConfig(**base, callback_token=TOKEN, dlr_mask=64)
    with pytest.raises(ValidationError):
        KannelConfig(**{**base, "sendsms_url": "ftp://k/cgi-bin/sendsms"}, callback_token=TOKEN)
    assert KannelConfig(**base, callback_token=TOKEN).dlr_mask == 31


# ---- delivery reports and inbound messages, from recorded and documented callbacks ----------------


@pytest.fixture
def parser(vendor: KannelVendor, tmp_path: Path) -> KannelProvider:
    return provider_for(vendor, None, tmp_path)  # what the callback endpoint builds: no HTTP session


@pytest.mark.parametrize(
    ("name", "status", "error"),
    [
        ("dlr_delivered.query", "delivered", None),
        (
            "dlr_undelivered.query",
            "undelivered",
            "kannel DLR 2 (non-delivered to phone): id:0a1b2c3d sub:001",
        ),
        ("dlr_smsc_rejected.query", "undelivered", "kannel DLR 16 (non-delivered to SMSC): NACK/0x0000000b/"),
        ("dlr_smsc_accepted.query", None, None),
        ("dlr_buffered.query", None, None),
    ],
)
def test_recorded_reports_map_by_type(
    parser: KannelProvider, name: str, status: str | None, error: str | None
) -> None:
    body = fixture(name)
    assert parser.verify_callback({}, body, f"{STATUS_URL}?{body.decode()}")
    events = parser.parse_receipts(body)
    query = dict(parse_qsl(body.decode()))
    if status is None:
        assert events == []  # an intermediate state: nothing to record
        assert DLR_TYPES[int(query["type"])][1] is None
        return
    [event] = events
    assert event.status == status and event.message_id == query["id"]
    # The report's time is part of the key: a batch retry's report of the same type is new.
    assert event.event_key == f"{query['id']}:{query['type']}:{query['ts']}"
    assert (event.error is None) if error is None else (event.error or "").startswith(error)
    again = parser.parse_receipts(body.replace(f"ts={query['ts']}".encode(), b"ts=1764201600"))
    assert again[0].event_key != event.event_key


def test_unreadable_reports_are_refused(parser: KannelProvider) -> None:
    with pytest.raises(ValueError, match="no id"):
        parser.parse_receipts(f"token={TOKEN}&type=1".encode())
    with pytest.raises(ValueError, match="not a number"):
        parser.parse_receipts(f"token={TOKEN}&id=log_1&type=%d".encode())
    assert parser.parse_receipts(f"token={TOKEN}&id=log_1&type=64".encode()) == []  # unknown: ignored


def test_callbacks_without_the_token_are_refused(parser: KannelProvider) -> None:
    good = fixture("dlr_delivered.query")
    assert parser.verify_callback({}, good, "")
    assert not parser.verify_callback({}, good.replace(f"token={TOKEN}&".encode(), b""), "")
    assert not parser.verify_callback({}, good.replace(TOKEN.encode(), TOKEN[:-1].encode()), "")
    assert not parser.verify_callback({}, b"", "")


def test_recorded_inbound_messages_parse(parser: KannelProvider) -> None:
    stop = fixture("inbound_stop.query")
    assert parser.verify_callback({}, stop, "")
    [message] = parser.parse_inbound(stop)
    assert (message.from_number, message.to, message.text) == ("8613800000009", "10086", "STOP please")
    assert message.event_key == "mo:5e69b209-1659-4d52-a301-24b848838fb8"
    [utf8] = parser.parse_inbound(fixture("inbound_utf8.query"))
    assert utf8.from_number == "+8613800000009" and utf8.text == "café €"  # "00" is international


def test_inbound_without_an_id_gets_a_stable_key(parser: KannelProvider) -> None:
    first = f"token={TOKEN}&from=%2B8613800000009&to=10086&text=STOP&ts=2026-11-26+18:16:56".encode()
    later = first.replace(b"18:16:56", b"18:20:00")
    [a], [b], [c] = parser.parse_inbound(first), parser.parse_inbound(first), parser.parse_inbound(later)
    assert a.from_number == "+8613800000009" and a.event_key == b.event_key != c.event_key
    with pytest.raises(ValueError, match="no sender"):
        parser.parse_inbound(f"token={TOKEN}&text=hi".encode())


# ---- end to end through the API ----------------------------------------------------------------


async def test_bulk_through_the_api_and_reports_back_through_the_callback_url(
    live_service: Service, live_tenant: TenantKeys, vendor: KannelVendor
) -> None:
    h = live_tenant.headers()
    created = await live_service.client.post(
        "/communication/providers",
        json={
            "channel": "sms",
            "provider": "kannel",
            "name": "kannel",
            "priority": 1,
            "config": {
                "sendsms_url": f"{vendor.url}/cgi-bin/sendsms",
                "username": USERNAME,
                "password": PASSWORD,
                "callback_token": TOKEN,
            },
        },
        headers=h,
    )
    assert created.status_code == 201, created.text
    account = created.json()["data"]
    assert set(account["secret_fields_set"]) == {"password", "callback_token"}
    assert PASSWORD not in created.text and "callback_token" not in account["config"]
    # The callback URLs an admin is shown carry the token: what Kannel's get-url must call.
    base = f"https://comms.test/webhooks/kannel/{account['id']}"
    assert account["callback_urls"] == {
        "status": f"{base}/status?token={TOKEN}",
        "inbound": f"{base}/inbound?token={TOKEN}",
    }
    status_url = f"{base}/status"

    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "category": "transactional",
            "content": "Parcel {{ p }} is on its way",
            "variables": {"p": "PX-1"},
            "recipients": [f"138001{i:05d}" for i in range(5)],
        },
        headers=h,
    )
    assert answer.status_code == 202, answer.text
    batch = answer.json()["batch_id"]
    ids = [item["id"] for item in answer.json()["items"]]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 5}

    await wait_until(sent)
    assert len(vendor.delivered) == 5 and set(vendor.delivered.values()) == {1} and vendor.problems == []
    first = vendor.request_for("+8613800100000")
    assert first["from"] == "ACME" and first["text"] == "Parcel PX-1 is on its way"

    async def report(recipient: str, kind: int, answer_text: str = "") -> int:
        url = substitute(vendor.request_for(recipient)["dlr-url"], kind, answer_text)
        assert url.startswith(status_url + "?")
        parts = urlsplit(url)
        reply = await live_service.client.get(f"{parts.path}?{parts.query}")
        if reply.status_code == 200:
            assert reply.text == "OK" and reply.headers["content-type"].startswith("text/plain")
        return reply.status_code

    async def row_status(log_id: str) -> str:
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        assert row is not None
        return row.status

    by_recipient = {f"+86138001{i:05d}": ids[i] for i in range(5)}
    assert await report("+8613800100000", 8, "ACK/") == 200  # reached the SMSC: no change
    assert await row_status(by_recipient["+8613800100000"]) == "sent"
    assert await report("+8613800100000", 1) == 200
    assert await report("+8613800100000", 1) == 200  # Kannel retried: applied once
    assert await report("+8613800100001", 2, "stat:UNDELIV err:001") == 200

    async def reported() -> bool:
        return await statuses(live_service, batch) == {"delivered": 1, "undelivered": 1, "sent": 3}

    await wait_until(reported)
    log = (
        await live_service.client.get(f"/communication/logs/{by_recipient['+8613800100001']}", headers=h)
    ).json()
    assert "stat:UNDELIV err:001" in (log["data"]["error"] or "")

    # Without the token Kannel's URL is refused and nothing changes.
    forged = substitute(vendor.request_for("+8613800100002")["dlr-url"], 1).replace(TOKEN, "x" * 32)
    parts = urlsplit(forged)
    assert (await live_service.client.get(f"{parts.path}?{parts.query}")).status_code == 401
    assert await row_status(by_recipient["+8613800100002"]) == "sent"

    # An inbound STOP through the sms-service get-url: answered "OK", confirmed by SMS via Kannel.
    inbound = account["callback_urls"]["inbound"].removeprefix("https://comms.test")
    query = "from=%2B8613800100003&to=10086&text=STOP&id=0f1e2d3c&ts=2026-11-26+18:16:56"
    reply = await live_service.client.get(f"{inbound}&{query}")
    assert reply.status_code == 200 and reply.text == "OK"

    async def confirmed() -> bool:
        return vendor.delivered["+8613800100003"] == 2

    await wait_until(confirmed)
    assert "unsubscribed" in vendor.received[-1]["text"]
