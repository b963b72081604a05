"""The ``aliyun`` provider (dysmsapi 2017-05-25) against a local server that checks what Aliyun checks.

The fake vendor recomputes every request's signature from the received parameters and the
shared secret (Aliyun's published algorithm, written here independently of the provider), checks
the common parameters, the timestamp window and nonce reuse, the required parameters per Action,
the number limits (SendSms 1,000, SendBatchSms 100) and the JSON arrays, answers with Aliyun's
documented bodies (tests/fixtures/aliyun/answers/), and keeps what it sent so QuerySendDetails
can answer from it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import func, select, update

from comms.errors import PermanentProviderError, TransientProviderError
from comms.models import Message, ReceiptEvent, Suppression
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.sms.aliyun import (
    MISSING_SIGN_NAME,
    MISSING_TEMPLATE,
    AliyunConfig,
    AliyunProvider,
    aliyun_number,
    e164_of,
    e164_readings,
    number_tag,
    percent_encode,
    signature,
    string_to_sign,
)
from tests.conftest import Service, TenantKeys, statuses, wait_until
from tests.providers.contract import FIXTURES, Callback, FakeVendor, ProviderContract

KEY_ID = "LTAI5tTestKeyId0001"
SECRET = "test-access-key-secret-0123456789"
TOKEN = "cb-token-0123456789abcdef"
TEMPLATE = {"aliyun": {"template_code": "SMS_154950909", "sign_name": "Acme"}}
HERE = FIXTURES / "aliyun"
BEIJING = timezone(timedelta(hours=8))

# HTTP status Aliyun answers each documented code with (business codes come with 200).
STATUS_OF = {
    "OK": 200,
    "SignatureDoesNotMatch": 400,
    "InvalidAccessKeyId.NotFound": 404,
    "InvalidTimeStamp.Expired": 400,
    "SignatureNonceUsed": 400,
    "MissingParameter": 400,
    "Throttling.User": 400,
    "ServiceUnavailable": 503,
}


def documented(code: str) -> dict[str, Any]:
    return dict(json.loads((HERE / "answers" / f"{code}.json").read_text()))


def aliyun_encode(value: str) -> str:
    """Aliyun's recipe: form-encode, then ``+`` -> ``%20``, ``*`` -> ``%2A``, ``%7E`` -> ``~``."""
    return quote_plus(value, safe="").replace("+", "%20").replace("*", "%2A").replace("%7E", "~")


def vendor_signature(secret: str, params: dict[str, str]) -> str:
    pairs = sorted((k, v) for k, v in params.items() if k != "Signature")
    canonical = "&".join(f"{aliyun_encode(k)}={aliyun_encode(v)}" for k, v in pairs)
    to_sign = "POST&" + aliyun_encode("/") + "&" + aliyun_encode(canonical)
    mac = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


