"""The ``sendgrid`` provider: Twilio SendGrid's v3 Mail Send API and its signed Event Webhook.

Sending: ``POST {endpoint}/v3/mail/send`` with ``Authorization: Bearer <api_key>``; one request
carries up to 1,000 personalizations (one per message: ``to``, ``subject``, ``headers`` such as
List-Unsubscribe, and ``custom_args`` ``{"comms_id": <log id>, "comms_tenant": <tenant id>}``,
which every event of that message echoes back). SendGrid answers 202 with an ``X-Message-Id``
header (the prefix of each event's ``sg_message_id``) and sends nothing on any other answer.

Why bodies are rebuilt with substitutions. comms renders each message for its recipient (its own
variables; for subscription mail an unsubscribe link of its own in the footer), but a SendGrid
request has ONE ``content`` shared by all its personalizations. Per recipient only the subject,
headers, custom_args and ``substitutions`` (tag -> value, replaced in the content) may differ. So
for messages with the same sender and parts, the provider derives a skeleton (:func:`share_content`):

* from a small sample (the first message and the first that differs), texts are compared line by
  line, then by markup tokens (``<``, ``>``, quotes), then by words, position by position; what is
  equal everywhere stays literal, and where the pieces do not line up the common prefix and suffix
  stay literal and the middle becomes one hole;
* every message is then matched against the literals (``str.find``, in order); the values between
  them are its hole values. Messages that do not fit join the sample and the skeleton is derived
  again (a few rounds), so the cost is a handful of tokenised texts plus one pass per message;
* each hole gets a tag unique to the request (``-sg<random>t<i>-`` / ``h<i>``, checked to occur in
  no literal, value or subject), and each personalization carries its own values for the tags.

The result is exact by construction (literal + value + literal ... is the message again), so each
recipient gets byte for byte what comms rendered, and nothing of the tenant's text is ever read as
SendGrid template syntax. Messages whose values would pass SendGrid's limits (10,000 bytes and
100 tags per personalization, the conservative figures of its v3 reference), or that fit no
skeleton, go without substitutions: one request per distinct content (identical messages, e.g. a
transactional notice without variables, still share one). A few skeletons are tried per sender, for
chunks that mix batches. A request never names the same address twice (SendGrid refuses such a
request), and its subscription tracking is switched off: comms adds its own List-Unsubscribe and
footer.

Answers: 202 sent; 400 names the faulty personalizations (``field: personalizations.N...``): those
messages fail with SendGrid's words and the others are re-sent once without them; a 400 about the
request as a whole (or 413) fails its messages; 401/403 (bad key, unverified sender identity)
raise PermanentProviderError, 429 (``X-RateLimit-Reset``/``Retry-After`` honoured) and 5xx
TransientProviderError. No answer in time is UNKNOWN. When one ``send()`` needs several requests,
the first goes alone: if it is refused as a whole the error is raised and nothing else was tried;
requests refused later make their messages RETRY, since others of the batch were already sent.

Event Webhook: the body (a JSON array of events) is signed with ECDSA P-256/SHA-256 over
``<X-Twilio-Email-Event-Webhook-Timestamp> + body``, base64 in
``X-Twilio-Email-Event-Webhook-Signature``, checked against the verification key SendGrid shows
(``webhook_public_key``, base64 DER or PEM); without that key every callback is refused. A
timestamp more than 10 minutes away is a replay. Event mapping: :data:`EVENTS`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.header import Header
from typing import Any, ClassVar

import aiohttp
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from comms.errors import PermanentProviderError, TransientProviderError
from comms.kit.clock import unix_time
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

MAX_PERSONALIZATIONS = 1000  # personalizations (and recipients) per request
MAX_SUBSTITUTION_BYTES = 10_000  # per personalization, tags and values together
MAX_SUBSTITUTIONS = 100  # tags per personalization
CALLBACK_MAX_AGE = 600  # seconds a signed Event Webhook post stays valid
CONCURRENT_REQUESTS = 4  # the account's bulk requests in flight per process (codes: one more lane)
# Headers SendGrid does not let a request set (its v3 reference, "headers").
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)

# event -> (status, bounce); None: not a delivery outcome (processed, deferred, open, click,
# unsubscribe, group_unsubscribe, group_resubscribe). A spam report means the message was
# delivered and the recipient complained: "delivered" with bounce "complaint" (which suppresses).
EVENTS: dict[str, tuple[str, str | None]] = {
    "delivered": ("delivered", None),
    "bounce": ("undelivered", "hard"),
    "dropped": ("undelivered", None),
    "spamreport": ("delivered", "complaint"),
}
# A bounce event's ``type``: "bounce" is the receiving server's permanent refusal, "blocked" a
# refusal SendGrid classifies as temporary (reputation, content, throttling).
BOUNCE_TYPES: dict[str, str] = {"bounce": "hard", "blocked": "soft"}
# A dropped event's ``reason`` when SendGrid holds the address on one of its own lists.
DROP_REASONS: dict[str, str] = {
    "Bounced Address": "hard",
    "Invalid": "hard",
    "Spam Reporting Address": "complaint",
}


class SendGridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, description="An API key with the Mail Send permission.")
    endpoint: HttpUrl = Field(default="https://api.sendgrid.com", pattern=r"^https?://")
    webhook_public_key: str | None = Field(
        default=None,
        description="The Signed Event Webhook's verification key (base64 DER, as SendGrid shows it, or PEM).",
    )
    timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    @field_validator("webhook_public_key")
    @classmethod
    def _loadable(cls, value: str | None) -> str | None:
        if value is not None:
            load_public_key(value)
        return value


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The Event Webhook verification key; ValueError when it is not an EC public key."""
    text = value.strip()
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not a public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve (ECDSA) public key")
    return key


