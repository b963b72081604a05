"""Tencent Cloud SMS held to the provider contract, plus Tencent's own rules: TC3-HMAC-SHA256
(checked against the published example and recomputed by the fake), template parameters,
grouping into calls of up to 200 numbers, error codes, token-checked callbacks, replies."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from comms.errors import PermanentProviderError, TransientProviderError
from comms.models import Message, ReceiptEvent
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.sms.tencent import (
    TencentConfig,
    TencentProvider,
    authorization,
    canonical_request,
    marketing_wait,
    string_to_sign,
    tc3_signature,
)
from tests.conftest import Service, TenantKeys, statuses, wait_until
from tests.providers.contract import FIXTURES, Callback, FakeVendor, ProviderContract

HERE = FIXTURES / "tencent"
SECRET_ID = "AKIDcommstest0123456789abcdefEXAMPLE"
SECRET_KEY = "commstestsecretkey0123456789abcd"
SDK_APP_ID = "1400006666"
TOKEN = "cb-token-0123456789abcdef"
SIGN = "Acme"
STATUS_URL = "https://comms.test/webhooks/tencent/acc_test/status"
TEMPLATE = {"tencent": {"template_id": "1110", "params": ["code"]}}


def tc3_expected(
    secret_key: str, headers: Mapping[str, str], signed: str, body: bytes, ts: str, scope: str
) -> str:
    """The vendor side of TC3-HMAC-SHA256, written from Tencent's published steps."""
    day, service, _ = scope.split("/")
    canonical_headers = "".join(f"{n}:{headers.get(n, '').strip().lower()}\n" for n in signed.split(";"))
    canonical = f"POST\n/\n\n{canonical_headers}\n{signed}\n{hashlib.sha256(body).hexdigest()}"
    to_sign = f"TC3-HMAC-SHA256\n{ts}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("TC3" + secret_key).encode()
    for part in (day, service, "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


AUTH = re.compile(
    r"TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<scope>\d{4}-\d{2}-\d{2}/[a-z]+/tc3_request), "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})"
)
MESSAGES = {
    "Ok": "send success",
    "InvalidParameterValue.IncorrectPhoneNumber": "incorrect phone number format",
    "FailedOperation.PhoneNumberInBlacklist": "the mobile number is in the blocklist",
    "LimitExceeded.PhoneNumberThirtySecondLimit": "sent too often to this number within 30 seconds",
    "LimitExceeded.PhoneNumberDailyLimit": "daily limit for this number reached",
    "FailedOperation.InsufficientBalanceInSmsPackage": "insufficient balance in the SMS package",
    "UnauthorizedOperation.ServiceSuspendDueToArrears": "service suspended due to arrears",
    "UnauthorizedOperation.RequestIpNotInWhitelist": "the request IP is not in the whitelist",
    "UnauthorizedOperation.IndividualUserMarketingSmsPermissionDeny": (
        "individual users cannot send marketing SMS"
    ),
    "FailedOperation.MarketingSendTimeConstraint": "marketing SMS may only be sent from 8:00 to 22:00",
}
# Refusals of the whole account that Tencent reports per number in SendStatusSet.
ACCOUNT_CODES = [
    "FailedOperation.InsufficientBalanceInSmsPackage",
    "UnauthorizedOperation.ServiceSuspendDueToArrears",
    "UnauthorizedOperation.RequestIpNotInWhitelist",
    "UnauthorizedOperation.IndividualUserMarketingSmsPermissionDeny",
]
MARKETING_HOURS = "FailedOperation.MarketingSendTimeConstraint"


