"""The ``ses`` provider: Amazon SES API v2, with delivery events from SNS.

Sending. Every request is signed with AWS Signature Version 4 (botocore's ``SigV4Auth``, service
``ses``, the account's region) and goes to ``{endpoint}`` (default
``https://email.<region>.amazonaws.com``):

* ``SendEmail`` (``POST /v2/email/outbound-emails``), one per message, with ``Content.Raw``: the
  exact bytes comms builds (providers/email/outbound.py), so List-Unsubscribe, List-Id and the
  ``Message-ID <log id@sender domain>`` reach the recipient as they do over SMTP. Up to
  ``max_concurrency`` run at once.
* ``SendBulkEmail`` (``POST /v2/email/outbound-bulk-emails``, up to 50 ``BulkEmailEntries``) when
  the batch names a template stored at SES (``provider_templates: {"ses": {"template_name":
  "..."}}``): SES renders it per entry from ``ReplacementTemplateData`` (the message's variables,
  plus ``unsubscribe_url`` from its List-Unsubscribe header when it has one), and each entry
  carries the message's headers as ``ReplacementHeaders``. The template is used whenever it is
  named, not only when the variables differ: the content must not depend on who else happens
  to be in the same chunk.

Each message is tagged ``comms_id`` (its log id) and ``comms_tenant`` (``EmailTags`` /
``ReplacementTags``); SES echoes tags in ``mail.tags`` of the events a configuration set publishes.
Identity notifications carry no tags, so the log id is also read back from the Message-ID in
``mail.commonHeaders``.

Answers: the error code (``x-amzn-ErrorType``, else the body's ``code``/``__type``) maps through
:data:`ERRORS`: throttling and 5xx raise TransientProviderError, a suspended or paused account
and bad credentials PermanentProviderError, a rejected message FAILED. Bulk entries map through
:data:`BULK_STATUSES`. No answer in time is UNKNOWN. As for SendGrid, the first request of a
``send()`` goes alone (a refusal of it is raised, nothing else was tried); later refusals of
whole requests make their messages RETRY. SES has no idempotency key and no look-up by message,
so there is no reconciliation.

Receipts arrive as SNS messages (see providers/email/sns.py for the signature): only from the
configured ``sns_topic_arn``, at most an hour old, with the certificate fetched and cached by
:meth:`SesProvider.prepare_callback`. A SubscriptionConfirmation is confirmed by fetching its
SubscribeURL (same host rules as the certificate). Notification payloads map through
:data:`EVENTS`, one event per recipient, keyed ``<SNS MessageId>:<recipient index>``.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr
from typing import Any, ClassVar, Literal

import aiohttp
import msgspec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import BaseModel, ConfigDict, Field

from comms.errors import PermanentProviderError, TransientProviderError
from comms.kit.clock import unix_time
from comms.kit.ids import id_has_prefix
from comms.kit.urls import HttpUrl
from comms.providers.base import (
    GATEWAY_UNCERTAIN,
    DeliveryEvent,
    OutboundMessage,
    Outcome,
    Provider,
    ProviderContext,
    SendResult,
    certainly_unsent,
    client_error_text,
    gateway_uncertain,
)
from comms.providers.calls import RequestPool, send_calls
from comms.providers.email import sns
from comms.providers.email.outbound import email_bytes

log = logging.getLogger("comms.providers.ses")

MAX_BULK_ENTRIES = 50
MAX_HEADERS = 15  # MessageHeaderList
CALLBACK_MAX_AGE = 3600  # seconds: an older SNS message is a replay
CALLBACK_MAX_SKEW = 300  # seconds a message may be dated in the future

ErrorKind = Literal["transient", "account", "message"]
# SES error codes -> what they mean for the call. "account": the whole account cannot send now
# (fail over, raised as permanent); "message": this content or address (FAILED).
ERRORS: dict[str, ErrorKind] = {
    "TooManyRequestsException": "transient",
    "ThrottlingException": "transient",
    "Throttling": "transient",
    "LimitExceededException": "transient",  # e.g. the daily sending quota
    "InternalFailure": "transient",
    "InternalServerError": "transient",
    "ServiceUnavailable": "transient",
    "ServiceUnavailableException": "transient",
    "AccountSuspendedException": "account",
    "SendingPausedException": "account",
    "NotFoundException": "account",  # the configuration set or identity does not exist
    "AccessDeniedException": "account",
    "AccessDenied": "account",
    "UnrecognizedClientException": "account",
    "InvalidClientTokenId": "account",
    "InvalidSignatureException": "account",
    "SignatureDoesNotMatch": "account",
    "IncompleteSignature": "account",
    "IncompleteSignatureException": "account",
    "MissingAuthenticationTokenException": "account",
    "ExpiredTokenException": "account",
    "RequestExpired": "account",
    "MessageRejected": "message",
    "MailFromDomainNotVerifiedException": "message",
    "BadRequestException": "message",
}
# SendBulkEmail entry Status -> outcome; "account" ones raise when no entry went, else RETRY.
BULK_STATUSES: dict[str, Outcome | ErrorKind] = {
    "SUCCESS": Outcome.SENT,
    "MESSAGE_REJECTED": Outcome.FAILED,
    "MAIL_FROM_DOMAIN_NOT_VERIFIED": Outcome.FAILED,
    "CONFIGURATION_SET_NOT_FOUND": Outcome.FAILED,
    "TEMPLATE_NOT_FOUND": Outcome.FAILED,
    "INVALID_SENDING_POOL_NAME": Outcome.FAILED,
    "INVALID_PARAMETER": Outcome.FAILED,
    "FAILED": Outcome.FAILED,
    "ACCOUNT_THROTTLED": "transient",
    "ACCOUNT_DAILY_QUOTA_EXCEEDED": "transient",
    "TRANSIENT_FAILURE": "transient",
    "ACCOUNT_SUSPENDED": "account",
    "ACCOUNT_SENDING_PAUSED": "account",
    "CONFIGURATION_SET_SENDING_PAUSED": "account",
}
# eventType (configuration-set event publishing) or notificationType (identity notifications)
# -> (status, bounce). Send, Open, Click, DeliveryDelay and Subscription change no status.
EVENTS: dict[str, tuple[str, str | None]] = {
    "Delivery": ("delivered", None),
    "Bounce": ("undelivered", "soft"),  # the bounceType decides: BOUNCE_TYPES
    "Complaint": ("delivered", "complaint"),  # it arrived, and the recipient reported it as spam
    "Reject": ("undelivered", None),  # SES refused to send it (a virus)
    "Rendering Failure": ("undelivered", None),  # the stored template could not be rendered
}
BOUNCE_TYPES: dict[str, str] = {"Permanent": "hard", "Transient": "soft", "Undetermined": "soft"}
_REGION = r"^[a-z]{2}(-[a-z]+)+-\d+$"
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_UNSUBSCRIBE_URL = re.compile(r"<(https://[^>]+)>")


class SesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str = Field(pattern=_REGION, examples=["eu-west-1"])
    access_key_id: str = Field(min_length=16, max_length=128)
    secret_access_key: str = Field(min_length=1)
    endpoint: HttpUrl | None = Field(
        default=None, pattern=r"^https?://", description="Default: https://email.<region>.amazonaws.com"
    )
    configuration_set: str | None = Field(
        default=None, description="The configuration set whose event destination is the SNS topic."
    )
    from_arn: str | None = Field(
        default=None, description="FromEmailAddressIdentityArn (sending authorization)."
    )
    timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    max_concurrency: int = Field(default=10, ge=1, le=50, description="SendEmail requests in flight at once.")
    sns_topic_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}$",
        description="The only SNS topic whose messages are accepted; without it no receipt is.",
    )
    sns_cert_host_suffix: str = Field(
        default=".amazonaws.com",
        min_length=1,
        description='SNS certificates come from sns.<region> + this suffix (".amazonaws.com.cn" in '
        "China); a value without a leading dot names one exact host.",
    )
    sns_allow_http: bool = Field(default=False, description="Accept http:// certificate URLs (tests only).")
    byo_dkim: bool = Field(
        default=False,
        description="The domain's identity uses Bring Your Own DKIM (a TXT key of the tenant's) instead of "
        "Easy DKIM (CNAMEs into amazonses.com, which the domain check otherwise looks for).",
    )


@dataclass(frozen=True, slots=True)
class _Call:
    messages: list[OutboundMessage]
    path: str
    body: dict[str, Any]

    @property
    def bulk(self) -> bool:
        return self.path.endswith("bulk-emails")


class SesProvider(Provider):
    name: ClassVar[str] = "ses"
    channels: ClassVar[frozenset[str]] = frozenset({"email"})
    Config: ClassVar[type[BaseModel]] = SesConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"secret_access_key"})
    max_batch: ClassVar[int] = MAX_BULK_ENTRIES

    def __init__(self, config: SesConfig, http: aiohttp.ClientSession | None) -> None:
        self.config = config
        # The account's requests in flight in this process (see RequestPool).
        self._pool = RequestPool(config.max_concurrency)
        self.http = http
        self.endpoint = (config.endpoint or f"https://email.{config.region}.amazonaws.com").rstrip("/")
        self._signer = SigV4Auth(
            Credentials(config.access_key_id, config.secret_access_key), "ses", config.region
        )

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, SesConfig)
        return cls(config, context.http)

    @classmethod
    def dkim_hosts(cls, config: Any) -> tuple[str, ...]:
        # Easy DKIM: <token>._domainkey.<domain> CNAME <token>.dkim.amazonses.com (in some regions
        # <token>.dkim.<region>.amazonses.com; amazonses.com.cn in China).
        assert isinstance(config, SesConfig)
        return () if config.byo_dkim else ("amazonses.com", "amazonses.com.cn")

    # ---- sending -------------------------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        results: dict[str, SendResult] = {}
        calls: list[_Call] = []
        bulk: dict[tuple[str, str | None, str], list[OutboundMessage]] = {}
        for m in messages:
            template = _template_name(m)
            try:
                if not m.sender:
                    raise ValueError("no sender address")
                if template is not None:
                    # Checked now, so one bad message does not sink its entry group.
                    _headers(m)
                    _from_address(m.sender, m.sender_name)
                    bulk.setdefault((m.sender, m.sender_name, template), []).append(m)
                else:
                    calls.append(_Call([m], "/v2/email/outbound-emails", self._send_email(m)))
            except ValueError as exc:
                results[m.id] = SendResult(m.id, Outcome.FAILED, error=f"message not sendable: {exc}")
        for (sender, sender_name, template), members in bulk.items():
            for start in range(0, len(members), MAX_BULK_ENTRIES):
                chunk = members[start : start + MAX_BULK_ENTRIES]
                body = self._send_bulk_email(sender, sender_name, template, chunk)
                calls.append(_Call(chunk, "/v2/email/outbound-bulk-emails", body))
        for result in await send_calls(calls, self._execute, lambda c: c.messages, self._pool):
            results[result.message_id] = result
        return [results[m.id] for m in messages]

    def _common(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.config.from_arn:
            body["FromEmailAddressIdentityArn"] = self.config.from_arn
        if self.config.configuration_set:
            body["ConfigurationSetName"] = self.config.configuration_set
        return body

    def _send_email(self, m: OutboundMessage) -> dict[str, Any]:
        raw = email_bytes(m)  # ValueError for what cannot be a header
        return {
            "FromEmailAddress": m.sender,
            "Destination": {"ToAddresses": [m.to]},
            "Content": {"Raw": {"Data": base64.b64encode(raw).decode("ascii")}},
            "EmailTags": _tags(m),
            **self._common(),
        }

    def _send_bulk_email(
        self, sender: str, sender_name: str | None, template: str, messages: Sequence[OutboundMessage]
    ) -> dict[str, Any]:
        entries = []
        for m in messages:
            entry: dict[str, Any] = {
                "Destination": {"ToAddresses": [m.to]},
                "ReplacementTags": _tags(m),
                "ReplacementEmailContent": {
                    "ReplacementTemplate": {"ReplacementTemplateData": _template_data(m)}
                },
            }
            headers = _headers(m)
            if headers:
                entry["ReplacementHeaders"] = headers
            entries.append(entry)
        return {
            "FromEmailAddress": _from_address(sender, sender_name),
            "DefaultContent": {"Template": {"TemplateName": template, "TemplateData": "{}"}},
            "BulkEmailEntries": entries,
            **self._common(),
        }

    async def _execute(self, call: _Call) -> list[SendResult]:
        answer = await self._post(call.path, call.body)
        if answer is None:
            return [
                SendResult(m.id, Outcome.UNKNOWN, error="no answer within the timeout") for m in call.messages
            ]
        status, headers, raw = answer
        payload = _json(raw)
        if 200 <= status < 300:
            if not call.bulk:
                message_id = payload.get("MessageId")
                if not message_id:  # not SES's answer (a proxy's or portal's page): may have gone
                    error = f"unreadable answer: HTTP {status} without a MessageId"
                    return [SendResult(call.messages[0].id, Outcome.UNKNOWN, error=error)]
                return [SendResult.sent(call.messages[0].id, str(message_id), "HTTP 200")]
            return _bulk_results(call.messages, payload)
        if status in GATEWAY_UNCERTAIN and not payload:
            error = gateway_uncertain(status, "SES")
            return [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in call.messages]
        code, text = _error(status, headers, payload, raw)
        kind = ERRORS.get(code) or ("transient" if status >= 500 or status == 429 else None)
        if kind is None:
            kind = "account" if status in (401, 403) else "message"
        reason = f"SES {code}: {text}" if text else f"SES {code}"
        if kind == "transient":
            raise TransientProviderError(reason, _retry_after(headers))
        if kind == "account":
            raise PermanentProviderError(reason)
        return [
            SendResult(m.id, Outcome.FAILED, response=f"HTTP {status}", error=reason) for m in call.messages
        ]

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes] | None:
        """(status, lower-case headers, body), or None when the request may have arrived but no
        answer came."""
        if self.http is None:
            raise TransientProviderError("no HTTP session: this instance only parses callbacks")
        url = self.endpoint + path
        data = msgspec.json.encode(body)
        request = AWSRequest(method="POST", url=url, data=data, headers={"Content-Type": "application/json"})
        self._signer.add_auth(request)
        headers = dict(request.headers.items())
        timeout = aiohttp.ClientTimeout(
            total=self.config.timeout_seconds, sock_connect=min(self.config.timeout_seconds, 10.0)
        )
        try:
            async with self.http.post(url, data=data, headers=headers, timeout=timeout) as answer:
                raw = await answer.read()
                return answer.status, {k.lower(): v for k, v in answer.headers.items()}, raw
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransientProviderError(f"cannot connect to SES: {exc}") from exc
        except (
            TimeoutError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,  # connected, then the socket failed (a reset): it may have arrived
        ):
            return None
        except aiohttp.ClientError as exc:
            if certainly_unsent(exc):
                raise TransientProviderError(f"request to SES failed: {client_error_text(exc)}") from exc
            return None  # an answer that could not be read, after the request may have arrived

    # ---- SNS callbacks -------------------------------------------------------------------------

    def _accepts(self, message: sns.SnsMessage) -> bool:
        return self.config.sns_topic_arn is not None and message.topic_arn == self.config.sns_topic_arn

    def _allowed(self, url: str) -> bool:
        region = sns.topic_region(self.config.sns_topic_arn or "")
        return sns.allowed_url(url, self.config.sns_cert_host_suffix, self.config.sns_allow_http, region)

    async def prepare_callback(self, headers: Mapping[str, str], body: bytes) -> None:
        """Fetch (and cache, process-wide) the certificate the message names, when it comes from
        our topic and an allowed host."""
        try:
            message = sns.parse(body)
            if self._accepts(message) and self._allowed(message.cert_url):
                await sns.fetch_key(self.http, message.cert_url)
        except (sns.SnsError, ValueError) as exc:  # verify_callback then refuses the message
            log.warning("SNS signing certificate not fetched: %s", exc)

    def callback_scope(self) -> str | None:
        # Notifications come from one SNS topic, whichever identity or key sent.
        topic = self.config.sns_topic_arn
        return f"sns:{topic}" if topic else None

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        try:
            message = sns.parse(body)
            if not self._accepts(message) or not self._allowed(message.cert_url):
                return False
            for header, value in (
                ("x-amz-sns-message-type", message.type),
                ("x-amz-sns-topic-arn", message.topic_arn),
            ):
                if header in headers and headers[header] != value:
                    return False
            age = unix_time() - message.timestamp()
            if age > CALLBACK_MAX_AGE or age < -CALLBACK_MAX_SKEW:
                return False
        except sns.SnsError:
            return False
        key = sns.cached_key(message.cert_url)
        if key is None:
            log.warning("SNS message refused: its signing certificate was not fetched (prepare_callback)")
            return False
        return sns.signature_valid(message, key)

    async def handle_control(self, headers: Mapping[str, str], body: bytes) -> bool:
        message = sns.parse(body)  # verified already
        if message.type == "SubscriptionConfirmation":
            subscribe_url = message.fields["SubscribeURL"]
            if not self._allowed(subscribe_url):
                raise PermanentProviderError("SubscribeURL is not on an SNS host")
            try:
                await sns.get(self.http, subscribe_url)
            except sns.SnsError as exc:  # SNS retries the confirmation message on a 5xx
                raise TransientProviderError(f"subscription not confirmed: {exc}") from exc
            log.info("SNS subscription confirmed", extra={"topic": message.topic_arn})
            return True
        if message.type == "UnsubscribeConfirmation":
            log.warning("SNS subscription ended", extra={"topic": message.topic_arn})
            return True
        return False

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        message = sns.parse(body)
        if message.type != "Notification":
            return []
        return events_of(message.message_id, sns.decode_message(message))


def events_of(key: str, event: Mapping[str, Any]) -> list[DeliveryEvent]:
    """The DeliveryEvents of one SES event record (one per recipient it names)."""
    kind = str(event.get("eventType") or event.get("notificationType") or "")
    mapped = EVENTS.get(kind)
    if mapped is None:
        return []
    status, bounce = mapped
    mail = _dict(event.get("mail"))
    provider_message_id = str(mail["messageId"]) if mail.get("messageId") else None
    message_id = _log_id(mail)
    recipients: list[tuple[str, str | None]] = []  # (address, error)
    if kind == "Delivery":
        detail = _dict(event.get("delivery"))
        recipients = [(str(r), None) for r in _list(detail.get("recipients"))]
    elif kind == "Bounce":
        detail = _dict(event.get("bounce"))
        bounce_type = str(detail.get("bounceType") or "Undetermined")
        bounce = BOUNCE_TYPES.get(bounce_type, "soft")
        sub_type = str(detail.get("bounceSubType") or "")
        for item in _list(detail.get("bouncedRecipients")):
            bounced = _dict(item)
            words = [str(bounced[k]) for k in ("status", "diagnosticCode") if bounced.get(k)]
            error = f"bounce {bounce_type}/{sub_type}" + (": " + " ".join(words) if words else "")
            recipients.append((str(bounced.get("emailAddress", "")), error))
    elif kind == "Complaint":
        detail = _dict(event.get("complaint"))
        feedback = str(detail.get("complaintFeedbackType") or "abuse")
        if feedback == "not-spam":
            return []
        recipients = [
            (str(_dict(r).get("emailAddress", "")), f"complaint: {feedback}")
            for r in _list(detail.get("complainedRecipients"))
        ]
    else:
        detail = _dict(event.get("reject") or event.get("failure"))
        reason = str(detail.get("reason") or detail.get("errorMessage") or kind)
        recipients = [(str(r), f"{kind}: {reason}") for r in _list(mail.get("destination"))]
    if not recipients:
        recipients = [("", None if status == "delivered" else kind)]
    return [
        DeliveryEvent(
            event_key=f"{key}:{index}",
            message_id=message_id,
            provider_message_id=provider_message_id,
            status=status,
            error=error,
            bounce=bounce,
        )
        for index, (_address, error) in enumerate(recipients)
    ]


# --------------------------------------------------------------------------------------------------
# helpers


def _template_name(m: OutboundMessage) -> str | None:
    own = (m.provider_template or {}).get("ses")
    if isinstance(own, Mapping):
        name = own.get("template_name")
        if isinstance(name, str) and name:
            return name
    return None


def _tag(value: str) -> str:
    return _TAG_UNSAFE.sub("_", value)[:256] or "_"


def _tags(m: OutboundMessage) -> list[dict[str, str]]:
    return [{"Name": "comms_id", "Value": _tag(m.id)}, {"Name": "comms_tenant", "Value": _tag(m.tenant_id)}]


def _headers(m: OutboundMessage) -> list[dict[str, str]]:
    """The message's extra headers as SES MessageHeaders (printable ASCII, at most 995 each)."""
    if len(m.headers) > MAX_HEADERS:
        raise ValueError(f"more than {MAX_HEADERS} headers")
    out = []
    for name, raw in m.headers:
        value = raw.strip()
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} contains a line break")
        if not (value.isascii() and value.isprintable()):
            value = Header(value, "utf-8").encode().replace("\n", "")
        if len(value) > 995:
            raise ValueError(f"header {name} is longer than 995 characters")
        out.append({"Name": name, "Value": value})
    return out


