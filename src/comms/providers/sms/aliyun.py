"""The ``aliyun`` provider: Alibaba Cloud Short Message Service (``dysmsapi``, API version 2017-05-25).

Aliyun sends only registered templates: a message carries a ``TemplateCode`` and its variables
(``TemplateParam``), never our rendered text, so the batch's ``provider_templates["aliyun"]``
(``{"template_code", "sign_name"}``) is required.

Requests are RPC calls, one form-encoded ``POST <endpoint>`` each, signed with Aliyun's classic
signature (SignatureVersion 1.0)::

    Action=SendSms&Format=JSON&Version=2017-05-25&AccessKeyId=...&SignatureMethod=HMAC-SHA1
    &SignatureVersion=1.0&SignatureNonce=<uuid>&Timestamp=2026-11-26T08:00:00Z&RegionId=cn-hangzhou
    &PhoneNumbers=13800138000,13900139000&SignName=...&TemplateCode=SMS_1&TemplateParam={"code":"1"}
    &OutId=log_...&Signature=<base64 HMAC-SHA1(secret + "&", StringToSign)>

    StringToSign = "POST&%2F&" + encode("k1=v1&k2=v2..." sorted by name, each name and value encoded)

where ``encode`` is RFC 3986 percent-encoding (space ``%20``, ``*`` ``%2A``, ``~`` kept).

Which call (chosen per group of messages inside one ``send``):

- ``SendSms`` (up to 1,000 numbers, comma-separated, one shared ``TemplateParam``) for messages
  that share template, signature and variables;
- ``SendBatchSms`` (up to 100 numbers, per-number ``SignNameJson`` and ``TemplateParamJson``
  arrays) for messages of one template whose variables differ;
- a ``SendSms`` of its own for each ``verification`` message, as Aliyun advises for codes (bulk
  calls may be delayed), and for any message left alone in its group.

Aliyun takes one ``OutId`` and answers one ``BizId`` per call. A call with one number gets
``OutId`` = our log id and ``provider_message_id`` = ``BizId``; a call with several numbers gets
``OutId`` = ``<lowest log id>..<highest log id>`` of its messages and, per message,
``provider_message_id`` = ``<BizId>:<tag>``, where ``tag`` is 12 hex digits of SHA-256 of the
E.164 number (unique per message without putting the number itself into an id). Receipts echo
``biz_id``, ``out_id`` and ``phone_number``, so each receipt names the same pair.

Delivery receipts (SmsReport) and replies (SmsUp) are pushed as JSON arrays and carry no
signature: the URL registered in the Aliyun console holds a per-account secret token,
``<callback_urls.status>?token=<callback_token>`` (and the same for ``inbound``; the account's
``callback_urls`` are these URLs). comms generates the token when an account is created without
one (comms.accounts.service.with_generated_secrets); an account stored without one (created before
that) refuses every callback until an update of its config gives it one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import msgspec
import phonenumbers
from pydantic import BaseModel, ConfigDict, Field

from comms.errors import PermanentProviderError, ProviderError, TransientProviderError
from comms.kit.clock import service_now
from comms.kit.ids import id_has_prefix
from comms.kit.urls import HttpUrl
from comms.providers.base import (
    GATEWAY_UNCERTAIN,
    DeliveryEvent,
    InboundSms,
    OutboundMessage,
    Outcome,
    Provider,
    ProviderContext,
    SendResult,
    certainly_unsent,
    client_error_text,
    gateway_uncertain,
)
from comms.providers.calls import RequestPool, bounded_map, carries_code, fault

API_VERSION = "2017-05-25"
SEND_SMS_MAX_NUMBERS = 1000
SEND_BATCH_SMS_MAX_NUMBERS = 100
QUERY_PAGE_SIZE = 50  # QuerySendDetails allows 1..50
QUERY_MAX_PAGES = 20
MAX_CONCURRENT_CALLS = 16
CHINA_TIME = timezone(timedelta(hours=8), "CST")  # Aliyun's SendDate is a Beijing date
MISSING_TEMPLATE = "aliyun needs a template_code: set provider_templates.aliyun.template_code on the template"
MISSING_SIGN_NAME = (
    "aliyun needs a sign_name: set provider_templates.aliyun.sign_name on the template "
    "or sign_name on the provider account"
)

# ---- the vendor's codes, as data ------------------------------------------------------------------

# Whole-call refusals that no retry fixes: credentials, permissions, the account itself. Raised
# as the account's refusal (the dispatcher fails over); in a send where another call already
# reached Aliyun, the refused call's messages RETRY (the next attempt is refused as a whole).
PERMANENT_CALL_CODES: frozenset[str] = frozenset(
    {
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidSignatureMethod",
        "Forbidden.RAM",
        "Forbidden.RiskControl",
        "isp.RAM_PERMISSION_DENY",
        "isv.ACCOUNT_NOT_EXISTS",
        "isv.ACCOUNT_ABNORMAL",
        # Sending restricted for the account's safety, after 45 days without a message: only
        # Aliyun's account manager lifts it.
        "isv.SECURITY_FROZEN_ACCOUNT",
        "isv.RAM_CHECK_FAILED",  # the AccessKey's RAM authorisation failed
        "isv.PRODUCT_UN_SUBSCRIPT",
        "isv.PRODUCT_UNSUBSCRIBE",
        "isv.DENY_IP_RANGE",
        "InvalidApi.NotFound",
        "InvalidVersion",
    }
)

# Whole-call refusals that pass: throttling, outages, and account limits another account (or
# time) lifts. Value: the retry hint in seconds, where one makes sense.
TRANSIENT_CALL_CODES: dict[str, float | None] = {
    "Throttling": 1.0,
    "Throttling.User": 1.0,
    "Throttling.Api": 1.0,
    "isv.QPS_LIMIT_CONTROL": 1.0,
    "SignatureNonceUsed": None,
    "InvalidTimeStamp.Expired": None,
    "ServiceUnavailable": None,
    "InternalError": None,
    "isp.SYSTEM_ERROR": None,
    "isp.GATEWAY_ERROR": None,
    "isp.UNKNOWN": None,
    "isv.OUT_OF_SERVICE": 600.0,  # balance exhausted
    "isv.AMOUNT_NOT_ENOUGH": 600.0,
    "isv.DAY_LIMIT_CONTROL": 3600.0,  # the account's own daily cap, set in the console
    "isv.MONTH_LIMIT_CONTROL": 3600.0,
}

# Answers (HTTP 200, ``Code`` other than ``OK``) about the messages of the call.
MESSAGE_CODES: dict[str, tuple[Outcome, float | None]] = {
    # Flow control per number (verification codes: 1 a minute, 5 an hour, 10 a day).
    "isv.BUSINESS_LIMIT_CONTROL": (Outcome.DEFERRED, 60.0),
    "isv.MOBILE_NUMBER_ILLEGAL": (Outcome.FAILED, None),
    "isv.MOBILE_COUNT_OVER_LIMIT": (Outcome.FAILED, None),
    "isv.TEMPLATE_MISSING_PARAMETERS": (Outcome.FAILED, None),
    "isv.TEMPLATE_PARAMS_ILLEGAL": (Outcome.FAILED, None),
    "isv.SMS_TEMPLATE_ILLEGAL": (Outcome.FAILED, None),
    "isv.SMS_SIGNATURE_ILLEGAL": (Outcome.FAILED, None),
    "isv.SMS_SIGN_ILLEGAL": (Outcome.FAILED, None),
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL": (Outcome.FAILED, None),
    "isv.SIGN_STATE_ILLEGAL": (Outcome.FAILED, None),
    "isv.SMS_CONTENT_ILLEGAL": (Outcome.FAILED, None),
    "isv.BLACK_KEY_CONTROL_LIMIT": (Outcome.FAILED, None),
    "isv.INVALID_PARAMETERS": (Outcome.FAILED, None),
    "isv.INVALID_JSON_PARAM": (Outcome.FAILED, None),
    "isv.PARAM_LENGTH_LIMIT": (Outcome.FAILED, None),
    "isv.PARAM_NOT_SUPPORT_URL": (Outcome.FAILED, None),
    "isv.EXTEND_CODE_ERROR": (Outcome.FAILED, None),
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED": (Outcome.FAILED, None),
    "isv.NOT_SUPPORTED_COUNTRY": (Outcome.FAILED, None),
    "isv.COUNTRY_RESTRICTED": (Outcome.FAILED, None),
    "isv.FORBIDDEN_ACTION": (Outcome.FAILED, None),
}

# QuerySendDetails ``SendStatus``: 1 waiting for the carrier's receipt, 2 failed, 3 delivered.
SEND_STATUS: dict[int, tuple[Outcome, str]] = {
    1: (Outcome.SENT, "waiting for the carrier's receipt"),
    2: (Outcome.FAILED, "failed"),
    3: (Outcome.SENT, "delivered"),
}

CALLBACK_ANSWER = json.dumps(
    {"code": 0, "msg": "success"}, ensure_ascii=False, separators=(",", ":")
).encode()


class AliyunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_key_id: str = Field(min_length=1, max_length=128, examples=["LTAI5t..."])
    access_key_secret: str = Field(min_length=1, max_length=256, description="Signs each request.")
    endpoint: HttpUrl = Field(default="https://dysmsapi.aliyuncs.com/", pattern=r"^https?://")
    sign_name: str | None = Field(
        default=None,
        max_length=100,
        description="The approved signature (签名) used when a template does not name one.",
    )
    region_id: str = Field(default="cn-hangzhou", pattern=r"^[a-z0-9-]{1,40}$")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    callback_token: str | None = Field(
        default=None,
        min_length=16,
        max_length=128,
        pattern=r"^[A-Za-z0-9._~-]+$",
        description="Authenticates receipts and replies (Aliyun signs nothing it pushes): the account's "
        "callback_urls carry it as ?token=. Generated by comms when not given; without one (an "
        "account stored before that) every callback is refused.",
    )


# ---- signing ------------------------------------------------------------------------------------


def percent_encode(value: str) -> str:
    """Aliyun's encoding: RFC 3986 unreserved characters kept, everything else ``%XY`` (UTF-8)."""
    return quote(value, safe="")


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"