class TencentVendor(FakeVendor):
    """sms.tencentcloudapi.com: recomputes the TC3 signature, checks the common headers and
    SendSms's rules (app id, approved template and its parameter count, signature for mainland
    numbers, 1-200 numbers, never mainland and international together), answers in Tencent's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.templates = {"1110": 1, "2220": 2, "3330": 1}  # approved template id -> parameter count
        self.calls: list[dict[str, Any]] = []
        self.per_number: dict[str, str] = {}  # number -> Code
        self.call_error: str | None = None  # force a whole-call Response.Error
        self.fail_style = "error"  # "fail" mode: an InternalError answer, or "503"
        self.canned: dict[str, Any] | None = None  # answer this body verbatim
        self.serials: dict[str, str] = {}  # SerialNo -> number

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/", self.handle)

    @staticmethod
    def error(code: str, message: str = "") -> web.Response:
        body = {
            "Response": {"Error": {"Code": code, "Message": message or code}, "RequestId": str(uuid.uuid4())}
        }
        return web.json_response(body)

    def signature_problem(self, request: web.Request, body: bytes) -> str | None:
        match = AUTH.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return "AuthFailure.InvalidAuthorization"
        if match["id"] != SECRET_ID:
            return "AuthFailure.SecretIdNotFound"
        ts = request.headers.get("X-TC-Timestamp", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return "AuthFailure.SignatureExpire"
        day = f"{datetime.fromtimestamp(int(ts), UTC):%Y-%m-%d}"
        signed = match["signed"].split(";")
        if (
            not match["scope"].startswith(f"{day}/sms/")
            or "content-type" not in signed
            or "host" not in signed
        ):
            return "AuthFailure.SignatureFailure"
        headers = {k.lower(): v for k, v in request.headers.items()}
        expected = tc3_expected(SECRET_KEY, headers, match["signed"], body, ts, match["scope"])
        return None if hmac.compare_digest(expected, match["sig"]) else "AuthFailure.SignatureFailure"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        for header, wanted in (("X-TC-Action", "SendSms"), ("X-TC-Version", "2021-01-11")):
            if request.headers.get(header) != wanted:
                self.refuse(f"{header}: {request.headers.get(header)!r}")
                return self.error("InvalidAction")
        if not request.headers.get("X-TC-Region"):
            self.refuse("no X-TC-Region")
            return self.error("MissingParameter")
        problem = self.signature_problem(request, body)
        if problem:
            self.bad_signatures += 1
            return self.error(problem, "The provided credentials could not be validated.")
        if self.mode == "fail":
            self.requests += 1
            if self.fail_style == "503":
                return web.Response(status=503, text="Service Unavailable")
            return self.error("InternalError", "An internal error has occurred. Retry your request.")
        payload = json.loads(body)
        self.calls.append(payload)
        if self.call_error:
            self.requests += 1
            return self.error(self.call_error)
        numbers: list[str] = payload.get("PhoneNumberSet") or []
        template, params = payload.get("TemplateId"), payload.get("TemplateParamSet") or []
        if payload.get("SmsSdkAppId") != SDK_APP_ID:
            return self.error("InvalidParameterValue.SdkAppIdNotExist")
        if not numbers:
            self.refuse("empty PhoneNumberSet")
            return self.error("MissingParameter.EmptyPhoneNumberSet")
        if len(numbers) > 200:
            self.refuse(f"{len(numbers)} numbers in one call")
            return self.error("LimitExceeded.PhoneNumberCountLimit")
        if len(set(numbers)) != len(numbers):
            self.refuse("the same number twice in one call")
        if len({n.startswith("+86") for n in numbers}) > 1:
            self.refuse("mainland and international numbers in one call")
            return self.error("UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber")
        if template not in self.templates:
            return self.error(
                "FailedOperation.TemplateIncorrectOrUnapproved", "template unapproved or not exist"
            )
        if not isinstance(params, list) or len(params) != self.templates[template]:
            self.refuse(f"{params!r} for template {template}")
            return self.error("FailedOperation.TemplateParamSetNotMatchApprovedTemplate")
        if numbers[0].startswith("+86") and not payload.get("SignName"):
            self.refuse("no SignName for mainland numbers")
            return self.error("FailedOperation.SignatureIncorrectOrUnapproved")
        if self.canned is not None:
            return web.json_response(self.canned)
        context = payload.get("SessionContext", "")
        answers = []
        for number in numbers:
            code = (
                "InvalidParameterValue.IncorrectPhoneNumber"
                if self.mode == "reject"
                else self.per_number.get(number, "Ok")
            )
            if code == "Ok" and not re.fullmatch(r"\+[1-9][0-9]{6,14}", number):
                self.refuse(f"{number!r} is not E.164")
                code = "InvalidParameterValue.IncorrectPhoneNumber"
            serial = ""
            if code == "Ok":
                serial = f"2433:{secrets.randbelow(10**28):028d}"
                self.serials[serial] = number
                self.accept(number)
            answers.append(
                {
                    "SerialNo": serial,
                    "PhoneNumber": number,
                    "Fee": 1 if serial else 0,
                    "SessionContext": context,
                    "Code": code,
                    "Message": MESSAGES.get(code, code),
                    "IsoCode": "CN" if number.startswith("+86") else "US",
                }
            )
        await self.pause_if_hanging(request)  # "hang": sent, but the answer never comes in time
        return web.json_response({"Response": {"SendStatusSet": answers, "RequestId": str(uuid.uuid4())}})


def config(vendor: FakeVendor, **overrides: Any) -> TencentConfig:
    values: dict[str, Any] = {
        "secret_id": SECRET_ID,
        "secret_key": SECRET_KEY,
        "sdk_app_id": SDK_APP_ID,
        "sign_name": SIGN,
        "endpoint": vendor.url,
        "callback_token": TOKEN,
        "timeout_seconds": 1.5,
    }
    values.update(overrides)
    return TencentConfig(**values)


def receipt_body(sid: str | None, to: str, delivered: bool) -> bytes:
    entry = {
        "user_receive_time": "2026-04-15 10:00:03",
        "nationcode": "86",
        "mobile": to.removeprefix("+86"),
        "report_status": "SUCCESS" if delivered else "FAIL",
        "errmsg": "DELIVRD" if delivered else "002",
        "description": "用户短信送达成功" if delivered else "关机/停机/无法接通手机/不在服务区",
        "sid": sid or "",
    }
    return json.dumps([entry], ensure_ascii=False).encode()


class TestTencentContract(ProviderContract):
    provider_name = "tencent"
    status_url = STATUS_URL

    def make_vendor(self) -> FakeVendor:
        return TencentVendor()

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        return TencentProvider.from_config(config(vendor), context)

    def provider_template(self) -> dict[str, Any] | None:
        return TEMPLATE

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        headers = {"content-type": "application/json"}
        return Callback(
            headers, receipt_body(provider_message_id, message.to, delivered), f"{STATUS_URL}?token={TOKEN}"
        )

    def forge(self, callback: Callback) -> Callback:
        """Tencent signs nothing: a forgery is a post without the account's token."""
        return Callback(callback.headers, callback.body, callback.url.replace(TOKEN, TOKEN[:-1] + "X"))


