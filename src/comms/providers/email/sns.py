"""Amazon SNS messages posted to an HTTP(S) endpoint: parsing, signature checks, certificates.

SNS signs every message it posts (Notification, SubscriptionConfirmation,
UnsubscribeConfirmation) with the key of an X.509 certificate it publishes at ``SigningCertURL``:
``SignatureVersion`` 1 is SHA1withRSA, 2 is SHA256withRSA, over a canonical string of
``"<name>\\n<value>\\n"`` pairs in this order:

* Notification: Message, MessageId, Subject (only when present), Timestamp, TopicArn, Type;
* SubscriptionConfirmation and UnsubscribeConfirmation: Message, MessageId, SubscribeURL,
  Timestamp, Token, TopicArn, Type.

A certificate is only ever fetched from an allowed host (:func:`allowed_url`): over https, from
``sns.<region>.amazonaws.com`` in the topic's own region by default (a bare suffix check would
let anyone's S3 bucket under ``amazonaws.com`` serve a certificate). Fetched certificates are kept
process-wide (a provider instance lives for one callback), at most :data:`CACHE_SIZE` of them.

Fetching is I/O and :meth:`Provider.verify_callback` is synchronous, so the fetch happens in the
async ``prepare_callback`` hook awaited just before it; verification then only reads the cache.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from comms.kit.clock import unix_time

log = logging.getLogger("comms.providers.sns")

CACHE_SIZE = 64  # certificates kept per process
CERT_MAX_BYTES = 64 * 1024
CERT_TTL = 24 * 3600.0  # seconds a fetched certificate is trusted before it is fetched again
FETCH_TIMEOUT = 10.0
MESSAGE_TYPES = frozenset({"Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"})
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d+"
_TOPIC_ARN = re.compile(rf"^arn:aws[a-z-]*:sns:({_REGION}):\d{{12}}:[A-Za-z0-9_.-]{{1,256}}$")


class SnsError(ValueError):
    """Not an SNS message this endpoint accepts."""


@dataclass(frozen=True, slots=True)
class SnsMessage:
    fields: Mapping[str, str]

    @property
    def type(self) -> str:
        return self.fields["Type"]

    @property
    def topic_arn(self) -> str:
        return self.fields["TopicArn"]

    @property
    def message_id(self) -> str:
        return self.fields["MessageId"]

    @property
    def message(self) -> str:
        return self.fields["Message"]

    @property
    def cert_url(self) -> str:
        return self.fields["SigningCertURL"]

    def string_to_sign(self) -> bytes:
        names = _NOTIFICATION_FIELDS if self.type == "Notification" else _CONFIRMATION_FIELDS
        out: list[str] = []
        for name in names:
            if name in self.fields:
                out += (name, "\n", self.fields[name], "\n")
        return "".join(out).encode()

    def timestamp(self) -> float:
        value = self.fields["Timestamp"]
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SnsError(f"bad Timestamp {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()


def parse(body: bytes) -> SnsMessage:
    """The SNS envelope; SnsError when it is not one."""
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise SnsError(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise SnsError("not a JSON object")
    fields = {k: v for k, v in payload.items() if isinstance(k, str) and isinstance(v, str)}
    kind = fields.get("Type")
    if kind not in MESSAGE_TYPES:
        raise SnsError(f"unknown message Type {kind!r}")
    needed = [
        "Message",
        "MessageId",
        "Timestamp",
        "TopicArn",
        "Signature",
        "SignatureVersion",
        "SigningCertURL",
    ]
    if kind != "Notification":
        needed += ["SubscribeURL", "Token"]
    missing = [name for name in needed if name not in fields]
    if missing:
        raise SnsError(f"missing {', '.join(missing)}")
    return SnsMessage(fields)


def topic_region(topic_arn: str) -> str | None:
    match = _TOPIC_ARN.match(topic_arn)
    return match.group(1) if match else None


def allowed_url(url: str, host_suffix: str, allow_http: bool, region: str | None) -> bool:
    """Whether SNS could have named ``url`` (a certificate or a SubscribeURL).

    ``host_suffix`` ".amazonaws.com" (or ".amazonaws.com.cn") allows ``sns.<region>`` + suffix,
    in the topic's ``region`` when known; a suffix without a leading dot names one exact host
    (a private stand-in, or a test server). Plain http only when ``allow_http``.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return False
    if parts.scheme != "https" and not (allow_http and parts.scheme == "http"):
        return False
    if parts.username or parts.password:
        return False
    suffix = host_suffix.lower()
    if not suffix.startswith("."):
        return host == suffix
    match = re.fullmatch(rf"sns\.({_REGION}){re.escape(suffix)}", host)
    return match is not None and (region is None or match.group(1) == region)