class AliyunVendor(FakeVendor):
    """dysmsapi.aliyuncs.com, as far as SendSms, SendBatchSms and QuerySendDetails go."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets = {KEY_ID: SECRET}
        self.calls: list[tuple[str, dict[str, str]]] = []  # accepted sends and queries
        self.records: list[dict[str, Any]] = []  # what was sent, for QuerySendDetails
        self.nonces: set[str] = set()
        self.force_code: str | None = None  # answer sends with this documented code
        self.force_code_after: int | None = None  # ... once this many sends were accepted
        self.fail_after: int | None = None  # accept this many sends, then answer 503
        self.lose_next_answer = False  # take the next send, then answer too late (a lost answer)
        self._biz = 900619746936498440

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/", self.handle)

    def answer(self, code: str, **extra: Any) -> web.Response:
        body = documented(code) if (HERE / "answers" / f"{code}.json").exists() else {"Code": code}
        body.update(extra, RequestId=str(uuid.uuid4()).upper())
        return web.json_response(body, status=STATUS_OF.get(code, 200))

    def reject(self, code: str, problem: str) -> web.Response:
        self.refuse(problem)
        return self.answer(code)

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {**request.query, **{k: str(v) for k, v in form.items()}}
        await self.pause_if_hanging(request)
        if self.mode == "fail":
            return self.answer("ServiceUnavailable")
        for name in (
            "Action",
            "Version",
            "Format",
            "AccessKeyId",
            "SignatureMethod",
            "SignatureVersion",
            "SignatureNonce",
            "Timestamp",
            "Signature",
        ):
            if not params.get(name):
                return self.reject("MissingParameter", f"no {name}")
        secret = self.secrets.get(params["AccessKeyId"])
        if secret is None:
            return self.answer("InvalidAccessKeyId.NotFound")
        if not hmac.compare_digest(vendor_signature(secret, params), params["Signature"]):
            self.bad_signatures += 1
            return self.answer("SignatureDoesNotMatch")
        stamp = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs((datetime.now(UTC) - stamp).total_seconds()) > 15 * 60:
            return self.answer("InvalidTimeStamp.Expired")
        if params["SignatureNonce"] in self.nonces:
            return self.answer("SignatureNonceUsed")
        self.nonces.add(params["SignatureNonce"])
        expected = {"Version": "2017-05-25", "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0"}
        for name, value in expected.items():
            if params[name] != value:
                return self.reject("isv.INVALID_PARAMETERS", f"{name}={params[name]}")
        if params["Format"] != "JSON":
            self.refuse(f"Format={params['Format']}: the answer would be XML")
        action = params["Action"]
        if action == "QuerySendDetails":
            return self.query(params)
        if action not in ("SendSms", "SendBatchSms"):
            return self.reject("InvalidApi.NotFound", f"Action={action}")
        if self.fail_after is not None and self.accepted_sends() >= self.fail_after:
            return self.answer("ServiceUnavailable")
        if self.force_code and (
            self.force_code_after is None or self.accepted_sends() >= self.force_code_after
        ):
            return self.answer(self.force_code)
        checked = self.check_send_sms(params) if action == "SendSms" else self.check_send_batch_sms(params)
        if isinstance(checked, web.Response):
            return checked
        if self.mode == "reject":
            return self.answer("isv.MOBILE_NUMBER_ILLEGAL")
        self.calls.append((action, params))
        self._biz += 1
        biz_id = f"{self._biz}^0"
        now = datetime.now(BEIJING)
        for number, sign_name, template_param in checked:
            self.accept(number)
            self.records.append(
                {
                    "PhoneNum": number,
                    "SendStatus": 1,
                    "ErrCode": "",
                    "TemplateCode": params["TemplateCode"],
                    "Content": f"【{sign_name}】{params['TemplateCode']} {template_param}",
                    "SendDate": now.strftime("%Y-%m-%d %H:%M:%S"),
                    "ReceiveDate": "",
                    "OutId": params.get("OutId", ""),
                    "_biz_id": biz_id,
                    "_day": now.strftime("%Y%m%d"),
                }
            )
        if self.lose_next_answer:
            self.lose_next_answer = False
            await asyncio.sleep(self.hang_seconds)
        return self.answer("OK", BizId=biz_id)

    def accepted_sends(self) -> int:
        return sum(1 for action, _ in self.calls if action != "QuerySendDetails")

    def check_number(self, number: str) -> bool:
        if len(number) == 11 and number.startswith("1"):
            return number.isdigit()
        return number.isdigit() and 7 <= len(number) <= 15 and not number.startswith("0")

    def check_params(self, raw: str) -> bool:
        try:
            value = json.loads(raw)
        except ValueError:
            return False
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())

    def check_send_sms(self, params: dict[str, str]) -> list[tuple[str, str, str]] | web.Response:
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return self.reject("MissingParameter", f"SendSms without {name}")
        numbers = params["PhoneNumbers"].split(",")
        if len(numbers) > 1000:
            return self.reject("isv.MOBILE_COUNT_OVER_LIMIT", f"SendSms with {len(numbers)} numbers")
        if len(set(numbers)) != len(numbers):
            self.refuse("a number twice in one SendSms: its receipts cannot be told apart")
        if not all(self.check_number(n) for n in numbers):
            return self.reject("isv.MOBILE_NUMBER_ILLEGAL", f"illegal number in {numbers[:3]}")
        if not params["TemplateCode"].startswith("SMS_"):
            return self.reject("isv.SMS_TEMPLATE_ILLEGAL", f"template {params['TemplateCode']}")
        template_param = params.get("TemplateParam", "{}")
        if not self.check_params(template_param):
            return self.reject("isv.INVALID_JSON_PARAM", f"TemplateParam {template_param}")
        return [(n, params["SignName"], template_param) for n in numbers]

    def check_send_batch_sms(self, params: dict[str, str]) -> list[tuple[str, str, str]] | web.Response:
        for name in ("PhoneNumberJson", "SignNameJson", "TemplateCode"):
            if not params.get(name):
                return self.reject("MissingParameter", f"SendBatchSms without {name}")
        try:
            numbers = json.loads(params["PhoneNumberJson"])
            signs = json.loads(params["SignNameJson"])
            values = json.loads(params.get("TemplateParamJson") or "null")
        except ValueError:
            return self.reject("isv.INVALID_JSON_PARAM", "a JSON array does not parse")
        if not isinstance(numbers, list) or not isinstance(signs, list):
            return self.reject("isv.INVALID_JSON_PARAM", "PhoneNumberJson / SignNameJson not arrays")
        if len(numbers) > 100:
            return self.reject("isv.MOBILE_COUNT_OVER_LIMIT", f"SendBatchSms with {len(numbers)} numbers")
        if len(signs) != len(numbers) or (values is not None and len(values) != len(numbers)):
            return self.reject("isv.INVALID_PARAMETERS", "JSON arrays of different lengths")
        if len(set(numbers)) != len(numbers):
            self.refuse("a number twice in one SendBatchSms")
        if not all(isinstance(n, str) and self.check_number(n) for n in numbers):
            return self.reject("isv.MOBILE_NUMBER_ILLEGAL", "illegal number")
        params_list = values if values is not None else [{}] * len(numbers)
        if not all(isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in params_list):
            return self.reject("isv.INVALID_JSON_PARAM", "TemplateParamJson items not objects of strings")
        return [
            (n, s, json.dumps(v, ensure_ascii=False))
            for n, s, v in zip(numbers, signs, params_list, strict=True)
        ]

    def query(self, params: dict[str, str]) -> web.Response:
        for name in ("PhoneNumber", "SendDate", "PageSize", "CurrentPage"):
            if not params.get(name):
                return self.reject("MissingParameter", f"QuerySendDetails without {name}")
        size, page = int(params["PageSize"]), int(params["CurrentPage"])
        if not 1 <= size <= 50 or page < 1 or len(params["SendDate"]) != 8:
            return self.reject("isv.INVALID_PARAMETERS", f"PageSize {size}, CurrentPage {page}")
        self.calls.append(("QuerySendDetails", params))
        found = [
            r
            for r in self.records
            if r["PhoneNum"] == params["PhoneNumber"]
            and r["_day"] == params["SendDate"]
            and params.get("BizId") in (None, "", r["_biz_id"])
        ]
        shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in found]
        return self.answer(
            "OK",
            Message="OK",
            TotalCount=len(found),
            SmsSendDetailDTOs={"SmsSendDetailDTO": shown[(page - 1) * size : page * size]},
        )

    def sends(self, action: str | None = None) -> list[dict[str, str]]:
        return [p for a, p in self.calls if a != "QuerySendDetails" and (action is None or a == action)]


def config(vendor: FakeVendor, **changes: Any) -> AliyunConfig:
    values: dict[str, Any] = {
        "access_key_id": KEY_ID,
        "access_key_secret": SECRET,
        "endpoint": f"{vendor.url}/",
        "sign_name": "Acme",
        "timeout_seconds": 1.5,
        "callback_token": TOKEN,
    }
    values.update(changes)
    return AliyunConfig(**values)


def report(number: str, biz_id: str, out_id: str | None, delivered: bool) -> dict[str, Any]:
    return {
        "phone_number": number,
        "send_time": "2026-11-26 16:00:00",
        "report_time": "2026-11-26 16:00:05" if delivered else "2026-11-26 16:00:09",
        "success": delivered,
        "err_code": "DELIVERED" if delivered else "UNDELIV",
        "err_msg": "用户接收成功" if delivered else "UNDELIV",
        "sms_size": "1",
        "biz_id": biz_id,
        "out_id": out_id,
    }


class TestAliyunContract(ProviderContract):
    provider_name = "aliyun"

    def make_vendor(self) -> FakeVendor:
        return AliyunVendor()

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        return AliyunProvider.from_config(config(vendor), context)

    def provider_template(self) -> dict[str, Any] | None:
        return TEMPLATE

    def recipient_key(self, message: OutboundMessage) -> str:
        return message.to.removeprefix("+86")

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        body = json.dumps(
            [report(self.recipient_key(message), provider_message_id or "", message.id, delivered)],
            ensure_ascii=False,
        ).encode()
        return Callback({"content-type": "application/json"}, body, f"{self.status_url}?token={TOKEN}")

    def forge(self, callback: Callback) -> Callback:
        """Aliyun signs nothing: a forged push is one without the account's token."""
        return Callback(callback.headers, callback.body, callback.url.replace(TOKEN, "guessed-token-0000000"))