# ---- Tencent's own rules -----------------------------------------------------------------------


@pytest.fixture
async def vendor() -> AsyncIterator[TencentVendor]:
    async with TencentVendor() as server:
        yield server


def make(
    vendor: TencentVendor, http: aiohttp.ClientSession | None, tmp_path: Path, **overrides: Any
) -> Provider:
    return TencentProvider.from_config(
        config(vendor, **overrides), ProviderContext(http=http, outbox_dir=tmp_path)
    )


def sms(
    i: int,
    to: str | None = None,
    code: str = "4370",
    template: Mapping[str, Any] | None = TEMPLATE,
    **variables: str,
) -> OutboundMessage:
    return OutboundMessage(
        id=f"log_{i:032x}",
        tenant_id="ten_test",
        channel="sms",
        category="verification",
        to=to or f"+86139{i:08d}",
        text=f"Your code is {code}",
        variables={"code": code, **variables},
        provider_template=template,
    )


def test_the_published_signature_example() -> None:
    example = json.loads((HERE / "tc3_doc_example.json").read_text())
    payload = example["payload"].encode()
    canonical = canonical_request(example["host"], payload)
    assert canonical == example["canonical_request"]
    to_sign = string_to_sign(example["timestamp"], canonical, example["service"])
    assert to_sign == example["string_to_sign"]
    assert (
        tc3_signature(example["secret_key"], example["timestamp"], to_sign, example["service"])
        == example["signature"]
    )
    assert (
        authorization(
            example["secret_id"],
            example["secret_key"],
            example["host"],
            payload,
            example["timestamp"],
            example["service"],
        )
        == example["authorization"]
    )
    # the fake vendor's own verifier agrees with the published example too
    headers = {"content-type": "application/json; charset=utf-8", "host": example["host"]}
    scope = f"2019-02-25/{example['service']}/tc3_request"
    assert (
        tc3_expected(
            example["secret_key"], headers, "content-type;host", payload, str(example["timestamp"]), scope
        )
        == example["signature"]
    )