def _template_data(m: OutboundMessage) -> str:
    data: dict[str, str] = dict(m.variables)
    for name, value in m.headers:
        if name.lower() == "list-unsubscribe" and "unsubscribe_url" not in data:
            match = _UNSUBSCRIBE_URL.search(value)
            if match:
                data["unsubscribe_url"] = match.group(1)
    return msgspec.json.encode(data).decode()


def _bulk_results(messages: Sequence[OutboundMessage], payload: Mapping[str, Any]) -> list[SendResult]:
    entries = _list(payload.get("BulkEmailEntryResults"))
    if len(entries) != len(messages):
        # SES answers one result per entry, in order, naming no recipient: with one missing or
        # extra, none can be matched to its message (a vendor id on the wrong one would take its
        # receipts). What happened to them is unknown.
        error = f"SES answered {len(entries)} results for {len(messages)} entries"
        return [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in messages]
    statuses = [str(_dict(e).get("Status", "")) for e in entries]
    kinds = [BULK_STATUSES.get(s, Outcome.FAILED) for s in statuses]
    if kinds and all(k in ("transient", "account") for k in kinds):
        # Nothing went: the account cannot send now. Raised, so the next route gets them.
        reason = "SES " + ", ".join(sorted(set(statuses)))
        if all(k == "transient" for k in kinds):
            raise TransientProviderError(reason)
        raise PermanentProviderError(reason)
    out = []
    for index, m in enumerate(messages):
        entry = _dict(entries[index])
        kind = kinds[index]
        text = f"SES {statuses[index]}" + (f": {entry['Error']}" if entry.get("Error") else "")
        if kind is Outcome.SENT:
            message_id = entry.get("MessageId")
            out.append(SendResult.sent(m.id, str(message_id) if message_id else None, "HTTP 200"))
        elif kind is Outcome.FAILED:
            out.append(SendResult(m.id, Outcome.FAILED, response="HTTP 200", error=text))
        else:
            out.append(SendResult(m.id, Outcome.RETRY, response="HTTP 200", error=text))
    return out


