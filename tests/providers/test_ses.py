"""The ``ses`` provider against a local server speaking the Amazon SES API v2, and SNS receipts.

The fake SES recomputes each request's AWS Signature V4 with botocore from what it received (the
method, URL, signed headers and body) and refuses a mismatch as SES does; it checks the required
fields, the 50-entry limit of SendBulkEmail, tags, headers and verified identities, parses the raw
MIME it is given, and renders stored templates. It also plays SNS: an RSA key and a self-signed
certificate made here, served over HTTP, and messages signed over SNS's canonical strings
(written here from the SNS documentation, independently of the provider's code).
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesParser
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from comms.errors import PermanentProviderError, TransientProviderError
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.email import sns
from comms.providers.email.ses import SesConfig, SesProvider, events_of
from tests.conftest import Service, TenantKeys, statuses, wait_until
from tests.providers.contract import FIXTURES, Callback, FakeVendor, ProviderContract

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
CERT_PATH = "/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})"
)
TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")
HEADER_NAME = re.compile(r"[!-9;-@A-~]{1,126}")


def _certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


SNS_KEY, SNS_CERT = _certificate()


def sns_sign(fields: dict[str, str], version: str = "1", key: rsa.RSAPrivateKey = SNS_KEY) -> dict[str, str]:
    """Sign as SNS does: SHA1withRSA (version 1) or SHA256withRSA (2) over "name\\nvalue\\n" pairs."""
    if fields["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    canonical = "".join(f"{name}\n{fields[name]}\n" for name in names if name in fields)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
    return {**fields, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode()}


def sns_time(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sns_headers(fields: dict[str, str]) -> dict[str, str]:
    return {
        "x-amz-sns-message-type": fields["Type"],
        "x-amz-sns-message-id": fields["MessageId"],
        "x-amz-sns-topic-arn": fields["TopicArn"],
        "content-type": "text/plain; charset=UTF-8",
        "user-agent": "Amazon Simple Notification Service Agent",
    }


TEMPLATES = {
    "welcome": {
        "subject": "Welcome, {{name}}",
        "text": "Hi {{name}}, your code is {{code}}.\nUnsubscribe: {{unsubscribe_url}}",
        "html": '<p>Hi {{name}}, your code is {{code}}.</p><a href="{{unsubscribe_url}}">Unsubscribe</a>',
    }
}


class SesVendor(FakeVendor):
    """SES API v2 (SendEmail, SendBulkEmail) and the SNS side (certificate, SubscribeURL)."""

    def __init__(self) -> None:
        super().__init__()
        self.verified = {"shop@acme.example", "news@acme.example"}
        self.configuration_sets = {"comms-events"}
        self.sent: dict[str, dict[str, Any]] = {}  # recipient -> what SES took
        self.refused_addresses: set[str] = set()
        self.forced: list[tuple[int, str, str]] = []  # next error answers: (status, code, message)
        self.bulk_status: str | None = None  # every bulk entry answered with this Status
        self.fail_after: int | None = None  # accept this many sends, then answer 429
        self.bulk_calls: list[int] = []  # entries per SendBulkEmail
        self.portal_page = False  # answer 200 with an HTML page (a proxy's, not SES's)
        self.drop_first_result = False  # answer one SendBulkEmail result short
        self.cert_fetches = 0
        self.confirmed: list[str] = []  # tokens of confirmed subscriptions

    @property
    def cert_url(self) -> str:
        return self.url + CERT_PATH

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/email/outbound-emails", self.send_email)
        app.router.add_post("/v2/email/outbound-bulk-emails", self.send_bulk_email)
        app.router.add_get(CERT_PATH, self.certificate)
        app.router.add_get("/", self.sns_action)

    # ---- SES -----------------------------------------------------------------------------------

    @staticmethod
    def error(status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"message": message},
            status=status,
            headers={
                "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.services.email/"
            },
        )

    def check_signature(self, request: web.Request, body: bytes) -> str | None:
        """None when the SigV4 signature is right, else the error code SES answers."""
        match = AUTHORIZATION.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return "IncompleteSignatureException"
        access_key, day, region, service, signed_headers, signature = match.groups()
        if access_key != ACCESS_KEY:
            return "UnrecognizedClientException"
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "IncompleteSignatureException"
        if abs((datetime.now(UTC) - when).total_seconds()) > 900 or amz_date[:8] != day:
            return "InvalidSignatureException"
        names = signed_headers.split(";")
        if "host" not in names or any(name not in request.headers for name in names):
            return "SignatureDoesNotMatch"
        rebuilt = AWSRequest(
            method=request.method,
            url=f"http://{request.headers['Host']}{request.path_qs}",
            data=body,
            headers={name: request.headers[name] for name in names},
        )
        rebuilt.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), service, region)
        expected = signer.signature(
            signer.string_to_sign(rebuilt, signer.canonical_request(rebuilt)), rebuilt
        )
        if region != REGION or service != "ses" or not hmac.compare_digest(expected, signature):
            return "SignatureDoesNotMatch"
        return None

    async def preamble(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        body = await request.read()
        await self.pause_if_hanging(request)
        problem = self.check_signature(request, body)
        if problem is not None:
            self.bad_signatures += 1
            return None, self.error(403, problem, "The request signature we calculated does not match.")
        if self.forced:
            return None, self.error(*self.forced.pop(0))
        if self.mode == "fail":
            return None, self.error(500, "InternalFailure", "An internal error occurred.")
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            return None, self.error(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
        payload = json.loads(body)
        config_set = payload.get("ConfigurationSetName")
        if config_set is not None and config_set not in self.configuration_sets:
            return None, self.error(
                404, "NotFoundException", f"Configuration set <{config_set}> does not exist."
            )
        return payload, None

    def bad_tags(self, tags: Any) -> bool:
        return not isinstance(tags, list) or any(
            not TAG.fullmatch(str(t.get("Name", ""))) or not TAG.fullmatch(str(t.get("Value", "")))
            for t in tags
        )

    async def send_email(self, request: web.Request) -> web.Response:
        if self.portal_page:
            await request.read()
            self.requests += 1
            return web.Response(text="<html>Welcome to the hotel network</html>", content_type="text/html")
        payload, refusal = await self.preamble(request)
        if refusal is not None:
            return refusal
        assert payload is not None
        raw_data = ((payload.get("Content") or {}).get("Raw") or {}).get("Data")
        if not isinstance(raw_data, str):
            self.refuse("SendEmail without Content.Raw.Data")
            return self.error(400, "BadRequestException", "Content is required.")
        raw = base64.b64decode(raw_data, validate=True)
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        missing = [h for h in ("From", "To", "Subject", "Date", "Message-ID") if parsed[h] is None]
        long_lines = [line for line in raw.split(b"\r\n") if len(line) > 998]
        if missing or long_lines or b"\n" in raw.replace(b"\r\n", b""):
            self.refuse(f"malformed MIME: missing {missing}, {len(long_lines)} long lines")
            return self.error(400, "MessageRejected", "Message is not a valid MIME message.")
        if self.bad_tags(payload.get("EmailTags", [])):
            self.refuse(f"bad tags {payload.get('EmailTags')}")
            return self.error(400, "BadRequestException", "Invalid tag.")
        sender = payload.get("FromEmailAddress") or parseaddr(str(parsed["From"]))[1]
        if sender not in self.verified:
            return self.error(
                400,
                "MessageRejected",
                f"Email address is not verified. The following identities failed the check in region "
                f"{REGION.upper()}: {sender}",
            )
        recipients = (payload.get("Destination") or {}).get("ToAddresses") or [str(parsed["To"])]
        if self.mode == "reject" or any(r in self.refused_addresses for r in recipients):
            return self.error(400, "MessageRejected", "Illegal address")
        message_id = f"010001{secrets.token_hex(6)}-{uuid.uuid4()}-000000"
        tags = {t["Name"]: t["Value"] for t in payload.get("EmailTags", [])}
        for recipient in recipients:
            self.sent[recipient] = {"message_id": message_id, "tags": tags, "raw": raw, "parsed": parsed}
            self.accept(recipient)
        return web.json_response({"MessageId": message_id})

    async def send_bulk_email(self, request: web.Request) -> web.Response:
        payload, refusal = await self.preamble(request)
        if refusal is not None:
            return refusal
        assert payload is not None
        entries = payload.get("BulkEmailEntries") or []
        self.bulk_calls.append(len(entries))
        if not entries or len(entries) > 50:
            self.refuse(f"{len(entries)} bulk entries")
            return self.error(400, "BadRequestException", "BulkEmailEntries must hold 1 to 50 entries.")
        template = ((payload.get("DefaultContent") or {}).get("Template") or {}).get("TemplateName")
        sender = parseaddr(str(payload.get("FromEmailAddress", "")))[1]
        if sender not in self.verified:
            return self.error(400, "MessageRejected", f"Email address is not verified: {sender}")
        results = []
        for entry in entries:
            recipients = (entry.get("Destination") or {}).get("ToAddresses") or []
            data = json.loads(
                entry["ReplacementEmailContent"]["ReplacementTemplate"]["ReplacementTemplateData"]
            )
            headers = entry.get("ReplacementHeaders") or []
            if (
                len(recipients) != 1
                or self.bad_tags(entry.get("ReplacementTags", []))
                or not isinstance(data, dict)
                or len(headers) > 15
                or any(not HEADER_NAME.fullmatch(h["Name"]) or not h["Value"].isprintable() for h in headers)
            ):
                self.refuse(f"bad entry {entry}")
                results.append({"Status": "INVALID_PARAMETER", "Error": "Invalid entry"})
                continue
            if template not in TEMPLATES:
                results.append(
                    {"Status": "TEMPLATE_NOT_FOUND", "Error": f"Template {template} does not exist"}
                )
                continue
            if self.bulk_status is not None:
                results.append({"Status": self.bulk_status, "Error": self.bulk_status.lower()})
                continue
            if self.mode == "reject" or recipients[0] in self.refused_addresses:
                results.append({"Status": "MESSAGE_REJECTED", "Error": "Illegal address"})
                continue

            def render(text: str, data: dict[str, Any] = data) -> str:
                return re.sub(r"\{\{(\w+)\}\}", lambda m: str(data.get(m.group(1), "")), text)

            message_id = f"010001{secrets.token_hex(6)}-{uuid.uuid4()}-000000"
            self.sent[recipients[0]] = {
                "message_id": message_id,
                "tags": {t["Name"]: t["Value"] for t in entry.get("ReplacementTags", [])},
                "rendered": {part: render(text) for part, text in TEMPLATES[template].items()},
                "headers": {h["Name"]: h["Value"] for h in headers},
                "from": payload["FromEmailAddress"],
            }
            self.accept(recipients[0])
            results.append({"Status": "SUCCESS", "MessageId": message_id})
        if self.drop_first_result:
            results = results[1:]
        return web.json_response({"BulkEmailEntryResults": results})

    # ---- SNS -----------------------------------------------------------------------------------

    async def certificate(self, request: web.Request) -> web.Response:
        self.cert_fetches += 1
        return web.Response(body=SNS_CERT, content_type="application/x-pem-file")

    async def sns_action(self, request: web.Request) -> web.Response:
        if request.query.get("Action") != "ConfirmSubscription" or request.query.get("TopicArn") != TOPIC:
            return web.Response(status=400)
        self.confirmed.append(request.query["Token"])
        return web.Response(
            text="<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
            f"{TOPIC}:{uuid.uuid4()}</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>",
            content_type="text/xml",
        )

    def event(self, recipient: str, kind: str) -> dict[str, Any]:
        """The SES event record a configuration set would publish for what this fake took."""
        sent = self.sent[recipient]
        mail = {
            "timestamp": sns_time(),
            "source": "news@acme.example",
            "sendingAccountId": "123456789012",
            "messageId": sent["message_id"],
            "destination": [recipient],
            "tags": {name: [value] for name, value in sent["tags"].items()},
        }
        detail: dict[str, Any]
        if kind == "Delivery":
            detail = {"delivery": {"recipients": [recipient], "smtpResponse": "250 2.6.0 Message received"}}
        elif kind == "Bounce":
            detail = {
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "bouncedRecipients": [
                        {
                            "emailAddress": recipient,
                            "status": "5.1.1",
                            "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                        }
                    ],
                }
            }
        else:
            detail = {
                "complaint": {
                    "complainedRecipients": [{"emailAddress": recipient}],
                    "complaintFeedbackType": "abuse",
                }
            }
        return {"eventType": kind, "mail": mail, **detail}

    def notification(self, record: dict[str, Any], version: str = "1", **changes: str) -> dict[str, str]:
        fields = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": TOPIC,
            "Subject": "Amazon SES Email Event Notification",
            "Message": json.dumps(record),
            "Timestamp": sns_time(),
            "SigningCertURL": self.cert_url,
            "UnsubscribeURL": f"{self.url}/?Action=Unsubscribe&SubscriptionArn={TOPIC}:x",
            **changes,
        }
        return sns_sign(fields, version)

    def confirmation(self, kind: str = "SubscriptionConfirmation") -> dict[str, str]:
        token = secrets.token_hex(64)
        fields = {
            "Type": kind,
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": TOPIC,
            "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
            "SubscribeURL": f"{self.url}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}",
            "Timestamp": sns_time(),
            "SigningCertURL": self.cert_url,
        }
        return sns_sign(fields)


def make_config(vendor: FakeVendor, **extra: Any) -> SesConfig:
    values: dict[str, Any] = {
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "endpoint": vendor.url,
        "configuration_set": "comms-events",
        "timeout_seconds": 1.5,
        "sns_topic_arn": TOPIC,
        "sns_cert_host_suffix": "127.0.0.1",
        "sns_allow_http": True,
    }
    return SesConfig(**{**values, **extra})


def body_of(fields: dict[str, str]) -> bytes:
    return json.dumps(fields).encode()


class TestSesContract(ProviderContract):
    provider_name = "ses"
    channel = "email"

    def make_vendor(self) -> FakeVendor:
        return SesVendor()

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        return SesProvider.from_config(make_config(vendor), context)

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        assert isinstance(provider, SesProvider)
        cert_url = provider.endpoint + CERT_PATH
        # What prepare_callback leaves behind (it is awaited before verify_callback; its fetch is
        # tested below): the certificate, cached.
        sns.remember(cert_url, SNS_CERT)
        mail = {
            "messageId": provider_message_id,
            "destination": [message.to],
            "tags": {"comms_id": [message.id]},
        }
        if delivered:
            record: dict[str, Any] = {
                "eventType": "Delivery",
                "mail": mail,
                "delivery": {"recipients": [message.to]},
            }
        else:
            bounced = [
                {"emailAddress": message.to, "status": "5.1.1", "diagnosticCode": "smtp; 550 user unknown"}
            ]
            record = {
                "eventType": "Bounce",
                "mail": mail,
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "bouncedRecipients": bounced,
                },
            }
        fields = sns_sign(
            {
                "Type": "Notification",
                "MessageId": f"sns-{provider_message_id}-{'d' if delivered else 'b'}",
                "TopicArn": TOPIC,
                "Message": json.dumps(record),
                "Timestamp": sns_time(),
                "SigningCertURL": cert_url,
            }
        )
        return Callback(
            sns_headers(fields), body_of(fields), "https://comms.test/webhooks/ses/acc_test/status"
        )


# ---- vendor-specific -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_certificates() -> None:
    sns.clear_cache()


@pytest.fixture
async def vendor() -> AsyncIterator[SesVendor]:
    async with SesVendor() as server:
        yield server


@pytest.fixture
async def provider(vendor: SesVendor) -> AsyncIterator[SesProvider]:
    async with aiohttp.ClientSession() as http:
        yield SesProvider(make_config(vendor), http)


def mail(i: int, **changes: Any) -> OutboundMessage:
    url = f"https://comms.test/u/tok{i:04d}"
    base = OutboundMessage(
        id=f"log_{i:032x}",
        tenant_id="ten_test",
        channel="email",
        category="marketing",
        to=f"user{i}@example.com",
        text=f"Hello {i}\n\n--\nUnsubscribe: {url}",
        subject="Winter sale",
        sender="news@acme.example",
        sender_name="Äcme",
        headers=(
            ("Auto-Submitted", "auto-generated"),
            ("List-Unsubscribe", f"<{url}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
        variables={"name": f"user{i}", "code": f"{100000 + i}"},
    )
    return dataclasses.replace(base, **changes)


async def test_raw_mime_carries_our_headers_message_id_and_tags(
    vendor: SesVendor, provider: SesProvider
) -> None:
    messages = [mail(i) for i in range(3)]
    results = await provider.send(messages)
    assert (
        all(r.outcome is Outcome.SENT for r in results)
        and vendor.problems == []
        and vendor.bad_signatures == 0
    )
    for m, result in zip(messages, results, strict=True):
        sent = vendor.sent[m.to]
        assert result.provider_message_id == sent["message_id"]
        assert sent["tags"] == {"comms_id": m.id, "comms_tenant": "ten_test"}
        parsed = sent["parsed"]
        assert parsed["Message-ID"] == f"<{m.id}@acme.example>"
        assert parsed["List-Unsubscribe"] == dict(m.headers)["List-Unsubscribe"]
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert str(parsed["From"]) == "Äcme <news@acme.example>"
        assert parsed.get_content().replace("\r\n", "\n").rstrip("\n") == m.text


async def test_a_stored_template_goes_as_send_bulk_email_in_fifties(
    vendor: SesVendor, provider: SesProvider
) -> None:
    template = {"ses": {"template_name": "welcome"}, "aliyun": {"template_code": "SMS_1"}}
    messages = [mail(i, provider_template=template) for i in range(60)]
    vendor.refused_addresses.add("user7@example.com")
    results = await provider.send(messages)
    assert sorted(vendor.bulk_calls) == [10, 50] and vendor.problems == []
    assert [r.outcome for r in results].count(Outcome.SENT) == 59
    assert results[7].outcome is Outcome.FAILED and "MESSAGE_REJECTED" in (results[7].error or "")
    for i, m in enumerate(messages[:7]):
        sent = vendor.sent[m.to]
        assert sent["rendered"]["subject"] == f"Welcome, user{i}"
        assert sent["rendered"]["text"] == (
            f"Hi user{i}, your code is {100000 + i}.\nUnsubscribe: https://comms.test/u/tok{i:04d}"
        )
        assert sent["headers"]["List-Unsubscribe"] == f"<https://comms.test/u/tok{i:04d}>"
        assert sent["tags"] == {"comms_id": m.id, "comms_tenant": "ten_test"}
        assert str(make_header(decode_header(sent["from"]))) == "Äcme <news@acme.example>"


async def test_a_200_that_is_not_ses_answer_is_unknown(vendor: SesVendor, provider: SesProvider) -> None:
    """A 200 without a MessageId (a proxy's or a captive portal's page) says nothing of the mail:
    UNKNOWN (reconciled or sent once more, flagged), never SENT."""
    vendor.portal_page = True
    results = await provider.send([mail(0)])
    assert [r.outcome for r in results] == [Outcome.UNKNOWN]
    assert "without a MessageId" in (results[0].error or "")


async def test_bulk_results_that_do_not_match_the_entries_are_unknown(
    vendor: SesVendor, provider: SesProvider
) -> None:
    """SES answers one result per entry, in order, naming no recipient: one short, no result can
    be matched to its message (a vendor id on the wrong one would take its receipts)."""
    vendor.drop_first_result = True
    messages = [mail(i, provider_template={"ses": {"template_name": "welcome"}}) for i in range(3)]
    results = await provider.send(messages)
    assert [r.outcome for r in results] == [Outcome.UNKNOWN] * 3
    assert all(r.provider_message_id is None for r in results)
    assert "2 results for 3 entries" in (results[0].error or "")


@pytest.mark.parametrize(
    ("status", "kind"), [("ACCOUNT_SUSPENDED", "permanent"), ("ACCOUNT_THROTTLED", "transient")]
)
async def test_bulk_entries_all_refused_for_the_account_raise(
    vendor: SesVendor, provider: SesProvider, status: str, kind: str
) -> None:
    vendor.bulk_status = status
    messages = [mail(i, provider_template={"ses": {"template_name": "welcome"}}) for i in range(3)]
    error = PermanentProviderError if kind == "permanent" else TransientProviderError
    with pytest.raises(error, match=status):
        await provider.send(messages)
    assert not vendor.delivered


ERRORS = json.loads((FIXTURES / "ses" / "errors.json").read_text())["answers"]


@pytest.mark.parametrize("answer", ERRORS, ids=lambda a: a["code"])
async def test_documented_error_answers(
    vendor: SesVendor, provider: SesProvider, answer: dict[str, Any]
) -> None:
    vendor.forced.append((answer["status"], answer["code"], answer["message"]))
    messages = [mail(0), mail(1)]
    if answer["expect"] in ("transient", "permanent"):
        error = TransientProviderError if answer["expect"] == "transient" else PermanentProviderError
        with pytest.raises(error) as raised:
            await provider.send(messages)
        assert answer["code"] in raised.value.message and answer["message"] in raised.value.message
        assert vendor.requests == 1 and not vendor.delivered  # the first call went alone
        return
    results = await provider.send(messages)
    assert results[0].outcome is Outcome.FAILED and answer["message"] in (results[0].error or "")
    assert results[1].outcome is Outcome.SENT  # the error was about the first message only


async def test_a_wrong_secret_is_refused_by_the_signature_check(vendor: SesVendor) -> None:
    async with aiohttp.ClientSession() as http:
        wrong = SesProvider(make_config(vendor, secret_access_key="not-the-secret"), http)
        with pytest.raises(PermanentProviderError, match="SignatureDoesNotMatch"):
            await wrong.send([mail(0)])
    assert vendor.bad_signatures == 1 and not vendor.delivered


async def test_later_calls_refused_as_a_whole_retry_only_their_messages(
    vendor: SesVendor, provider: SesProvider
) -> None:
    vendor.fail_after = 1
    results = await provider.send([mail(i) for i in range(4)])
    assert results[0].outcome is Outcome.SENT
    assert [r.outcome for r in results[1:]] == [Outcome.RETRY] * 3
    assert all("TooManyRequestsException" in (r.error or "") for r in results[1:])


async def test_an_unbuildable_message_fails_alone(vendor: SesVendor, provider: SesProvider) -> None:
    results = await provider.send([mail(0, headers=(("X-Bad", "a\r\nBcc: x@example.com"),)), mail(1)])
    assert results[0].outcome is Outcome.FAILED and "not sendable" in (results[0].error or "")
    assert results[1].outcome is Outcome.SENT and dict(vendor.delivered) == {"user1@example.com": 1}


async def test_a_sender_address_ses_cannot_carry_fails_alone_in_a_templated_batch(
    vendor: SesVendor, provider: SesProvider
) -> None:
    template = {"ses": {"template_name": "welcome"}}
    messages = [
        mail(0, provider_template=template, sender="nöws@acme.example"),
        mail(1, provider_template=template),
    ]
    results = await provider.send(messages)
    assert results[0].outcome is Outcome.FAILED and "ASCII" in (results[0].error or "")
    assert results[1].outcome is Outcome.SENT and dict(vendor.delivered) == {"user1@example.com": 1}


# ---- SNS -------------------------------------------------------------------------------------------


async def test_the_certificate_is_fetched_before_verification_and_then_cached(
    vendor: SesVendor, provider: SesProvider
) -> None:
    await provider.send([mail(0)])
    fields = vendor.notification(vendor.event("user0@example.com", "Delivery"))
    headers, body = sns_headers(fields), body_of(fields)
    assert not provider.verify_callback(headers, body, "")  # nothing fetched yet: refused, not fetched
    assert vendor.cert_fetches == 0
    callback_only = SesProvider(make_config(vendor), None)  # as the callback endpoint builds it
    await callback_only.prepare_callback(headers, body)
    assert callback_only.verify_callback(headers, body, "") and vendor.cert_fetches == 1
    for version in ("1", "2"):
        again = vendor.notification(vendor.event("user0@example.com", "Delivery"), version=version)
        await callback_only.prepare_callback(sns_headers(again), body_of(again))
        assert callback_only.verify_callback(sns_headers(again), body_of(again), "")
    assert vendor.cert_fetches == 1
    [event] = callback_only.parse_receipts(body)
    assert (event.status, event.message_id) == ("delivered", "log_" + "0" * 32)
    assert (
        event.event_key == f"{fields['MessageId']}:0"
        and event.provider_message_id == vendor.sent["user0@example.com"]["message_id"]
    )


async def test_forged_replayed_and_foreign_messages_are_refused(
    vendor: SesVendor, provider: SesProvider
) -> None:
    await provider.send([mail(0)])
    record = vendor.event("user0@example.com", "Bounce")
    good = vendor.notification(record)
    await provider.prepare_callback(sns_headers(good), body_of(good))
    assert provider.verify_callback(sns_headers(good), body_of(good), "")
    forged = {**good, "Message": json.dumps({**record, "eventType": "Delivery"})}  # still valid JSON
    old = vendor.notification(record, Timestamp=sns_time(datetime.now(UTC) - timedelta(hours=2)))
    other_topic = vendor.notification(record, TopicArn="arn:aws:sns:us-east-1:123456789012:someone-else")
    other_key, _ = _certificate()
    wrong_key = sns_sign(
        {k: v for k, v in good.items() if k not in ("Signature", "SignatureVersion")}, key=other_key
    )
    elsewhere = vendor.notification(
        record, SigningCertURL="http://evil.example/SimpleNotificationService-x.pem"
    )
    for fields in (forged, old, other_topic, wrong_key, elsewhere):
        await provider.prepare_callback(sns_headers(fields), body_of(fields))
        assert not provider.verify_callback(sns_headers(fields), body_of(fields), ""), fields
    mismatched_header = {**sns_headers(good), "x-amz-sns-topic-arn": "arn:aws:sns:us-east-1:123456789012:x"}
    assert not provider.verify_callback(mismatched_header, body_of(good), "")
    assert vendor.cert_fetches == 1  # nothing was fetched for the foreign topic or host
    strict = SesProvider(make_config(vendor, sns_allow_http=False), None)  # http certificate URLs: no
    assert not strict.verify_callback(sns_headers(good), body_of(good), "")
    no_topic = SesProvider(make_config(vendor, sns_topic_arn=None), None)
    assert not no_topic.verify_callback(sns_headers(good), body_of(good), "")


async def test_a_subscription_confirmation_visits_the_subscribe_url(vendor: SesVendor) -> None:
    provider = SesProvider(make_config(vendor), None)
    fields = vendor.confirmation()
    headers, body = sns_headers(fields), body_of(fields)
    await provider.prepare_callback(headers, body)
    assert provider.verify_callback(headers, body, "")
    assert await provider.handle_control(headers, body) is True
    assert vendor.confirmed == [fields["Token"]]
    goodbye = vendor.confirmation("UnsubscribeConfirmation")
    assert provider.verify_callback(sns_headers(goodbye), body_of(goodbye), "")
    assert await provider.handle_control(sns_headers(goodbye), body_of(goodbye)) is True
    assert vendor.confirmed == [fields["Token"]]  # an unsubscribe confirmation is not confirmed again
    tampered = {**fields, "SubscribeURL": "http://127.0.0.1:1/?Action=ConfirmSubscription"}
    assert not provider.verify_callback(sns_headers(tampered), body_of(tampered), "")
    notification = vendor.notification({"eventType": "Send", "mail": {}})
    assert await provider.handle_control(sns_headers(notification), body_of(notification)) is False


SNS_SAMPLES = json.loads((FIXTURES / "ses" / "sns.json").read_text())


def test_documented_sns_envelopes_parse_and_canonicalise() -> None:
    for name in ("notification", "subscription_confirmation", "unsubscribe_confirmation"):
        message = sns.parse(json.dumps(SNS_SAMPLES[name]).encode())
        assert message.type == SNS_SAMPLES[name]["Type"]
    notification = sns.parse(json.dumps(SNS_SAMPLES["notification"]).encode())
    sample = SNS_SAMPLES["notification"]
    assert notification.string_to_sign().decode() == (
        f"Message\n{sample['Message']}\nMessageId\n{sample['MessageId']}\nSubject\n{sample['Subject']}\n"
        f"Timestamp\n{sample['Timestamp']}\nTopicArn\n{sample['TopicArn']}\nType\nNotification\n"
    )
    with pytest.raises(sns.SnsError):
        sns.parse(b'{"Type": "Notification"}')


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", True),
        ("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem", False),  # not the topic's
        ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", False),
        ("https://sns.s3.amazonaws.com/cert.pem", False),  # anyone's bucket
        ("https://mybucket.s3.amazonaws.com/sns.us-east-1.amazonaws.com.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/cert.pem", False),
        ("https://user@sns.us-east-1.amazonaws.com/cert.pem", False),
        ("ftp://sns.us-east-1.amazonaws.com/cert.pem", False),
    ],
)
def test_certificate_hosts(url: str, allowed: bool) -> None:
    assert sns.allowed_url(url, ".amazonaws.com", False, "us-east-1") is allowed


EVENTS = json.loads((FIXTURES / "ses" / "events.json").read_text())["events"]


@pytest.mark.parametrize("sample", EVENTS, ids=lambda e: e["name"])
def test_documented_ses_events_map_to_statuses(sample: dict[str, Any]) -> None:
    events = events_of("sns-1", sample["record"])
    got = [{"status": e.status, "bounce": e.bounce, "message_id": e.message_id} for e in events]
    assert got == sample["expect"]
    assert [e.event_key for e in events] == [f"sns-1:{i}" for i in range(len(events))]
    assert all(e.error for e in events if e.status == "undelivered")
    assert all(e.provider_message_id == sample["record"]["mail"]["messageId"] for e in events)


# ---- through the API -------------------------------------------------------------------------------


@pytest.fixture
async def live_vendor() -> AsyncIterator[SesVendor]:
    async with SesVendor() as server:
        yield server


async def test_bulk_through_ses_then_sns_receipts_bounce_complain_and_deliver(
    live_service: Service, live_tenant: TenantKeys, live_vendor: SesVendor
) -> None:
    config = make_config(live_vendor, timeout_seconds=5)
    created = await live_service.client.post(
        "/communication/providers",
        json={"channel": "email", "provider": "ses", "name": "ses", "config": config.model_dump(mode="json")},
        headers=live_tenant.headers(),
    )
    assert created.status_code == 201, created.text
    account = created.json()["data"]
    assert "secret_access_key" not in account["config"] and account["secret_fields_set"] == [
        "secret_access_key"
    ]
    path = urlsplit(account["callback_urls"]["status"]).path

    async def post(fields: dict[str, str]) -> int:
        # The endpoint fetches the certificate itself (prepare_callback, with no HTTP pool).
        answer = await live_service.client.post(path, content=body_of(fields), headers=sns_headers(fields))
        return answer.status_code

    confirmation = live_vendor.confirmation()
    assert await post(confirmation) == 200 and live_vendor.confirmed == [confirmation["Token"]]
    assert live_vendor.cert_fetches == 1

    recipients = ["gone@example.com", "fine@example.com", "angry@example.com"]
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "email",
            "category": "transactional",
            "subject": "Your receipt",
            "content": "Thanks for your order",
            "recipients": recipients,
        },
        headers=live_tenant.headers(),
    )
    assert answer.status_code in (200, 201, 202), answer.text
    batch = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 3}

    await wait_until(sent)
    assert live_vendor.problems == [] and live_vendor.bad_signatures == 0
    assert {live_vendor.sent[r]["tags"]["comms_id"] for r in recipients} == {
        i["id"] for i in answer.json()["items"]
    }

    bounce = live_vendor.notification(live_vendor.event("gone@example.com", "Bounce"))
    for fields in (
        bounce,
        live_vendor.notification(live_vendor.event("fine@example.com", "Delivery")),
        live_vendor.notification(live_vendor.event("angry@example.com", "Delivery"), version="2"),
        live_vendor.notification(live_vendor.event("angry@example.com", "Complaint")),
        bounce,  # SNS delivers at least once
    ):
        assert await post(fields) == 200
    assert await statuses(live_service, batch) == {"undelivered": 1, "delivered": 2}
    replayed = live_vendor.notification(
        live_vendor.event("fine@example.com", "Bounce"),
        Timestamp=sns_time(datetime.now(UTC) - timedelta(hours=2)),
    )
    assert await post(replayed) == 401
    foreign = live_vendor.notification(
        live_vendor.event("fine@example.com", "Bounce"), TopicArn=TOPIC + "-other"
    )
    assert await post(foreign) == 401
    assert await statuses(live_service, batch) == {"undelivered": 1, "delivered": 2}
    listed = await live_service.client.get("/communication/suppressions", headers=live_tenant.headers())
    assert listed.status_code == 200, listed.text
    assert {item["reason"] for item in listed.json()["items"]} == {"hard_bounce", "complaint"}
    assert listed.json()["total"] == 2
    assert live_vendor.cert_fetches == 1  # cached across callbacks (one provider instance each)