# ---- vendor-specific tests --------------------------------------------------------------------


@pytest.fixture
async def vendor() -> AsyncIterator[AliyunVendor]:
    async with AliyunVendor() as server:
        yield server


@pytest.fixture
def provider(vendor: AliyunVendor, http: aiohttp.ClientSession) -> AliyunProvider:
    return AliyunProvider(config(vendor), http)


def sms(i: int, category: str = "transactional", **changes: Any) -> OutboundMessage:
    message = OutboundMessage(
        id=f"log_0193aaaaaaaa{i:020x}",
        tenant_id="ten_test",
        channel="sms",
        category=category,
        to=f"+86139{i:08d}",
        text="rendered text Aliyun never sees",
        variables={"parcel": "PX-1"},
        provider_template=TEMPLATE,
        segments=1,
    )
    return replace(message, **changes)


def test_the_signature_matches_aliyuns_documented_example() -> None:
    # help.aliyun.com "签名机制" worked example: AccessKeyId testid, secret testsecret, GET.
    params = {
        "TimeStamp": "2016-02-23T12:46:24Z",
        "Format": "XML",
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "Version": "2014-05-26",
        "SignatureVersion": "1.0",
    }
    assert string_to_sign("GET", params).startswith("GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions")
    assert "TimeStamp%3D2016-02-23T12%253A46%253A24Z" in string_to_sign("GET", params)
    assert signature("testsecret", "GET", params) == "CT9X0VtwR86fNWSnsc6v8YGOjuE="


def test_percent_encoding_follows_aliyuns_rules() -> None:
    assert percent_encode("a b") == "a%20b"  # not +
    assert percent_encode("*") == "%2A"
    assert percent_encode("~-_.") == "~-_."
    assert percent_encode("/=&") == "%2F%3D%26"
    assert percent_encode("签") == "%E7%AD%BE"
    for value in ("a b*c~d", '{"code":"1 2"}', "【Acme】"):
        assert percent_encode(value) == aliyun_encode(value)


def test_numbers_convert_from_e164_and_back() -> None:
    assert aliyun_number("+8613800138000") == "13800138000"
    assert aliyun_number("+85291234567") == "85291234567"
    assert aliyun_number("+447700900123") == "447700900123"
    assert aliyun_number("13800138000") is None and aliyun_number("+0123") is None
    for form in ("13800138000", "8613800138000", "008613800138000", "+8613800138000"):
        assert e164_of(form) == "+8613800138000"
    assert e164_of("85291234567") == "+85291234567"
    # +1 numbers come back as 1 + ten digits, the length of a mainland mobile: the one that is a
    # valid mainland mobile is read as one, the other as the +1 number it is (a STOP from a US
    # subscriber must suppress that subscriber).
    assert aliyun_number("+14155550123") == "14155550123" and e164_of("14155550123") == "+14155550123"
    assert e164_of("14712345678") == "+8614712345678"


def test_digits_that_are_a_mainland_mobile_and_a_plus_one_number_have_both_readings() -> None:
    assert e164_readings("13475550123") == ("+8613475550123", "+13475550123")  # 134 mobile, 347 area
    assert e164_readings("14155550123") == ("+14155550123",)
    assert e164_readings("13800138000") == ("+8613800138000",)
    assert e164_readings("+13475550123") == ("+13475550123",)  # written with its code: one reading
    (up,) = callback_provider().parse_inbound(
        json.dumps([{"phone_number": "13475550123", "content": "TD", "sequence_id": 7}]).encode()
    )
    assert up.from_number == "+8613475550123" and up.other_readings == ("+13475550123",)
    (report,) = callback_provider().parse_receipts(
        json.dumps(
            [{"phone_number": "13475550123", "success": True, "biz_id": "b1", "out_id": "log_a..log_b"}]
        ).encode()
    )
    assert report.provider_message_id == f"b1:{number_tag('+8613475550123')}"
    assert report.other_provider_message_ids == (f"b1:{number_tag('+13475550123')}",)


def test_config_keeps_secrets_write_only_and_checks_the_token() -> None:
    assert AliyunProvider.secret_fields == {"access_key_secret", "callback_token"}
    made = AliyunConfig(access_key_id="id", access_key_secret="s")
    assert made.endpoint == "https://dysmsapi.aliyuncs.com/" and made.callback_token is None
    for bad in (
        {"callback_token": "short"},
        {"callback_token": "has spaces in it, 16+"},
        {"endpoint": "ftp://x"},
    ):
        with pytest.raises(ValidationError):
            AliyunConfig(access_key_id="id", access_key_secret="s", **bad)
    with pytest.raises(ValidationError):
        AliyunConfig(access_key_id="id", access_key_secret="s", unknown=1)  # type: ignore[call-arg]