# --------------------------------------------------------------------------------------------------
# certificates

_CERTS: OrderedDict[str, tuple[rsa.RSAPublicKey, float]] = OrderedDict()


def clear_cache() -> None:
    """Forget every fetched certificate (tests; an operator after a key rotation)."""
    _CERTS.clear()


def cached_key(url: str) -> rsa.RSAPublicKey | None:
    entry = _CERTS.get(url)
    if entry is None:
        return None
    key, expires = entry
    if unix_time() >= expires:
        del _CERTS[url]
        return None
    _CERTS.move_to_end(url)
    return key


def remember(url: str, pem: bytes) -> rsa.RSAPublicKey:
    """Parse and cache a certificate; SnsError when it is unusable."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SnsError(f"not a PEM certificate: {exc}") from None
    now = unix_time()
    if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
        raise SnsError("the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsError("the signing certificate has no RSA key")
    _CERTS[url] = (key, min(now + CERT_TTL, cert.not_valid_after_utc.timestamp()))
    _CERTS.move_to_end(url)
    while len(_CERTS) > CACHE_SIZE:
        _CERTS.popitem(last=False)
    return key


async def get(http: aiohttp.ClientSession | None, url: str, limit: int = CERT_MAX_BYTES) -> bytes:
    """GET ``url`` (a short-lived session when ``http`` is None); SnsError unless 200."""
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)

    async def fetch(session: aiohttp.ClientSession) -> bytes:
        async with session.get(url, timeout=timeout, allow_redirects=False) as answer:
            if answer.status != 200:
                raise SnsError(f"GET {url} answered HTTP {answer.status}")
            body = bytearray()
            async for chunk in answer.content.iter_chunked(8192):
                body += chunk
                if len(body) > limit:
                    raise SnsError(f"GET {url}: answer too large")
            return bytes(body)

    try:
        if http is not None:
            return await fetch(http)
        async with aiohttp.ClientSession() as session:
            return await fetch(session)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SnsError(f"GET {url} failed: {exc!r}") from exc


async def fetch_key(http: aiohttp.ClientSession | None, url: str) -> rsa.RSAPublicKey:
    key = cached_key(url)
    if key is None:
        key = remember(url, await get(http, url))
    return key


def signature_valid(message: SnsMessage, key: rsa.RSAPublicKey) -> bool:
    algorithm = HASHES.get(message.fields.get("SignatureVersion", ""))
    if algorithm is None:
        return False
    try:
        signature = base64.b64decode(message.fields["Signature"], validate=True)
        key.verify(signature, message.string_to_sign(), padding.PKCS1v15(), algorithm())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def decode_message(message: SnsMessage) -> dict[str, Any]:
    """The JSON document a Notification carries in ``Message``."""
    try:
        payload = msgspec.json.decode(message.message)
    except msgspec.DecodeError as exc:
        raise SnsError(f"Message is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise SnsError("Message is not a JSON object")
    return payload


__all__ = [
    "SnsError",
    "SnsMessage",
    "allowed_url",
    "cached_key",
    "clear_cache",
    "decode_message",
    "fetch_key",
    "get",
    "parse",
    "remember",
    "signature_valid",
    "topic_region",
]