def signature(secret: str, method: str, params: Mapping[str, str]) -> str:
    """``Base64(HMAC-SHA1(secret + "&", StringToSign))`` over every parameter but ``Signature``."""
    unsigned = {k: v for k, v in params.items() if k != "Signature"}
    digest = hmac.new((secret + "&").encode(), string_to_sign(method, unsigned).encode(), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode()


# ---- numbers ------------------------------------------------------------------------------------

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def aliyun_number(e164: str) -> str | None:
    """Mainland China without ``+86``; elsewhere the country code and number without ``+``."""
    if not _E164.match(e164):
        return None
    return e164[3:] if e164.startswith("+86") else e164[1:]


def e164_of(number: str) -> str:
    """Back from Aliyun's forms (``138...``, ``86138...``, ``0086138...``, ``+86138...``, ``852...``):
    the likelier of :func:`e164_readings`."""
    return e164_readings(number)[0]


def e164_readings(number: str) -> tuple[str, ...]:
    """The E.164 numbers Aliyun's form of a number can be, likelier first. An 11-digit number
    starting with 1 is a mainland mobile when it is a valid one (13x-19x), else a +1 number with
    its country code (``1415...``: no mainland mobile starts 141), which Aliyun writes the same
    way. Digits that are both (+1 347... and the 134 mobile range) have two readings, +86 first:
    the caller decides by what the account sent (receipts/service.py)."""
    digits = "".join(ch for ch in number if ch.isascii() and ch.isdigit())
    if number.strip().startswith("+"):
        return ("+" + digits,)
    if digits.startswith("00"):
        digits = digits[2:]
    if len(digits) == 11 and digits.startswith("1"):
        mainland, american = _valid("+86" + digits), _valid("+" + digits)
        if american and not mainland:
            return ("+" + digits,)
        return ("+86" + digits, "+" + digits) if american else ("+86" + digits,)
    return ("+" + digits,)


def _valid(e164: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return False


def number_tag(e164: str) -> str:
    return hashlib.sha256(e164.encode()).hexdigest()[:12]


def out_id_covers(out_id: str | None, log_id: str) -> bool:
    """Whether an ``OutId`` we sent names ``log_id``: itself, or a ``first..last`` range of a call."""
    if not out_id:
        return False
    if out_id == log_id:
        return True
    first, sep, last = out_id.partition("..")
    return (
        bool(sep) and id_has_prefix(first, "log") and id_has_prefix(last, "log") and first <= log_id <= last
    )


# ---- the provider -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prepared:
    message: OutboundMessage
    number: str
    domestic: bool  # mainland China: Aliyun's domestic and international templates never mix
    template_code: str
    sign_name: str
    params: str  # TemplateParam: a JSON object of strings, keys sorted


@dataclass(frozen=True, slots=True)
class _Call:
    action: str
    members: tuple[_Prepared, ...]
    params: dict[str, str]


class _NoAnswer(Exception):
    """The request may have reached Aliyun, but no answer came back."""


class _AccountRefused(PermanentProviderError):
    """Aliyun refused the account itself (PERMANENT_CALL_CODES), not the call's messages."""


class AliyunProvider(Provider):
    name: ClassVar[str] = "aliyun"
    channels: ClassVar[frozenset[str]] = frozenset({"sms"})
    Config: ClassVar[type[BaseModel]] = AliyunConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"access_key_secret", "callback_token"})
    max_batch: ClassVar[int] = SEND_SMS_MAX_NUMBERS  # split further per call inside send()
    requires_template: ClassVar[bool] = True
    can_reconcile: ClassVar[bool] = True
    callback_answer: ClassVar[tuple[int, str, bytes]] = (200, "application/json", CALLBACK_ANSWER)

    def __init__(
        self,
        config: AliyunConfig,
        http: aiohttp.ClientSession | None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.http = http
        self.clock = clock or service_now
        # The account's requests in flight in this process (see RequestPool).
        self._pool = RequestPool(MAX_CONCURRENT_CALLS)

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, AliyunConfig)
        return cls(config, context.http)

    # ---- sending --------------------------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        results: dict[str, SendResult] = {}
        prepared: list[_Prepared] = []
        for message in messages:
            item = self._prepare(message)
            if isinstance(item, SendResult):
                results[message.id] = item
            else:
                prepared.append(item)
        calls = plan_calls(prepared)
        if calls:
            results.update(await self._run(calls))
        return [results[m.id] for m in messages]

    def _prepare(self, message: OutboundMessage) -> _Prepared | SendResult:
        entry = (message.provider_template or {}).get(self.name)
        entry = entry if isinstance(entry, Mapping) else {}
        template_code = str(entry.get("template_code") or "").strip()
        if not template_code:
            return SendResult(message.id, Outcome.FAILED, error=MISSING_TEMPLATE)
        sign_name = str(entry.get("sign_name") or self.config.sign_name or "").strip()
        if not sign_name:
            return SendResult(message.id, Outcome.FAILED, error=MISSING_SIGN_NAME)
        number = aliyun_number(message.to)
        if number is None:
            return SendResult(message.id, Outcome.FAILED, error="aliyun: not an E.164 phone number")
        params = json.dumps(
            {str(k): str(v) for k, v in message.variables.items()},
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        )
        return _Prepared(message, number, message.to.startswith("+86"), template_code, sign_name, params)

    async def _run(self, calls: list[_Call]) -> dict[str, SendResult]:
        """Make the calls through the account's pool (at most MAX_CONCURRENT_CALLS at a time).

        Once a call is refused or unanswered no new call starts (their messages are RETRY: never
        sent). Only when no call reached Aliyun at all does the refusal propagate, so the
        dispatcher can offer the whole chunk to the next account without sending anything twice.
        """
        stopped: list[ProviderError | _NoAnswer] = []
        refused: list[ProviderError] = []
        reached = False
        results: dict[str, SendResult] = {}

        async def run(call: _Call) -> None:
            nonlocal reached
            if stopped:
                reason = stopped[0]
                error = f"not sent: an earlier call failed ({_reason(reason)})"
                retry_after = reason.retry_after if isinstance(reason, ProviderError) else None
                for p in call.members:
                    results[p.message.id] = SendResult(
                        p.message.id, Outcome.RETRY, error=error, retry_after=retry_after
                    )
                return
            try:
                payload = await self._call(call.action, call.params)
                answered = _call_results(call, payload)
            except ProviderError as exc:
                stopped.append(exc)
                refused.append(exc)
                # Refused content fails its messages; an account refusal or an outage is no fault
                # of theirs: RETRY (raised instead below when no call reached Aliyun).
                failed = isinstance(exc, PermanentProviderError) and not isinstance(exc, _AccountRefused)
                outcome = Outcome.FAILED if failed else Outcome.RETRY
                for p in call.members:
                    results[p.message.id] = SendResult(
                        p.message.id, outcome, error=f"aliyun: {exc.message}", retry_after=exc.retry_after
                    )
                return
            except _NoAnswer as exc:
                stopped.append(exc)
                reached = True
                for p in call.members:
                    results[p.message.id] = SendResult(p.message.id, Outcome.UNKNOWN, error=str(exc))
                return
            except Exception as exc:  # a fault of ours mid-call: this call's messages, UNKNOWN
                reached = True
                for p in call.members:
                    results[p.message.id] = SendResult(p.message.id, Outcome.UNKNOWN, error=fault(exc))
                return
            reached = True
            results.update((r.message_id, r) for r in answered)

        await self._pool.map(calls, run, lambda call: carries_code([p.message for p in call.members]))
        if not reached and refused:
            account = [e for e in refused if isinstance(e, _AccountRefused)]
            permanent = [e for e in refused if isinstance(e, PermanentProviderError)]
            raise (account or permanent or refused)[0]
        return results

    async def _call(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """One signed RPC call; raises when Aliyun refused it as a whole, _NoAnswer when unanswered."""
        if self.http is None:
            raise TransientProviderError("no HTTP session: this instance only parses callbacks")
        body = self.signed_body(action, params)
        # A TCP connect that times out (at half the budget) certainly sent nothing: transient.
        seconds = self.config.timeout_seconds
        timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds / 2, 5.0))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Accept": "application/json",
        }
        try:
            async with self.http.post(
                self.config.endpoint, data=body, headers=headers, timeout=timeout
            ) as answer:
                status = answer.status
                raw = await answer.read()
        except aiohttp.ClientConnectorError as exc:  # never connected: certainly not sent
            raise TransientProviderError(f"cannot connect: {exc.os_error or exc}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientProviderError(f"cannot connect: {exc}") from exc
        except TimeoutError as exc:
            raise _NoAnswer("no answer from aliyun within the timeout") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise _NoAnswer(f"connection to aliyun lost: {exc}") from exc
        except aiohttp.ClientOSError as exc:  # connected, then the socket failed: it may have arrived
            raise _NoAnswer(f"connection to aliyun failed mid-call: {exc}") from exc
        except aiohttp.ClientError as exc:
            if certainly_unsent(exc):
                raise TransientProviderError(f"request failed: {client_error_text(exc)}") from exc
            raise _NoAnswer(f"unreadable answer from aliyun: {client_error_text(exc)}") from exc
        payload = _decode(raw)
        code = str(payload.get("Code") or "")
        text = f"{code}: {payload.get('Message') or ''}" if code else f"HTTP {status}: {raw[:200]!r}"
        if code in PERMANENT_CALL_CODES:
            raise _AccountRefused(text)
        if code in TRANSIENT_CALL_CODES:
            raise TransientProviderError(text, TRANSIENT_CALL_CODES[code])
        if status in GATEWAY_UNCERTAIN and not code:
            raise _NoAnswer(gateway_uncertain(status, "aliyun"))
        if status == 429 or status >= 500:
            raise TransientProviderError(text)
        if status >= 400 and code not in MESSAGE_CODES:
            raise PermanentProviderError(text)
        if not code:
            raise _NoAnswer(f"unreadable answer from aliyun (HTTP {status})")
        return payload

    def signed_body(self, action: str, params: Mapping[str, str]) -> bytes:
        full = {
            "Action": action,
            "Format": "JSON",
            "Version": API_VERSION,
            "AccessKeyId": self.config.access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": uuid.uuid4().hex,
            "Timestamp": self.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "RegionId": self.config.region_id,
            **params,
        }
        full["Signature"] = signature(self.config.access_key_secret, "POST", full)
        return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in full.items()).encode()

    # ---- reconciliation -------------------------------------------------------------------------

    async def reconcile(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Ask QuerySendDetails (per number, today and yesterday in Beijing) for a record whose
        ``OutId`` names the message: SendStatus 3 delivered and 1 waiting are SENT, 2 FAILED;
        no record is UNKNOWN (it may then be sent once more, flagged).

        A record of a several-number call (``OutId`` ``first..last``) spans ids of other messages
        too, and another of ours to the same number may have ridden in that call while this one
        never left. Such a record counts only when its template is the message's and its text
        carries every variable value of the message; two such records are ambiguous (UNKNOWN).
        What is left is one case: the same template with the same values to the same number, in
        two messages whose ids fall in one call's range."""
        return await bounded_map(messages, self._reconcile_one, MAX_CONCURRENT_CALLS)

    async def _reconcile_one(self, message: OutboundMessage) -> SendResult:
        number = aliyun_number(message.to)
        if number is None:
            return SendResult(message.id, Outcome.UNKNOWN, error="aliyun: not an E.164 phone number")
        today = self.clock().astimezone(CHINA_TIME).date()
        try:
            for day in (today, today - timedelta(days=1)):
                record = await self._find(number, day.strftime("%Y%m%d"), message)
                if record is not None:
                    return _reconciled(message, record)
        except (ProviderError, _NoAnswer) as exc:
            return SendResult(message.id, Outcome.UNKNOWN, error=f"aliyun could not be asked: {_reason(exc)}")
        return SendResult(message.id, Outcome.UNKNOWN, error="aliyun has no record of it")

    async def _find(self, number: str, send_date: str, message: OutboundMessage) -> dict[str, Any] | None:
        spanning: list[dict[str, Any]] = []
        for page in range(1, QUERY_MAX_PAGES + 1):
            params = {
                "PhoneNumber": number,
                "SendDate": send_date,
                "PageSize": str(QUERY_PAGE_SIZE),
                "CurrentPage": str(page),
            }
            payload = await self._call("QuerySendDetails", params)
            if payload.get("Code") != "OK":
                raise TransientProviderError(f"{payload.get('Code')}: {payload.get('Message') or ''}")
            dtos = payload.get("SmsSendDetailDTOs") or {}
            listed = dtos.get("SmsSendDetailDTO") if isinstance(dtos, dict) else None
            records: list[dict[str, Any]] = [r for r in listed or [] if isinstance(r, dict)]
            for record in records:
                out_id = record.get("OutId")
                if out_id == message.id:
                    return record
                if out_id_covers(out_id, message.id) and _could_be(record, message):
                    spanning.append(record)
            if len(records) < QUERY_PAGE_SIZE or page * QUERY_PAGE_SIZE >= _int(payload.get("TotalCount")):
                break
        return spanning[0] if len(spanning) == 1 else None

    # ---- callbacks ------------------------------------------------------------------------------

    def callback_scope(self) -> str | None:
        # Receipt pushes are configured per Aliyun account (one AccessKey is one account's), and
        # Aliyun signs none: only the URL's token proves a push, so two comms accounts share their
        # receipts only when the tenant gave both the same callback_token as well.
        token = hashlib.sha256((self.config.callback_token or "").encode()).hexdigest()
        return f"aliyun:{self.config.access_key_id}:{token}" if self.config.callback_token else None

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        """Aliyun signs nothing it pushes: the registered URL carries ``?token=<callback_token>``."""
        expected = self.config.callback_token
        if not expected:
            return False
        given = parse_qs(urlsplit(url).query).get("token", [])
        return len(given) == 1 and hmac.compare_digest(given[0].encode(), expected.encode())

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        """SmsReport: ``[{"phone_number", "send_time", "report_time", "success", "err_code",
        "err_msg", "sms_size", "biz_id", "out_id"}]``."""
        events = []
        for r in msgspec.json.decode(body, type=list[_Report]):
            e164, *others = e164_readings(r.phone_number)
            tag = number_tag(e164)
            single = bool(r.out_id) and id_has_prefix(str(r.out_id), "log")
            error = None
            if not r.success:
                error = ": ".join(x for x in (r.err_code, r.err_msg) if x) or "undelivered"
            events.append(
                DeliveryEvent(
                    event_key=f"{r.biz_id}:{tag}:{r.report_time or ''}:{'ok' if r.success else 'fail'}",
                    message_id=str(r.out_id) if single else None,
                    provider_message_id=r.biz_id if single else f"{r.biz_id}:{tag}",
                    status="delivered" if r.success else "undelivered",
                    error=error,
                    # The same call's id under the number's other reading (+1 or +86).
                    other_provider_message_ids=()
                    if single
                    else tuple(f"{r.biz_id}:{number_tag(o)}" for o in others),
                )
            )
        return events

    def parse_inbound(self, body: bytes) -> list[InboundSms]:
        """SmsUp: ``[{"phone_number", "send_time", "content", "sign_name", "dest_code", "sequence_id"}]``."""
        inbound = []
        for m in msgspec.json.decode(body, type=list[_Up]):
            number, *others = e164_readings(m.phone_number)
            inbound.append(
                InboundSms(
                    event_key=str(m.sequence_id),
                    from_number=number,
                    text=m.content,
                    to=m.sign_name or m.dest_code,
                    other_readings=tuple(others),
                )
            )
        return inbound


class _Report(msgspec.Struct):
    phone_number: str
    success: bool
    biz_id: str
    out_id: str | int | None = None
    send_time: str | None = None
    report_time: str | None = None
    err_code: str | None = None
    err_msg: str | None = None
    sms_size: str | int | None = None


class _Up(msgspec.Struct):
    phone_number: str
    content: str
    sequence_id: int | str
    send_time: str | None = None
    sign_name: str | None = None
    dest_code: str | None = None


# ---- planning the calls -------------------------------------------------------------------------


def plan_calls(prepared: Sequence[_Prepared]) -> list[_Call]:
    """Group messages into SendSms / SendBatchSms calls; every message lands in exactly one call,
    mainland and international numbers never share one, and no number appears twice in one call
    (its receipts could not be told apart)."""
    calls: list[_Call] = []
    shared: dict[tuple[str, bool, str, str], list[_Prepared]] = {}
    for p in prepared:
        if p.message.category == "verification":
            calls.append(_send_sms([p]))
        else:
            shared.setdefault((p.template_code, p.domestic, p.sign_name, p.params), []).append(p)
    alone: dict[tuple[str, bool], list[_Prepared]] = {}
    for group in shared.values():
        if len(group) == 1:
            alone.setdefault((group[0].template_code, group[0].domestic), []).append(group[0])
            continue
        for chunk in _chunks(group, SEND_SMS_MAX_NUMBERS):
            calls.append(_send_sms(chunk))
    for group in alone.values():
        for chunk in _chunks(group, SEND_BATCH_SMS_MAX_NUMBERS):
            calls.append(_send_sms(chunk) if len(chunk) == 1 else _send_batch_sms(chunk))
    return calls


def _chunks(items: Sequence[_Prepared], size: int) -> list[list[_Prepared]]:
    """Up to ``size`` per chunk, each number at most once per chunk, order kept."""
    chunks: list[list[_Prepared]] = []
    numbers: list[set[str]] = []
    for item in items:
        for chunk, seen in zip(chunks, numbers, strict=True):
            if len(chunk) < size and item.number not in seen:
                chunk.append(item)
                seen.add(item.number)
                break
        else:
            chunks.append([item])
            numbers.append({item.number})
    return chunks


def _out_id(members: Sequence[_Prepared]) -> str:
    ids = sorted(p.message.id for p in members)
    return ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"


def _send_sms(members: Sequence[_Prepared]) -> _Call:
    first = members[0]
    params = {
        "PhoneNumbers": ",".join(p.number for p in members),
        "SignName": first.sign_name,
        "TemplateCode": first.template_code,
        "OutId": _out_id(members),
    }
    if first.params != "{}":
        params["TemplateParam"] = first.params
    return _Call("SendSms", tuple(members), params)


def _send_batch_sms(members: Sequence[_Prepared]) -> _Call:
    def array(values: list[str]) -> str:
        return json.dumps(values, ensure_ascii=False, separators=(",", ":"))

    params = {
        "PhoneNumberJson": array([p.number for p in members]),
        "SignNameJson": array([p.sign_name for p in members]),
        "TemplateCode": members[0].template_code,
        "TemplateParamJson": "[" + ",".join(p.params for p in members) + "]",
        "OutId": _out_id(members),
    }
    return _Call("SendBatchSms", tuple(members), params)


# ---- reading answers ----------------------------------------------------------------------------


def _call_results(call: _Call, payload: Mapping[str, Any]) -> list[SendResult]:
    code = str(payload.get("Code"))
    if code == "OK":
        biz_id = str(payload.get("BizId") or "")
        response = f"{call.action} OK, BizId {biz_id}, RequestId {payload.get('RequestId') or ''}"
        single = len(call.members) == 1
        return [
            SendResult.sent(
                p.message.id,
                (biz_id if single else f"{biz_id}:{number_tag(p.message.to)}") if biz_id else None,
                response,
            )
            for p in call.members
        ]
    outcome, retry_after = MESSAGE_CODES.get(
        code, (Outcome.RETRY if code.startswith("isp.") else Outcome.FAILED, None)
    )
    error = f"{code}: {payload.get('Message') or ''}".rstrip(": ")
    return [
        SendResult(
            p.message.id, outcome, error=error, retry_after=retry_after, response=f"{call.action} {code}"
        )
        for p in call.members
    ]


def _could_be(record: Mapping[str, Any], message: OutboundMessage) -> bool:
    """Whether a record of a several-number call may be ``message``'s: same template, and its
    text carries each of the message's variable values (where Aliyun reports them)."""
    entry = (message.provider_template or {}).get(AliyunProvider.name)
    template_code = str(entry.get("template_code") or "") if isinstance(entry, Mapping) else ""
    if record.get("TemplateCode") and template_code and record["TemplateCode"] != template_code:
        return False
    content = record.get("Content")
    return not isinstance(content, str) or all(str(v) in content for v in message.variables.values())


def _reconciled(message: OutboundMessage, record: Mapping[str, Any]) -> SendResult:
    status = _int(record.get("SendStatus"))
    outcome, meaning = SEND_STATUS.get(status, (Outcome.SENT, f"SendStatus {status}"))
    response = f"found at aliyun: SendStatus {status} ({meaning})"
    if outcome is Outcome.FAILED:
        return SendResult(message.id, outcome, response=response, error=f"{record.get('ErrCode') or meaning}")
    return SendResult(message.id, outcome, response=response)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        payload = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ProviderError) else str(exc)


__all__ = [
    "AliyunConfig",
    "AliyunProvider",
    "aliyun_number",
    "e164_of",
    "e164_readings",
    "number_tag",
    "out_id_covers",
    "percent_encode",
    "plan_calls",
    "signature",
    "string_to_sign",
]