async def test_a_wrong_secret_key_is_permanent(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    provider = make(vendor, http, tmp_path, secret_key="not-the-secret-key-0000000000000")
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send([sms(1), sms(2, code="1111")])
    assert "AuthFailure.SignatureFailure" in caught.value.message
    assert vendor.bad_signatures >= 1 and not vendor.delivered


async def test_shared_values_go_in_one_call_of_up_to_200(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    messages = [sms(i) for i in range(250)]  # all "Your code is 4370": same TemplateParamSet
    results = await make(vendor, http, tmp_path).send(messages)
    assert all(r.outcome is Outcome.SENT for r in results)
    assert sorted(len(c["PhoneNumberSet"]) for c in vendor.calls) == [50, 200]
    assert {tuple(c["TemplateParamSet"]) for c in vendor.calls} == {("4370",)}
    assert {c["SignName"] for c in vendor.calls} == {SIGN} and {c["TemplateId"] for c in vendor.calls} == {
        "1110"
    }
    assert len({r.provider_message_id for r in results}) == 250
    assert all(
        vendor.serials[r.provider_message_id or ""] == m.to for r, m in zip(results, messages, strict=True)
    )
    assert vendor.problems == []


async def test_different_values_numbers_and_regions_go_in_separate_calls(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    template = {"tencent": {"template_id": "1110", "params": ["code"], "international_template_id": "3330"}}
    messages = [
        sms(1, template=template),
        sms(2, template=template),
        sms(3, code="9999", template=template),  # other values: another call
        sms(4, to="+14155550100", template=template),  # international: another call and template
        sms(1, template=template),  # the same number again: never twice in one call
    ]
    results = await make(vendor, http, tmp_path).send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT] * 5
    calls = sorted(
        (c["TemplateId"], tuple(c["TemplateParamSet"]), tuple(c["PhoneNumberSet"])) for c in vendor.calls
    )
    assert calls == [
        ("1110", ("4370",), ("+8613900000001",)),
        ("1110", ("4370",), ("+8613900000001", "+8613900000002")),
        ("1110", ("9999",), ("+8613900000003",)),
        ("3330", ("4370",), ("+14155550100",)),
    ]
    assert vendor.problems == [] and vendor.delivered["+8613900000001"] == 2


async def test_parameters_follow_the_template_order(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    template = {"tencent": {"template_id": "2220", "params": ["minutes", "code"], "sign_name": "Other"}}
    await make(vendor, http, tmp_path).send([sms(1, template=template, minutes="5")])
    [call] = vendor.calls
    assert call["TemplateParamSet"] == ["5", "4370"] and call["SignName"] == "Other"
    assert call["SessionContext"] == "log_" + "0" * 31 + "1"  # one message: our log id rides along


async def test_no_template_or_a_missing_value_fails_clearly(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    no_template = sms(1, template=None)
    no_value = sms(2, template={"tencent": {"template_id": "2220", "params": ["code", "minutes"]}})
    results = await make(vendor, http, tmp_path).send([no_template, no_value])
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.FAILED]
    assert "provider_templates.tencent.template_id" in (results[0].error or "")
    assert "'minutes'" in (results[1].error or "")
    assert vendor.calls == []


async def test_per_number_codes_map(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    messages = [sms(i) for i in range(5)]
    vendor.per_number = {
        messages[0].to: "LimitExceeded.PhoneNumberThirtySecondLimit",
        messages[1].to: "LimitExceeded.PhoneNumberDailyLimit",
        messages[2].to: "FailedOperation.PhoneNumberInBlacklist",
        messages[3].to: "InvalidParameterValue.IncorrectPhoneNumber",
    }
    results = await make(vendor, http, tmp_path).send(messages)
    assert [r.outcome for r in results] == [
        Outcome.DEFERRED,  # per-number frequency limits are flow control, not failures
        Outcome.DEFERRED,
        Outcome.FAILED,
        Outcome.FAILED,
        Outcome.SENT,
    ]
    assert results[0].retry_after == 30.0
    assert (
        results[1].retry_after is not None and 0 < results[1].retry_after <= 86400
    )  # until midnight in Beijing
    assert "PhoneNumberInBlacklist" in (results[2].error or "")
    assert "IncorrectPhoneNumber" in (results[3].error or "")
    # on the do-not-disturb list (it replied T/TD/退订 to the sign): comms suppresses it too
    assert [r.opted_out for r in results] == [False, False, True, False, False]
    assert results[4].provider_message_id in vendor.serials
    assert len(vendor.calls) == 1


async def test_the_documented_answer_maps_per_number(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    vendor.canned = json.loads((HERE / "send_response.json").read_text())
    messages = [sms(i, to=to) for i, to in enumerate(["+8618511122233", "+8618511122266", "+8618511122277"])]
    ok, limited, blocked = await make(vendor, http, tmp_path).send(messages)
    assert ok.outcome is Outcome.SENT and ok.provider_message_id == "5000:1045710669157053657849499619"
    assert "a0aabda6-cf91-4f3e-a81f-9198114a2279" in (ok.response or "")
    assert limited.outcome is Outcome.DEFERRED and limited.retry_after == 30.0
    assert blocked.outcome is Outcome.FAILED and "PhoneNumberInBlacklist" in (blocked.error or "")


async def test_numbers_written_without_a_plus_still_map(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    canned = json.loads((HERE / "send_response.json").read_text())
    for entry, written in zip(
        canned["Response"]["SendStatusSet"], ["8618511122233", "18511122266", "008618511122277"], strict=True
    ):
        entry["PhoneNumber"] = written
    vendor.canned = canned
    messages = [sms(i, to=to) for i, to in enumerate(["+8618511122233", "+8618511122266", "+8618511122277"])]
    results = await make(vendor, http, tmp_path).send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.DEFERRED, Outcome.FAILED]


@pytest.mark.parametrize(
    ("code", "raised", "wait"),
    [
        ("InternalError.OtherError", TransientProviderError, None),
        ("RequestLimitExceeded", TransientProviderError, None),
        ("LimitExceeded.PhoneNumberOneHourLimit", TransientProviderError, 3600.0),
        ("UnauthorizedOperation.SerivceSuspendDueToArrears", PermanentProviderError, None),
        ("FailedOperation.TemplateIncorrectOrUnapproved", PermanentProviderError, None),
    ],
)
async def test_whole_call_errors(
    vendor: TencentVendor,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    code: str,
    raised: type[Exception],
    wait: float | None,
) -> None:
    vendor.call_error = code
    with pytest.raises(raised) as caught:
        await make(vendor, http, tmp_path).send([sms(1), sms(2)])
    assert code in str(caught.value)
    if isinstance(caught.value, TransientProviderError):
        assert caught.value.retry_after == wait
    assert not vendor.delivered


@pytest.mark.parametrize("code", ["InternalError.Timeout", "InternalError.SendAndRecvFail"])
async def test_a_send_that_timed_out_at_tencent_is_unknown(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path, code: str
) -> None:
    """Tencent's own "the send timed out" (请求下发短信超时) and "exchange with the carrier failed",
    for the whole call or for one number: the SMS may have gone, so UNKNOWN (reconciled or sent
    once more, flagged), never a refusal to fail over on or a plain retry."""
    vendor.call_error = code
    results = await make(vendor, http, tmp_path).send([sms(1), sms(2)])
    assert [r.outcome for r in results] == [Outcome.UNKNOWN, Outcome.UNKNOWN]
    assert all(code in (r.error or "") for r in results)
    vendor.call_error = None
    canned = json.loads((HERE / "send_response.json").read_text())
    canned["Response"]["SendStatusSet"][1]["Code"] = code
    vendor.canned = canned
    to = [e["PhoneNumber"] for e in canned["Response"]["SendStatusSet"]]
    per_number = await make(vendor, http, tmp_path).send([sms(i, to=n) for i, n in enumerate(to)])
    assert per_number[1].outcome is Outcome.UNKNOWN and code in (per_number[1].error or "")


async def test_an_outage_answered_503_is_transient(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    vendor.mode, vendor.fail_style = "fail", "503"
    with pytest.raises(TransientProviderError):
        await make(vendor, http, tmp_path).send([sms(1)])


async def test_one_refused_template_fails_only_its_own_messages(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    unapproved = {"tencent": {"template_id": "9999", "params": ["code"]}}
    results = await make(vendor, http, tmp_path).send([sms(1), sms(2, template=unapproved)])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED]
    assert "TemplateIncorrectOrUnapproved" in (results[1].error or "")


@pytest.mark.parametrize("code", ACCOUNT_CODES)
async def test_an_account_refusal_reported_per_number_refuses_the_call(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path, code: str
) -> None:
    """An empty SMS package (or arrears, a request IP outside the whitelist...) answered per
    number is the account's refusal, as the same Code in Response.Error is: the call raises so
    the dispatcher fails the messages over, instead of failing every message of a bulk."""
    messages = [sms(i) for i in range(3)]  # one call
    vendor.per_number = {m.to: code for m in messages}
    with pytest.raises(PermanentProviderError) as caught:
        await make(vendor, http, tmp_path).send(messages)
    assert code in caught.value.message
    assert len(vendor.calls) == 1 and not vendor.delivered


async def test_an_account_refusal_with_nothing_taken_refuses_the_call(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Some numbers refused for the account, the others for reasons of their own: nothing of
    the call left, so it is refused as a whole (the next account sees the bad number too)."""
    messages = [sms(i) for i in range(3)]
    vendor.per_number = {
        messages[0].to: "FailedOperation.InsufficientBalanceInSmsPackage",
        messages[1].to: "InvalidParameterValue.IncorrectPhoneNumber",
        messages[2].to: "FailedOperation.InsufficientBalanceInSmsPackage",
    }
    with pytest.raises(PermanentProviderError, match="InsufficientBalanceInSmsPackage"):
        await make(vendor, http, tmp_path).send(messages)
    assert not vendor.delivered


async def test_an_account_refusal_for_some_numbers_of_a_call_retries_them(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The package ran empty midway through a call: the numbers it took were sent, so nothing
    of the call is offered to another account; the refused ones RETRY (never FAILED) and no
    further call of the send starts."""
    messages = [sms(1), sms(2), sms(3), sms(4, code="9999")]  # calls: 1-3, then 4
    vendor.per_number = {messages[1].to: "FailedOperation.InsufficientBalanceInSmsPackage"}
    results = await make(vendor, http, tmp_path, concurrency=1).send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.RETRY, Outcome.SENT, Outcome.RETRY]
    assert "InsufficientBalanceInSmsPackage" in (results[1].error or "")
    assert "not attempted" in (results[3].error or "")
    assert len(vendor.calls) == 1 and set(vendor.delivered) == {messages[0].to, messages[2].to}


@pytest.mark.parametrize("code", ACCOUNT_CODES[:2])
async def test_an_account_refusal_in_a_later_call_retries_its_messages(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path, code: str
) -> None:
    """A first call went through, a later one is refused per number: the send does not raise (the
    first call's messages must not go to another account) and the refused messages RETRY."""
    messages = [sms(1), sms(2, code="2222"), sms(3, code="2222"), sms(4, code="3333")]  # three calls
    vendor.per_number = {messages[1].to: code, messages[2].to: code}
    results = await make(vendor, http, tmp_path, concurrency=1).send(messages)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.RETRY, Outcome.RETRY, Outcome.RETRY]
    assert code in (results[1].error or "") and code in (results[2].error or "")
    assert "not attempted" in (results[3].error or "")  # the account was refused: no third call
    assert len(vendor.calls) == 2 and list(vendor.delivered) == [messages[0].to]


def test_marketing_waits_until_eight_in_beijing() -> None:
    beijing = timezone(timedelta(hours=8))

    def at(hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 4, 15, hour, minute, tzinfo=beijing)

    assert marketing_wait(at(22, 0)) == 10 * 3600
    assert marketing_wait(at(23, 30)) == 8.5 * 3600
    assert marketing_wait(at(7, 59)) == 60
    assert marketing_wait(at(12, 0)) == 20 * 3600  # refused in hours by Tencent: the next morning
    assert marketing_wait(at(8, 1)) == 60  # open by our clock, not yet by Tencent's: soon
    assert marketing_wait(datetime(2026, 4, 15, 15, 0, tzinfo=UTC)) == 9 * 3600  # 23:00 in Beijing


async def test_marketing_outside_hours_is_deferred_per_number(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    messages = [sms(1), sms(2)]
    vendor.per_number = {messages[0].to: MARKETING_HOURS}
    before = marketing_wait()
    results = await make(vendor, http, tmp_path).send(messages)
    after = marketing_wait()
    assert [r.outcome for r in results] == [Outcome.DEFERRED, Outcome.SENT]
    assert MARKETING_HOURS in (results[0].error or "")
    assert results[0].retry_after is not None and after - 1 <= results[0].retry_after <= before + 1


async def test_marketing_outside_hours_for_the_whole_call_is_deferred(
    vendor: TencentVendor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Flow control at call level: each message waits until 08:00, never FAILED and never a
    refusal that fails the messages over to another account."""
    vendor.call_error = MARKETING_HOURS
    before = marketing_wait()
    results = await make(vendor, http, tmp_path).send([sms(1), sms(2)])
    after = marketing_wait()
    assert [r.outcome for r in results] == [Outcome.DEFERRED, Outcome.DEFERRED]
    for result in results:
        assert MARKETING_HOURS in (result.error or "")
        assert result.retry_after is not None and after - 1 <= result.retry_after <= before + 1
    assert not vendor.delivered


async def test_receipts_and_replies_from_the_documented_callbacks(tmp_path: Path) -> None:
    provider = TencentProvider.from_config(
        TencentConfig(
            secret_id=SECRET_ID, secret_key=SECRET_KEY, sdk_app_id=SDK_APP_ID, callback_token=TOKEN
        ),
        ProviderContext(http=None, outbox_dir=tmp_path),
    )
    [ok] = provider.parse_receipts((HERE / "status_callback.json").read_bytes())
    assert (ok.status, ok.provider_message_id, ok.message_id, ok.error) == (
        "delivered",
        "xxxxxxx",
        None,
        None,
    )
    [bad] = provider.parse_receipts((HERE / "status_callback_fail.json").read_bytes())
    assert bad.status == "undelivered" and "002" in (bad.error or "") and bad.event_key != ok.event_key
    [reply] = provider.parse_inbound((HERE / "reply_callback.json").read_bytes())
    assert (reply.from_number, reply.text) == ("+8613xxxxxxxxx", "TD")
    assert provider.parse_inbound((HERE / "reply_callback.json").read_bytes())[0].event_key == reply.event_key
    assert provider.callback_answer == (200, "application/json", b'{"result":0,"errmsg":"OK"}')


def test_callbacks_need_the_account_token(tmp_path: Path) -> None:
    provider = TencentProvider.from_config(
        TencentConfig(
            secret_id=SECRET_ID, secret_key=SECRET_KEY, sdk_app_id=SDK_APP_ID, callback_token=TOKEN
        ),
        ProviderContext(http=None, outbox_dir=tmp_path),
    )
    body = (HERE / "status_callback.json").read_bytes()
    assert provider.verify_callback({}, body, f"{STATUS_URL}?token={TOKEN}")
    assert not provider.verify_callback({}, body, STATUS_URL)
    assert not provider.verify_callback({}, body, f"{STATUS_URL}?token={TOKEN[:-1]}")
    assert not provider.verify_callback({}, body, f"{STATUS_URL}?token=x&token={TOKEN}")


# ---- end to end through the API ----------------------------------------------------------------


async def test_bulk_through_tencent_then_a_receipt(live_service: Service, live_tenant: TenantKeys) -> None:
    vendor = TencentVendor()
    await vendor.start()
    try:
        h = live_tenant.headers()
        created = await live_service.client.post(
            "/communication/providers",
            json={
                "channel": "sms",
                "provider": "tencent",
                "name": "tencent",
                "priority": 1,
                "config": {
                    "secret_id": SECRET_ID,
                    "secret_key": SECRET_KEY,
                    "sdk_app_id": SDK_APP_ID,
                    "sign_name": SIGN,
                    "endpoint": vendor.url,
                    "callback_token": TOKEN,
                },
            },
            headers=h,
        )
        assert created.status_code == 201, created.text
        account = created.json()["data"]
        assert sorted(account["secret_fields_set"]) == ["callback_token", "secret_key"]
        template = await live_service.client.post(
            "/communication/templates",
            json={
                "code": "parcel",
                "channel": "sms",
                "category": "transactional",
                "content": "Parcel {{ p }} is ready",
                "provider_templates": {"tencent": {"template_id": "1110", "params": ["p"]}},
            },
            headers=h,
        )
        assert template.status_code == 201, template.text
        answer = await live_service.client.post(
            "/communication/bulk",
            json={
                "channel": "sms",
                "template": "parcel",
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
        assert [(c["TemplateId"], c["TemplateParamSet"], len(c["PhoneNumberSet"])) for c in vendor.calls] == [
            ("1110", ["PX"], 3)
        ]
        log_id = answer.json()["items"][0]["id"]
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        assert row is not None and row.provider_message_id in vendor.serials

        path = account["callback_urls"]["status"].removeprefix("https://comms.test")
        assert path.endswith(f"/status?token={TOKEN}")  # the URL to paste into Tencent's console
        path = path.split("?")[0]
        body = receipt_body(row.provider_message_id, row.recipient, delivered=True)
        json_type = {"Content-Type": "application/json"}
        forged = await live_service.client.post(
            f"{path}?token=guess-{TOKEN}", content=body, headers=json_type
        )
        assert forged.status_code == 401
        good = await live_service.client.post(f"{path}?token={TOKEN}", content=body, headers=json_type)
        assert good.status_code == 200 and good.json() == {"result": 0, "errmsg": "OK"}
        async with live_service.db.read() as session:
            events = (await session.scalars(select(ReceiptEvent))).all()
            item = await session.get(Message, log_id)
        assert len(events) == 1  # the forged one changed nothing
        # Tencent receipts name the message by SerialNo (sid) only: applying one needs the
        # receipt service to find the message by (account, provider_message_id).
        assert item is not None and item.status == "delivered", f"receipt outcome: {events[0].outcome!r}"
    finally:
        await vendor.stop()