# --------------------------------------------------------------------------------------------------
# one content for many recipients: literal pieces with per-recipient holes

# How a differing stretch is cut, coarse to fine: lines, markup (tags, quoted attributes), words.
_LEVELS = (re.compile(r"(?<=\n)"), re.compile(r"([<>\"'])"), re.compile(r"(\s+)"))
SAMPLE_ROUNDS = 3  # re-derivations with the messages the skeleton did not fit yet
MAX_FAMILIES = 4  # shared contents tried per sender


class _Pieces:
    """Literal pieces and per-text hole values, merging neighbours of the same kind."""

    def __init__(self, count: int) -> None:
        self.literals: list[str] = [""]
        self.holes: list[list[str]] = [[] for _ in range(count)]
        self._open = False  # the last thing added was a hole

    def literal(self, text: str) -> None:
        if not text:
            return
        if self._open:
            self.literals.append(text)
            self._open = False
        else:
            self.literals[-1] += text

    def hole(self, values: Sequence[str]) -> None:
        if self._open:
            for own, value in zip(self.holes, values, strict=True):
                own[-1] += value
        else:
            for own, value in zip(self.holes, values, strict=True):
                own.append(value)
            self._open = True

    def result(self) -> tuple[list[str], list[list[str]]]:
        if self._open:
            self.literals.append("")
        return self.literals, self.holes