async def test_shared_variables_go_in_one_send_sms_call(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    messages = [sms(i) for i in range(1000)]
    results = await provider.send(messages)
    assert [r.message_id for r in results] == [m.id for m in messages]
    assert all(r.outcome is Outcome.SENT for r in results)
    [call] = vendor.sends()
    assert call["Action"] == "SendSms" and len(call["PhoneNumbers"].split(",")) == 1000
    assert json.loads(call["TemplateParam"]) == {"parcel": "PX-1"}
    assert call["TemplateCode"] == "SMS_154950909" and call["SignName"] == "Acme"
    assert call["OutId"] == f"{messages[0].id}..{messages[-1].id}"
    biz_id = vendor.records[0]["_biz_id"]
    assert {r.provider_message_id for r in results} == {f"{biz_id}:{number_tag(m.to)}" for m in messages}
    assert vendor.problems == [] and vendor.bad_signatures == 0


async def test_per_recipient_variables_go_through_send_batch_sms(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    messages = [sms(i, variables={"parcel": f"PX-{i}"}) for i in range(250)]
    results = await provider.send(messages)
    assert sum(r.outcome is Outcome.SENT for r in results) == 250
    calls = vendor.sends()
    assert [c["Action"] for c in calls] == ["SendBatchSms"] * 3
    sizes = sorted(len(json.loads(c["PhoneNumberJson"])) for c in calls)
    assert sizes == [50, 100, 100]
    by_number = {}
    for call in calls:
        numbers = json.loads(call["PhoneNumberJson"])
        assert len(json.loads(call["SignNameJson"])) == len(numbers)
        by_number.update(zip(numbers, json.loads(call["TemplateParamJson"]), strict=True))
    assert by_number["13900000007"] == {"parcel": "PX-7"}  # each number got its own variables
    assert vendor.problems == [] and len(vendor.delivered) == 250


async def test_verification_codes_go_one_per_call_and_map_exactly(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    messages = [sms(i, "verification", variables={"code": "123456"}) for i in range(3)]
    results = await provider.send(messages)
    calls = vendor.sends("SendSms")
    assert len(calls) == 3 and sorted(c["OutId"] for c in calls) == [m.id for m in messages]
    biz_of = {r["OutId"]: r["_biz_id"] for r in vendor.records}
    assert [r.provider_message_id for r in results] == [biz_of[m.id] for m in messages]


async def test_mixed_chunks_keep_the_results_in_input_order(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    messages = [
        sms(1),
        sms(2, variables={"parcel": "other"}),
        sms(3, provider_template=None),
        sms(4),
        sms(5, "verification", variables={"code": "1"}),
        sms(6, variables={"parcel": "third"}),
        sms(7, to="+85291234567"),
    ]
    results = await provider.send(messages)
    assert [r.message_id for r in results] == [m.id for m in messages]
    assert [r.outcome for r in results] == [Outcome.SENT] * 2 + [Outcome.FAILED] + [Outcome.SENT] * 4
    shapes = sorted((c["Action"], c.get("PhoneNumbers", c.get("PhoneNumberJson"))) for c in vendor.sends())
    assert shapes == [
        ("SendBatchSms", '["13900000002","13900000006"]'),  # different variables
        ("SendSms", "13900000001,13900000004"),  # shared variables, mainland
        ("SendSms", "13900000005"),  # a verification code, alone
        ("SendSms", "85291234567"),  # shared variables, but never in a mainland call
    ]
    assert "85291234567" in vendor.delivered and vendor.problems == []


async def test_a_number_twice_in_a_chunk_goes_in_separate_calls(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    messages = [sms(1), sms(2), sms(3, to=sms(1).to)]
    results = await provider.send(messages)
    assert all(r.outcome is Outcome.SENT for r in results)
    assert len(vendor.sends()) == 2 and vendor.problems == []
    assert vendor.delivered[aliyun_number(sms(1).to) or ""] == 2


async def test_a_missing_template_code_fails_fast_with_a_clear_error(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    messages = [
        sms(1, provider_template=None),
        sms(2, provider_template={"aliyun": {"sign_name": "Acme"}}),
        sms(3, provider_template={"twilio": {"template_code": "x"}}),
    ]
    results = await provider.send(messages)
    assert [(r.outcome, r.error) for r in results] == [(Outcome.FAILED, MISSING_TEMPLATE)] * 3
    assert MISSING_TEMPLATE == (
        "aliyun needs a template_code: set provider_templates.aliyun.template_code on the template"
    )
    assert vendor.requests == 0


async def test_the_sign_name_comes_from_the_template_else_the_account(
    vendor: AliyunVendor, http: aiohttp.ClientSession
) -> None:
    unsigned = AliyunProvider(config(vendor, sign_name=None), http)
    only_code = {"aliyun": {"template_code": "SMS_1"}}
    [result] = await unsigned.send([sms(1, provider_template=only_code)])
    assert result.outcome is Outcome.FAILED and result.error == MISSING_SIGN_NAME
    account_default = AliyunProvider(config(vendor, sign_name="AcmeShop"), http)
    await account_default.send([sms(2, provider_template=only_code)])
    await account_default.send([sms(3)])
    assert [c["SignName"] for c in vendor.sends()] == ["AcmeShop", "Acme"]


async def test_flow_control_defers_with_a_retry_time(vendor: AliyunVendor, provider: AliyunProvider) -> None:
    vendor.force_code = "isv.BUSINESS_LIMIT_CONTROL"
    results = await provider.send([sms(1, "verification"), sms(2), sms(3)])
    assert {r.outcome for r in results} == {Outcome.DEFERRED}
    assert all(r.retry_after == 60.0 for r in results)
    assert all(r.error and r.error.startswith("isv.BUSINESS_LIMIT_CONTROL: 触发分钟级流控") for r in results)


async def test_a_bad_secret_is_refused_by_the_vendor_as_permanent(
    vendor: AliyunVendor, http: aiohttp.ClientSession
) -> None:
    wrong = AliyunProvider(config(vendor, access_key_secret="not-the-secret"), http)
    with pytest.raises(PermanentProviderError, match="SignatureDoesNotMatch"):
        await wrong.send([sms(1), sms(2, "verification")])
    assert vendor.bad_signatures >= 1 and not vendor.delivered
    unknown = AliyunProvider(config(vendor, access_key_id="LTAI-nobody"), http)
    with pytest.raises(PermanentProviderError, match=r"InvalidAccessKeyId\.NotFound"):
        await unknown.send([sms(3)])


@pytest.mark.parametrize(
    "code", ["isv.SECURITY_FROZEN_ACCOUNT", "isv.ACCOUNT_ABNORMAL", "isv.RAM_CHECK_FAILED"]
)
async def test_a_frozen_or_abnormal_account_is_refused_as_a_whole(
    vendor: AliyunVendor, provider: AliyunProvider, code: str
) -> None:
    """Aliyun answers these with HTTP 200 and the code: the account cannot send (frozen after 45
    days unused, abnormal), so the call raises and the dispatcher fails over; its messages are
    not failed."""
    vendor.force_code = code
    with pytest.raises(PermanentProviderError, match=code.replace(".", r"\.")):
        await provider.send([sms(1), sms(2), sms(3, "verification")])
    assert not vendor.delivered


async def test_an_account_refusal_after_some_calls_retries_instead_of_failing(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    """One call reached Aliyun, then the account is refused: raising would send that one twice
    (on the next account), and the refused calls' messages did nothing wrong: RETRY, not FAILED."""
    vendor.force_code, vendor.force_code_after = "isv.SECURITY_FROZEN_ACCOUNT", 1
    messages = [sms(i, "verification", variables={"code": str(i)}) for i in range(6)]
    results = await provider.send(messages)
    assert sum(r.outcome is Outcome.SENT for r in results) == 1 and len(vendor.delivered) == 1
    others = [r for r in results if r.outcome is not Outcome.SENT]
    assert {r.outcome for r in others} == {Outcome.RETRY}
    assert any("isv.SECURITY_FROZEN_ACCOUNT" in (r.error or "") for r in others)


async def test_throttling_and_a_stale_clock_are_transient(
    vendor: AliyunVendor, http: aiohttp.ClientSession, provider: AliyunProvider
) -> None:
    vendor.force_code = "Throttling.User"
    with pytest.raises(TransientProviderError, match=r"Throttling\.User") as caught:
        await provider.send([sms(1)])
    assert caught.value.retry_after == 1.0
    vendor.force_code = None
    late = AliyunProvider(config(vendor), http, clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(TransientProviderError, match=r"InvalidTimeStamp\.Expired"):
        await late.send([sms(2)])
    assert not vendor.delivered


async def test_an_outage_after_some_calls_returns_results_instead_of_raising(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    vendor.fail_after = 1
    messages = [sms(i, "verification", variables={"code": str(i)}) for i in range(6)]
    results = await provider.send(messages)  # raising now would send the first one twice
    sent = [r for r in results if r.outcome is Outcome.SENT]
    assert len(sent) == 1 and len(vendor.delivered) == 1
    assert all(r.outcome is Outcome.RETRY and r.error for r in results if r.outcome is not Outcome.SENT)


async def test_reconcile_asks_query_send_details_by_out_id(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    delivered, failed, waiting = sms(1, "verification"), sms(2), sms(3)
    never = sms(4)
    await provider.send([delivered])
    await provider.send([failed, waiting])  # one SendSms, OutId a range of both
    for record in vendor.records:
        if record["OutId"] == delivered.id:
            record.update(SendStatus=3, ErrCode="DELIVERED")
        elif record["PhoneNum"] == aliyun_number(failed.to):
            record.update(SendStatus=2, ErrCode="UNDELIV")
    results = await provider.reconcile([delivered, failed, waiting, never])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT, Outcome.UNKNOWN]
    assert results[0].response and "delivered" in results[0].response
    assert results[1].error == "UNDELIV"
    assert results[2].response and "waiting" in results[2].response
    assert results[3].error == "aliyun has no record of it"
    queries = [p for a, p in vendor.calls if a == "QuerySendDetails"]
    today = datetime.now(BEIJING).strftime("%Y%m%d")
    assert {q["SendDate"] for q in queries} >= {today} and all(q["PageSize"] == "50" for q in queries)
    assert vendor.problems == []


async def test_a_call_whose_range_spans_a_lost_message_does_not_settle_it(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    """Two of our messages to one number: the first rode in a several-number call whose OutId
    range spans the second's id, and the second never reached Aliyun. The range record is not
    the second's (other values), so it stays UNKNOWN: sent once more, flagged, never lost."""
    rode, other, lost = sms(1), sms(3), sms(2, to=sms(1).to, variables={"parcel": "PX-2"})
    await provider.send([rode, other])  # one SendSms, OutId = rode.id..other.id, spanning lost.id
    [found, unsure] = await provider.reconcile([rode, lost])
    assert found.outcome is Outcome.SENT
    assert unsure.outcome is Outcome.UNKNOWN and unsure.error == "aliyun has no record of it"


async def test_reconcile_pages_through_many_records(vendor: AliyunVendor, provider: AliyunProvider) -> None:
    target = sms(1, "verification", variables={"code": "9"})
    for i in range(120):  # the same number, many messages that day
        await provider.send([sms(1000 + i, "verification", to=target.to, variables={"code": str(i)})])
    await provider.send([target])
    [result] = await provider.reconcile([target])
    assert result.outcome is Outcome.SENT
    pages = [p["CurrentPage"] for a, p in vendor.calls if a == "QuerySendDetails"]
    assert pages == ["1", "2", "3"]


async def test_reconcile_without_an_answer_stays_unknown(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    vendor.mode = "fail"
    [result] = await provider.reconcile([sms(1)])
    assert result.outcome is Outcome.UNKNOWN
    assert result.error and result.error.startswith("aliyun could not be asked: ServiceUnavailable")


def callback_provider() -> AliyunProvider:
    context = ProviderContext(http=None, outbox_dir=Path("."))
    cfg = AliyunConfig(access_key_id=KEY_ID, access_key_secret=SECRET, callback_token=TOKEN)
    provider = AliyunProvider.from_config(cfg, context)
    assert isinstance(provider, AliyunProvider)
    return provider


def test_the_documented_receipt_parses() -> None:
    events = callback_provider().parse_receipts((HERE / "sms_report.json").read_bytes())
    delivered, failed = events
    assert delivered.status == "delivered" and delivered.error is None
    assert delivered.message_id == "log_0193aaaaaaaa00000000000000000001"
    assert delivered.provider_message_id == "900619746936498440^0"
    assert failed.status == "undelivered" and failed.error == "UNDELIV: UNDELIV"
    assert failed.message_id is None  # a shared call's OutId names a range, not this message
    assert failed.provider_message_id == "900619746936498441^0:" + number_tag("+8613900139000")
    again = callback_provider().parse_receipts((HERE / "sms_report.json").read_bytes())
    assert [e.event_key for e in events] == [e.event_key for e in again]
    assert delivered.event_key != failed.event_key


async def test_receipts_of_a_shared_call_name_what_the_send_recorded(
    vendor: AliyunVendor, provider: AliyunProvider
) -> None:
    messages = [sms(i) for i in range(3)]
    results = await provider.send(messages)
    body = json.dumps(
        [report(r["PhoneNum"], r["_biz_id"], r["OutId"], True) for r in vendor.records]
    ).encode()
    events = callback_provider().parse_receipts(body)
    assert [e.provider_message_id for e in events] == [r.provider_message_id for r in results]
    assert len({e.event_key for e in events}) == 3


def test_the_documented_inbound_parses() -> None:
    first, second = callback_provider().parse_inbound((HERE / "sms_up.json").read_bytes())
    assert (first.event_key, first.from_number, first.text, first.to) == (
        "1234567890",
        "+8613800138000",
        "T",
        "Acme",
    )
    assert (second.event_key, second.from_number, second.text, second.to) == (
        "1234567891",
        "+8613900139000",
        "你好",
        "1234",
    )


def test_callbacks_need_the_accounts_token() -> None:
    provider = callback_provider()
    base = "https://comms.test/webhooks/aliyun/acc_1/status"
    body = (HERE / "sms_report.json").read_bytes()
    assert provider.verify_callback({}, body, f"{base}?token={TOKEN}")
    assert provider.verify_callback({}, body, f"{base}?a=1&token={TOKEN}")
    for url in (base, f"{base}?token=", f"{base}?token={TOKEN}x", f"{base}?token={TOKEN}&token={TOKEN}"):
        assert not provider.verify_callback({}, body, url)
    no_token = AliyunProvider(AliyunConfig(access_key_id=KEY_ID, access_key_secret=SECRET), None)
    assert not no_token.verify_callback({}, body, f"{base}?token={TOKEN}")
    assert json.loads(AliyunProvider.callback_answer[2]) == {"code": 0, "msg": "success"}


# ---- end to end through the API ------------------------------------------------------------------


@pytest.fixture
async def live_vendor() -> AsyncIterator[AliyunVendor]:
    async with AliyunVendor() as server:
        yield server


async def add_aliyun_account(service: Service, tenant: TenantKeys, vendor: AliyunVendor) -> dict[str, Any]:
    body = {
        "channel": "sms",
        "provider": "aliyun",
        "name": "aliyun",
        "config": {
            "access_key_id": KEY_ID,
            "access_key_secret": SECRET,
            "endpoint": f"{vendor.url}/",
            "sign_name": "Acme",
            "callback_token": TOKEN,
            "timeout_seconds": 2,
        },
    }
    answer = await service.client.post("/communication/providers", json=body, headers=tenant.headers())
    assert answer.status_code == 201, answer.text
    created = dict(answer.json()["data"])
    assert created["secret_fields_set"] == ["access_key_secret", "callback_token"]
    assert "access_key_secret" not in created["config"] and "callback_token" not in created["config"]
    return created


async def add_template(service: Service, tenant: TenantKeys, code: str, category: str, content: str) -> None:
    body = {
        "code": code,
        "channel": "sms",
        "category": category,
        "content": content,
        "provider_templates": {"aliyun": {"template_code": "SMS_154950909", "sign_name": "Acme"}},
    }
    answer = await service.client.post("/communication/templates", json=body, headers=tenant.headers())
    assert answer.status_code == 201, answer.text


async def test_bulk_goes_through_aliyun_and_receipts_mark_it_delivered(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    account = await add_aliyun_account(live_service, live_tenant, live_vendor)
    await add_template(live_service, live_tenant, "verify_code", "verification", "Your code is {{ code }}")
    recipients = [{"to": f"138001{i:05d}", "variables": {"code": f"{100000 + i}"}} for i in range(3)]
    answer = await live_service.client.post(
        "/communication/bulk",
        json={"channel": "sms", "template": "verify_code", "recipients": recipients},
        headers=live_tenant.headers(),
    )
    assert answer.status_code in (200, 201, 202), answer.text
    batch = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 3}

    await wait_until(sent)
    calls = live_vendor.sends()
    assert [c["Action"] for c in calls] == ["SendSms"] * 3 and live_vendor.bad_signatures == 0
    assert {json.loads(c["TemplateParam"])["code"] for c in calls} == {"100000", "100001", "100002"}
    assert live_vendor.problems == []
    async with live_service.db.read() as session:
        rows = (await session.scalars(select(Message).where(Message.batch_id == batch))).all()
    biz_of = {r["OutId"]: r["_biz_id"] for r in live_vendor.records}
    assert {row.id: row.provider_message_id for row in rows} == {row.id: biz_of[row.id] for row in rows}

    path = urlsplit(account["callback_urls"]["status"]).path
    assert urlsplit(account["callback_urls"]["status"]).query == f"token={TOKEN}"  # ready to paste
    body = [report(r["PhoneNum"], r["_biz_id"], r["OutId"], True) for r in live_vendor.records]
    pushed = await live_service.client.post(f"{path}?token={TOKEN}", json=body)
    assert pushed.status_code == 200 and pushed.json() == {"code": 0, "msg": "success"}
    assert await statuses(live_service, batch) == {"delivered": 3}

    async def stored() -> int:
        async with live_service.db.read() as session:
            count = await session.scalar(
                select(func.count()).select_from(ReceiptEvent).where(ReceiptEvent.account_id == account["id"])
            )
        return int(count or 0)

    assert await stored() == 3
    again = await live_service.client.post(f"{path}?token={TOKEN}", json=body)  # Aliyun re-pushes
    assert again.status_code == 200 and await stored() == 3
    assert await statuses(live_service, batch) == {"delivered": 3}
    for url in (path, f"{path}?token=wrong-token-000000000"):
        refused = await live_service.client.post(url, json=body)
        assert refused.status_code == 401
    assert await stored() == 3


async def test_a_bulk_with_shared_variables_is_one_aliyun_call(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    await add_aliyun_account(live_service, live_tenant, live_vendor)
    await add_template(live_service, live_tenant, "parcel", "transactional", "Parcel {{ p }} is on its way")
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "template": "parcel",
            "variables": {"p": "PX-9"},
            "recipients": [f"138002{i:05d}" for i in range(5)],
        },
        headers=live_tenant.headers(),
    )
    batch = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 5}

    await wait_until(sent)
    [call] = live_vendor.sends()
    assert call["Action"] == "SendSms" and len(call["PhoneNumbers"].split(",")) == 5
    assert json.loads(call["TemplateParam"]) == {"p": "PX-9"}


async def test_hanging_vendor_concurrency_is_bounded(vendor: AliyunVendor, provider: AliyunProvider) -> None:
    vendor.mode = "hang"
    vendor.hang_seconds = 5.0
    messages = [sms(i, "verification", variables={"code": str(i)}) for i in range(40)]
    results = await asyncio.wait_for(provider.send(messages), timeout=10)
    unknown = [r for r in results if r.outcome is Outcome.UNKNOWN]
    assert 1 <= len(unknown) <= 16  # the calls in flight; none started after the first timeout
    assert all(r.outcome is Outcome.RETRY for r in results if r.outcome is not Outcome.UNKNOWN)


async def test_a_send_whose_answer_was_lost_is_reconciled_not_sent_again(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    """Aliyun took the message but its answer never came (UNKNOWN): the dispatcher asks
    QuerySendDetails by OutId = our log id before any re-send, finds it, and records ``sent``."""
    account = await add_aliyun_account(live_service, live_tenant, live_vendor)
    update = {"config": {"timeout_seconds": 1.0}}
    changed = await live_service.client.put(
        f"/communication/providers/{account['id']}", json=update, headers=live_tenant.headers()
    )
    assert changed.status_code == 200, changed.text
    await add_template(live_service, live_tenant, "verify_code", "verification", "Your code is {{ code }}")
    live_vendor.lose_next_answer, live_vendor.hang_seconds = True, 3.0
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "template": "verify_code",
            "recipients": [{"to": "13800100000", "variables": {"code": "4711"}}],
        },
        headers=live_tenant.headers(),
    )
    log_id = answer.json()["items"][0]["id"]

    async def settled() -> bool:
        return await statuses(live_service, answer.json()["batch_id"]) == {"sent": 1}

    await wait_until(settled)
    async with live_service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.response is not None and row.response.startswith("reconciled with aliyun")
    assert row.possible_duplicate is True  # the log still says a duplicate was possible
    assert live_vendor.accepted_sends() == 1 and list(live_vendor.delivered.values()) == [1]  # not sent twice
    assert [action for action, _ in live_vendor.calls].count("QuerySendDetails") >= 1
    # QuerySendDetails does not return the BizId; Aliyun's receipts still find the item by OutId.


async def held_back_sms(
    service: Service, tenant: TenantKeys, vendor: AliyunVendor, to: str, category: str = "verification"
) -> tuple[str, str]:
    """One SMS through an Aliyun account that answers isv.BUSINESS_LIMIT_CONTROL: (batch, log id)."""
    await add_aliyun_account(service, tenant, vendor)
    await add_template(service, tenant, "held", category, "Your code is {{ code }}")
    vendor.force_code = "isv.BUSINESS_LIMIT_CONTROL"
    answer = await service.client.post(
        "/communication/bulk",
        json={"channel": "sms", "template": "held", "recipients": [{"to": to, "variables": {"code": "1"}}]},
        headers=tenant.headers(),
    )
    return answer.json()["batch_id"], answer.json()["items"][0]["id"]


async def deferred_or_failed(service: Service, log_id: str, deferrals: int) -> Message:
    """The row once it was deferred ``deferrals`` times, or failed."""

    async def reached() -> bool:
        async with service.db.read() as session:
            row = await session.get(Message, log_id)
        return row is not None and (row.deferrals == deferrals or row.status == "failed")

    await wait_until(reached)
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None
    return row


async def due_now(service: Service, log_id: str, **values: Any) -> None:
    """As if the wait had passed."""
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == log_id)
            .values(due_at=datetime.now(UTC), queue_rank=0, **values)
        )
    service.app.state.dispatcher.wake()


async def test_flow_control_makes_the_item_deferred_until_the_retry_time(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    """isv.BUSINESS_LIMIT_CONTROL through the dispatcher: ``deferred`` with its retry time, not
    failed, and no attempt budget spent on it."""
    _, log_id = await held_back_sms(live_service, live_tenant, live_vendor, "13800100000")
    row = await deferred_or_failed(live_service, log_id, 1)
    assert row.status == "deferred" and row.due_at is not None and row.error is not None
    assert row.error.startswith(
        "deferred by the provider's flow control (1 of 31): isv.BUSINESS_LIMIT_CONTROL"
    )
    assert 50 <= (row.due_at - row.updated_at).total_seconds() <= 70  # Aliyun's minute
    assert row.deferrals == 1 and row.attempts == 0


async def test_a_code_held_back_until_it_would_be_stale_fails(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    """A verification code is deferred like any message, 1, 2, 4 minutes; the next wait (8) would
    deliver a stale code, so it fails instead, saying why."""
    _, log_id = await held_back_sms(live_service, live_tenant, live_vendor, "13800100002")
    for count in (1, 2, 3, 4):
        row = await deferred_or_failed(live_service, log_id, count)
        if row.status == "failed":
            break
        await due_now(live_service, log_id)
    assert (row.status, row.deferrals) == ("failed", 3)
    assert row.error == (
        "the provider holds this number back (isv.BUSINESS_LIMIT_CONTROL: 触发分钟级流控Permits:1); "
        "tried again 480 s later, the code would be stale"
    )


async def test_flow_control_that_goes_on_backs_off_and_gives_up(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    """A number the vendor keeps holding back (a daily limit): each deferral waits twice as long
    as the one before, up to an hour, and the item fails at the 31st (25 hours on) instead of
    being tried every minute for ever. A retry of the batch starts the count again."""
    batch_id, log_id = await held_back_sms(
        live_service, live_tenant, live_vendor, "13800100001", "transactional"
    )

    async def deferral(count: int) -> Message:
        return await deferred_or_failed(live_service, log_id, count)

    async def due_now_(**values: Any) -> None:
        await due_now(live_service, log_id, **values)

    waits = []
    for count in (1, 2, 3):
        row = await deferral(count)
        assert row.status == "deferred" and row.due_at is not None
        waits.append((row.due_at - row.updated_at).total_seconds())
        await due_now_()
    assert [round(w / 60) for w in waits] == [1, 2, 4]
    # The round just made due must be recorded before the row is changed again (a change made
    # while it is in flight would be overwritten by its outcome).
    await deferral(4)
    await due_now_(deferrals=29)  # a long way on: 29 deferrals so far
    row = await deferral(30)
    assert (
        row.status == "deferred" and 3590 <= (row.due_at - row.updated_at).total_seconds() <= 3610
    )  # at most an hour
    await due_now_()
    row = await deferral(31)
    assert row.status == "failed" and row.error is not None
    assert row.error.startswith(
        "the provider's flow control held this message back 31 times: isv.BUSINESS_LIMIT_CONTROL"
    )
    live_vendor.force_code = None
    retried = await live_service.client.post(
        f"/communication/batches/{batch_id}/retry", headers=live_tenant.headers()
    )
    assert retried.status_code == 200, retried.text

    async def sent() -> bool:
        return await statuses(live_service, batch_id) == {"sent": 1}

    await wait_until(sent)
    async with live_service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.deferrals == 0


async def test_a_number_aliyun_writes_ambiguously_is_read_as_the_one_the_tenant_sent_to(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    """Aliyun writes +1 347 555 0123 as 13475550123, which is also a mainland 134 mobile. The
    tenant sent to the +1 number: its report finds that message, and its TD suppresses the +1
    number, not the mainland one; a number this account never sent to (another account of the
    tenant did) is read as mainland."""
    account = await add_aliyun_account(live_service, live_tenant, live_vendor)
    await add_template(live_service, live_tenant, "notice", "transactional", "Parcel {{ p }}")
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "template": "notice",
            "recipients": [
                {"to": "+13475550123", "variables": {"p": "1"}},
                {"to": "+13475550199", "variables": {"p": "2"}},
            ],
        },
        headers=live_tenant.headers(),
    )
    batch, log_id = answer.json()["batch_id"], answer.json()["items"][0]["id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 2}

    await wait_until(sent)
    async with live_service.db.begin() as session:  # as a call covering several numbers records it
        await session.execute(
            update(Message)
            .where(Message.id == log_id)
            .values(provider_message_id=f"B77:{number_tag('+13475550123')}")
        )
        await session.execute(  # as if the tenant's US account had sent this one
            update(Message)
            .where(Message.id == answer.json()["items"][1]["id"])
            .values(provider_account_id="acc_twilio_us")
        )
    status_path = urlsplit(account["callback_urls"]["status"]).path
    pushed = await live_service.client.post(
        f"{status_path}?token={TOKEN}", json=[report("13475550123", "B77", f"{log_id}..{log_id}z", True)]
    )
    assert pushed.status_code == 200
    assert await statuses(live_service, batch) == {"delivered": 1, "sent": 1}

    inbound_path = urlsplit(account["callback_urls"]["inbound"]).path
    for sequence, number in enumerate(("13475550123", "13475550199")):
        up = [{"phone_number": number, "content": "TD", "sign_name": "Acme", "sequence_id": sequence}]
        replied = await live_service.client.post(f"{inbound_path}?token={TOKEN}", json=up)
        assert replied.status_code == 200, replied.text
    async with live_service.db.read() as session:
        suppressed = set((await session.scalars(select(Suppression.address))).all())
    assert suppressed == {"+13475550123", "+8613475550199"}


async def test_a_message_without_an_aliyun_template_goes_to_a_route_that_needs_none(
    live_service: Service, live_tenant: TenantKeys, live_vendor: AliyunVendor
) -> None:
    """``requires_template`` drives routing: with no Aliyun template the next account sends it;
    with Aliyun alone it fails saying what to set, and Aliyun is never called."""
    from tests.webhook_sink import WebhookSink

    await add_aliyun_account(live_service, live_tenant, live_vendor)
    body = {
        "channel": "sms",
        "category": "transactional",
        "content": "Parcel ready",
        "recipients": ["13800100000"],
    }
    alone = await live_service.client.post("/communication/bulk", json=body, headers=live_tenant.headers())

    async def failed() -> bool:
        return await statuses(live_service, alone.json()["batch_id"]) == {"failed": 1}

    await wait_until(failed)
    async with live_service.db.read() as session:
        row = await session.get(Message, alone.json()["items"][0]["id"])
    assert row is not None and row.error == (
        "no provider can carry it: aliyun sends registered templates only: set provider_templates.aliyun"
    )
    sink = await WebhookSink("s3cret-s3cret-s3cret").start()
    try:
        second = {
            "channel": "sms",
            "provider": "webhook",
            "name": "gateway",
            "priority": 5,
            "config": {"url": sink.url, "secret": "s3cret-s3cret-s3cret"},
        }
        created = await live_service.client.post(
            "/communication/providers", json=second, headers=live_tenant.headers()
        )
        assert created.status_code == 201, created.text
        live_service.app.state.dispatcher.router.refresh()  # see the new account now, not in 5 s
        routed = await live_service.client.post(
            "/communication/bulk", json={**body, "recipients": ["13800100001"]}, headers=live_tenant.headers()
        )

        async def sent() -> bool:
            return await statuses(live_service, routed.json()["batch_id"]) == {"sent": 1}

        await wait_until(sent)
        assert len(sink.received) == 1 and live_vendor.accepted_sends() == 0
    finally:
        await sink.stop()