def _error(
    status: int, headers: Mapping[str, str], payload: Mapping[str, Any], raw: bytes
) -> tuple[str, str]:
    """(code, message) of an AWS REST-JSON error answer, as botocore reads it."""
    code = headers.get("x-amzn-errortype") or str(
        payload.get("code") or payload.get("Code") or payload.get("__type") or ""
    )
    code = code.split(":", 1)[0].rsplit("#", 1)[-1] or f"HTTP{status}"
    text = payload.get("message") or payload.get("Message")
    if text is None and not payload:
        text = raw[:200].decode(errors="replace").strip()
    return code, str(text or "")


def _log_id(mail: Mapping[str, Any]) -> str | None:
    tags = _dict(mail.get("tags"))
    values = _list(tags.get("comms_id"))
    if values and isinstance(values[0], str) and values[0]:
        return values[0]
    common = _dict(mail.get("commonHeaders"))
    message_id = str(common.get("messageId") or "").strip().strip("<>")
    left = message_id.partition("@")[0]
    return left if id_has_prefix(left, "log") else None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        payload = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _from_address(sender: str, sender_name: str | None) -> str:
    """``"Name" <address>`` (RFC 2047 for a non-ASCII name); raises ValueError for an address
    that is not ASCII (SES wants an IDNA/punycode domain and an ASCII local part)."""
    if not sender.isascii():
        raise ValueError(f"the sender address must be ASCII for SES: {sender!r}")
    return formataddr((sender_name, sender), "utf-8") if sender_name else sender


__all__ = ["BULK_STATUSES", "ERRORS", "EVENTS", "SesConfig", "SesProvider", "events_of"]