def _common_prefix(texts: Sequence[str]) -> int:
    low, high = min(texts), max(texts)  # the common prefix of all is that of these two
    lo, hi = 0, min(len(low), len(high))
    while lo < hi:  # the longest k with low[:k] == high[:k], by slices rather than characters
        mid = (lo + hi + 1) // 2
        if low[:mid] == high[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _derive_column(column: Sequence[str], level: int, pieces: _Pieces) -> None:
    first = column[0]
    if all(text == first for text in column):
        pieces.literal(first)
        return
    while level < len(_LEVELS):
        parts = [_LEVELS[level].split(text) for text in column]
        level += 1
        count = len(parts[0])
        if count > 1 and all(len(own) == count for own in parts):
            for index in range(count):
                _derive_column([own[index] for own in parts], level, pieces)
            return
    # Finest level, or cut differently per text: the common prefix and suffix stay literal.
    start = _common_prefix(column)
    end = _common_prefix([text[start:][::-1] for text in column])
    pieces.literal(first[:start])
    pieces.hole([text[start : len(text) - end] for text in column])
    pieces.literal(first[len(first) - end :])


def derive_skeleton(texts: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Literal pieces ``L`` and, per text, hole values ``H`` with
    ``L[0] + H[i][0] + L[1] + ... + L[k] == texts[i]`` (``k`` holes; ``L[1:-1]`` never empty)."""
    pieces = _Pieces(len(texts))
    _derive_column(texts, 0, pieces)
    return pieces.result()


def fill_skeleton(literals: Sequence[str], text: str) -> list[str] | None:
    """The hole values that make ``text`` from ``literals`` (each literal at its first place
    after the previous one, the last one at the end), or None when ``text`` does not fit."""
    if not text.startswith(literals[0]):
        return None
    if len(literals) == 1:
        return [] if text == literals[0] else None
    position = len(literals[0])
    values = []
    for literal in literals[1:-1]:
        at = text.find(literal, position)
        if at < 0:
            return None
        values.append(text[position:at])
        position = at + len(literal)
    end = len(text) - len(literals[-1])
    if end < position or not text.endswith(literals[-1]):
        return None
    values.append(text[position:end])
    return values


def share_content(texts: Sequence[str]) -> tuple[list[str], list[list[str] | None]]:
    """A skeleton for ``texts`` and each one's hole values (None where it does not fit).

    Derived from a small sample (the first text and the first that differs), then matched against
    every text; texts that do not fit join the sample and the skeleton is derived again, a few
    times at most. Cost: a few tokenised texts plus one ``str.find`` pass per text."""
    sample = [0]
    differing = next((i for i, text in enumerate(texts) if text != texts[0]), None)
    if differing is not None:
        sample.append(differing)
    for _ in range(SAMPLE_ROUNDS):
        literals, _holes = derive_skeleton([texts[i] for i in sample])
        values = [fill_skeleton(literals, text) for text in texts]
        missing = [i for i, own in enumerate(values) if own is None]
        if not missing:
            break
        sample += missing[:2]
    return literals, values


def _join(literals: Sequence[str], values: Sequence[str]) -> str:
    out = [literals[0]]
    for value, literal in zip(values, literals[1:], strict=True):
        out += (value, literal)
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# requests


@dataclass
class _Request:
    """One Mail Send request: messages sharing a sender and a content (with tags per message)."""

    messages: list[OutboundMessage]
    text: str
    html: str | None
    substitutions: list[dict[str, str]] = field(default_factory=list)  # per message, or empty

    def without(self, dropped: set[int]) -> _Request:
        keep = [i for i in range(len(self.messages)) if i not in dropped]
        return _Request(
            [self.messages[i] for i in keep],
            self.text,
            self.html,
            [self.substitutions[i] for i in keep] if self.substitutions else [],
        )


def _unsendable(message: OutboundMessage) -> str | None:
    if not message.sender:
        return "no sender address"
    if not message.subject:
        return "SendGrid needs a subject"
    if not message.text and not message.html:
        return "no content"
    for name, value in message.headers:
        if name.lower() in RESERVED_HEADERS:
            return f"SendGrid does not accept a {name} header"
        if "\r" in value or "\n" in value:
            return f"header {name} contains a line break"
    return None


def _shared(group: list[OutboundMessage]) -> tuple[_Request | None, list[OutboundMessage]]:
    """One request for the messages of ``group`` that fit a shared content with substitutions,
    and the messages that do not."""
    text_literals, text_values = share_content([m.text for m in group])
    has_html = group[0].html is not None
    html_literals: list[str] = [""]
    html_values: list[list[str] | None] = [[] for _ in group]
    if has_html:
        html_literals, html_values = share_content([m.html or "" for m in group])
    text_holes, html_holes = len(text_literals) - 1, len(html_literals) - 1
    if text_holes + html_holes > MAX_SUBSTITUTIONS:
        return None, group
    taken = [*text_literals, *html_literals]
    while True:
        nonce = secrets.token_hex(5)
        if not any(nonce in text for text in taken):
            break
    text_keys = [f"-sg{nonce}t{i}-" for i in range(text_holes)]
    html_keys = [f"-sg{nonce}h{i}-" for i in range(html_holes)]
    members: list[OutboundMessage] = []
    substitutions: list[dict[str, str]] = []
    rest: list[OutboundMessage] = []
    for message, text_own, html_own in zip(group, text_values, html_values, strict=True):
        values = None
        if text_own is not None and html_own is not None:
            values = dict(zip(text_keys, text_own, strict=True))
            values.update(zip(html_keys, html_own, strict=True))
            size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
            # A value or the subject holding a tag would be substituted too (the nonce is random:
            # this only guards against the improbable).
            if size > MAX_SUBSTITUTION_BYTES or any(
                nonce in text for text in (*values.values(), message.subject or "")
            ):
                values = None
        if values is None:
            rest.append(message)
        else:
            members.append(message)
            substitutions.append(values)
    if len(members) < 2:  # nothing shared: no substitutions at all
        return None, group
    first = members[0]
    if all(m.text == first.text and m.html == first.html for m in members):
        return _Request(members, first.text, first.html), rest  # the same content: no tags needed
    text = _join(text_literals, text_keys)
    html = _join(html_literals, html_keys) if has_html else None
    return _Request(members, text, html, substitutions), rest


def plan_requests(messages: Sequence[OutboundMessage]) -> list[_Request]:
    """Group by sender and shape, share content where it fits, and keep each request within
    1,000 personalizations with no address twice."""
    groups: dict[tuple[str, str | None, bool], list[OutboundMessage]] = {}
    for m in messages:
        groups.setdefault((m.sender or "", m.sender_name, m.html is not None), []).append(m)
    bodies: list[_Request] = []
    for group in groups.values():
        # A few passes, for chunks mixing batches of different content ("families"): each pass
        # shares what fits one skeleton; a pass that shares nothing sets its first message aside.
        pool, alone = group, []
        for _ in range(MAX_FAMILIES):
            if len(pool) < 2:
                break
            shared, rest = _shared(pool)
            if shared is not None:
                bodies.append(shared)
                pool = rest
            else:
                alone.append(pool[0])
                pool = pool[1:]
        same: dict[tuple[str, str | None], list[OutboundMessage]] = {}
        for m in alone + pool:
            same.setdefault((m.text, m.html), []).append(m)
        bodies.extend(_Request(members, text, html) for (text, html), members in same.items())
    requests: list[_Request] = []
    for body in bodies:
        chunks: list[tuple[set[str], list[int]]] = []
        for index, m in enumerate(body.messages):
            address = m.to.lower()
            for seen, chunk in chunks:
                if address not in seen and len(chunk) < MAX_PERSONALIZATIONS:
                    break
            else:
                seen, chunk = set(), []
                chunks.append((seen, chunk))
            seen.add(address)
            chunk.append(index)
        requests.extend(body.without(set(range(len(body.messages))) - set(chunk)) for _, chunk in chunks)
    return requests


def _header_value(value: str) -> str:
    value = value.strip()
    if value.isascii():
        return value
    # RFC 2047 encoded-words, as SendGrid asks for non-ASCII values; kept on one line.
    return Header(value, "utf-8").encode().replace("\n", "")


def request_body(request: _Request) -> dict[str, Any]:
    personalizations = []
    for index, m in enumerate(request.messages):
        entry: dict[str, Any] = {
            "to": [{"email": m.to}],
            "subject": m.subject,
            "custom_args": {"comms_id": m.id, "comms_tenant": m.tenant_id},
        }
        if m.headers:
            entry["headers"] = {name: _header_value(value) for name, value in m.headers}
        if request.substitutions and request.substitutions[index]:
            entry["substitutions"] = request.substitutions[index]
        personalizations.append(entry)
    first = request.messages[0]
    sender: dict[str, str] = {"email": first.sender or ""}
    if first.sender_name:
        sender["name"] = first.sender_name
    content = [{"type": "text/plain", "value": request.text}] if request.text else []
    if request.html is not None:
        content.append({"type": "text/html", "value": request.html})
    return {
        "personalizations": personalizations,
        "from": sender,
        "subject": first.subject,
        "content": content,
        "tracking_settings": {"subscription_tracking": {"enable": False}},
    }


# --------------------------------------------------------------------------------------------------
# the provider

_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)\b")


class SendGridProvider(Provider):
    name: ClassVar[str] = "sendgrid"
    channels: ClassVar[frozenset[str]] = frozenset({"email"})
    Config: ClassVar[type[BaseModel]] = SendGridConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})
    max_batch: ClassVar[int] = MAX_PERSONALIZATIONS

    def __init__(self, config: SendGridConfig, http: aiohttp.ClientSession | None) -> None:
        self.config = config
        # The account's requests in flight in this process (see RequestPool).
        self._pool = RequestPool(CONCURRENT_REQUESTS)
        self.http = http
        self.url = config.endpoint.rstrip("/") + "/v3/mail/send"
        self._key = load_public_key(config.webhook_public_key) if config.webhook_public_key else None

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, SendGridConfig)
        return cls(config, context.http)

    @classmethod
    def dkim_hosts(cls, config: Any) -> tuple[str, ...]:
        # Domain authentication: s1/s2._domainkey.<domain> CNAME s1.domainkey.u<id>.wl<n>.sendgrid.net
        return ("sendgrid.net",)

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        results: dict[str, SendResult] = {}
        sendable = []
        for m in messages:
            problem = _unsendable(m)
            if problem is None:
                sendable.append(m)
            else:
                results[m.id] = SendResult(m.id, Outcome.FAILED, error=problem)
        requests = plan_requests(sendable)
        for result in await send_calls(requests, self._send_request, lambda r: r.messages, self._pool):
            results[result.message_id] = result
        return [results[m.id] for m in messages]

    async def _send_request(self, request: _Request, again: bool = True) -> list[SendResult]:
        answer = await self._post(request_body(request))
        if answer is None:
            return [
                SendResult(m.id, Outcome.UNKNOWN, error="no answer within the timeout")
                for m in request.messages
            ]
        status, headers, raw = answer
        if 200 <= status < 300:
            message_id = headers.get("x-message-id")
            return [SendResult.sent(m.id, message_id, f"HTTP {status}") for m in request.messages]
        errors = _errors(raw)
        summary = "; ".join(_describe(e) for e in errors) or raw[:200].decode(errors="replace")
        if status == 429:
            raise TransientProviderError(f"SendGrid throttled: {summary}", _retry_after(headers))
        if status in GATEWAY_UNCERTAIN:
            uncertain = gateway_uncertain(status, "SendGrid")
            return [SendResult(m.id, Outcome.UNKNOWN, error=uncertain) for m in request.messages]
        if status >= 500:
            raise TransientProviderError(f"SendGrid HTTP {status}: {summary}", _retry_after(headers))
        if status in (401, 403, 404, 405):  # the key, the sender identity, or the endpoint
            raise PermanentProviderError(f"SendGrid HTTP {status}: {summary}")
        if status == 400 and errors:
            faulty: dict[int, list[str]] = {}
            request_level = False
            for error in errors:
                match = _PERSONALIZATION_FIELD.match(str(error.get("field") or ""))
                if match and int(match.group(1)) < len(request.messages):
                    faulty.setdefault(int(match.group(1)), []).append(_describe(error))
                else:
                    request_level = True
            if faulty and not request_level:
                failed = [
                    SendResult(
                        request.messages[i].id,
                        Outcome.FAILED,
                        response=f"HTTP {status}",
                        error="SendGrid: " + "; ".join(faulty[i]),
                    )
                    for i in sorted(faulty)
                ]
                rest = request.without(set(faulty))
                if not rest.messages:
                    return failed
                if again:
                    return failed + await self._send_request(rest, again=False)
                return failed + [
                    SendResult(m.id, Outcome.RETRY, error="SendGrid refused the request for other recipients")
                    for m in rest.messages
                ]
        # Any other 4xx (a request-level 400, 413 too large): these messages as sent cannot go.
        return [
            SendResult(
                m.id, Outcome.FAILED, response=f"HTTP {status}", error=f"SendGrid HTTP {status}: {summary}"
            )
            for m in request.messages
        ]

    async def _post(self, body: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes] | None:
        """(status, headers, body), or None when the request may have arrived but no answer came."""
        if self.http is None:
            raise TransientProviderError("no HTTP session: this instance only parses callbacks")
        timeout = aiohttp.ClientTimeout(
            total=self.config.timeout_seconds, sock_connect=min(self.config.timeout_seconds, 10.0)
        )
        headers = {"Authorization": f"Bearer {self.config.api_key}", "Content-Type": "application/json"}
        try:
            async with self.http.post(
                self.url, data=msgspec.json.encode(body), headers=headers, timeout=timeout
            ) as answer:
                raw = await answer.read()
                return answer.status, {k.lower(): v for k, v in answer.headers.items()}, raw
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransientProviderError(f"cannot connect to SendGrid: {exc}") from exc
        except (
            TimeoutError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,  # connected, then the socket failed (a reset): it may have arrived
        ):
            return None
        except aiohttp.ClientError as exc:
            if certainly_unsent(exc):
                raise TransientProviderError(f"request to SendGrid failed: {client_error_text(exc)}") from exc
            return None  # an answer that could not be read, after the request may have arrived

    # ---- Event Webhook ---------------------------------------------------------------------------

    def callback_scope(self) -> str | None:
        # One Event Webhook (one signing key) per SendGrid account or subuser, whatever API key
        # sent; the key as loaded, so PEM and base64 DER spellings of it agree.
        if self._key is None:
            return None
        der = self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "sendgrid:" + hashlib.sha256(der).hexdigest()

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        if self._key is None:
            return False
        timestamp = headers.get("x-twilio-email-event-webhook-timestamp", "")
        if (
            # Twelve digits reach the year 33658; far more would make int() refuse (Python
            # limits the digits it converts), a 500 for whoever sends the header.
            not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12)
            or abs(unix_time() - int(timestamp)) > CALLBACK_MAX_AGE
        ):
            return False
        try:
            signature = base64.b64decode(
                headers.get("x-twilio-email-event-webhook-signature", ""), validate=True
            )
            self._key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature):
            return False
        return True

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        payload = msgspec.json.decode(body)
        if not isinstance(payload, list):
            raise ValueError("an Event Webhook body is a JSON array")
        events = []
        for item in payload:
            if isinstance(item, dict):
                event = _event(item)
                if event is not None:
                    events.append(event)
        return events


def _event(item: Mapping[str, Any]) -> DeliveryEvent | None:
    kind = str(item.get("event", ""))
    mapped = EVENTS.get(kind)
    if mapped is None:
        return None
    status, bounce = mapped
    reason = str(item.get("reason") or item.get("response") or "").strip()
    error = None
    if kind == "bounce":
        bounce_type = str(item.get("type") or "bounce")
        bounce = BOUNCE_TYPES.get(bounce_type, "soft")
        code = str(item.get("status") or "").strip()
        error = (
            f"{bounce_type}: " + " ".join(p for p in (code, reason) if p) if code or reason else bounce_type
        )
    elif kind == "dropped":
        bounce = DROP_REASONS.get(reason)
        error = f"dropped: {reason or 'no reason given'}"
    elif kind == "spamreport":
        error = "spam complaint"
    sg_message_id = item.get("sg_message_id")
    provider_message_id = str(sg_message_id).split(".", 1)[0] if sg_message_id else None
    comms_id = item.get("comms_id")
    event_id = item.get("sg_event_id")
    key = str(event_id) if event_id else f"{sg_message_id}:{kind}:{item.get('timestamp')}:{item.get('email')}"
    echoed = comms_id if isinstance(comms_id, str) and comms_id else None
    email = item.get("email")
    return DeliveryEvent(
        event_key=key,
        message_id=echoed,
        provider_message_id=provider_message_id,
        status=status,
        error=error,
        bounce=bounce,
        # One X-Message-Id covers a whole request: without our id, the address tells them apart.
        recipient=str(email) if echoed is None and email else None,
    )


def _errors(raw: bytes) -> list[dict[str, Any]]:
    try:
        payload = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return []
    errors = payload.get("errors") if isinstance(payload, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error.get("message") or "error")
    where = error.get("field")
    return f"{message} ({where})" if where else message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds until SendGrid's rate-limit window resets (``X-RateLimit-Reset``, a Unix time), or
    ``Retry-After``; ``headers`` have lower-case names."""
    reset = headers.get("x-ratelimit-reset")
    if reset is not None:
        try:
            return max(0.0, float(reset) - unix_time())
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return None


__all__ = [
    "EVENTS",
    "SendGridConfig",
    "SendGridProvider",
    "derive_skeleton",
    "fill_skeleton",
    "load_public_key",
    "plan_requests",
    "share_content",
]
