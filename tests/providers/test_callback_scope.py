"""Which accounts share their callbacks: two comms accounts of one vendor account (two API keys of
one SendGrid account, one SNS topic, one Tencent SdkAppId, one Aliyun AccessKey, one gateway) have
the same scope; vendors that take a callback URL with each message have none."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from comms.providers.base import ProviderContext
from comms.providers.registry import PROVIDERS

CONTEXT = ProviderContext(
    http=None, outbox_dir=Path("/nonexistent"), status_url="https://c/s", inbound_url="https://c/i"
)
TOPIC = "arn:aws:sns:eu-west-1:123456789012:"


def verification_key() -> str:
    """A Signed Event Webhook verification key, as SendGrid shows it (base64 DER, P-256)."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


KEY_ONE, KEY_TWO = verification_key(), verification_key()
KEY_ONE_PEM = (  # the same key as PEM, as a tenant may paste it
    "-----BEGIN PUBLIC KEY-----\n"
    + "\n".join(KEY_ONE[i : i + 64] for i in range(0, len(KEY_ONE), 64))
    + "\n-----END PUBLIC KEY-----\n"
)
SES = {"region": "eu-west-1", "access_key_id": "A" * 16, "secret_access_key": "x"}
TENCENT = {"secret_id": "AKIDone", "secret_key": "x", "sdk_app_id": "1400006666", "callback_token": "t" * 32}

ALIYUN = {
    "access_key_id": "LTAI5tone",
    "access_key_secret": "x",
    "sign_name": "Acme",
    "callback_token": "a" * 32,
}

# provider -> (config, changes that make it another vendor account, changes that do not). Aliyun
# and Tencent sign no callback (the URL's token proves it): accounts share only with one token.
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = {
    "webhook": ({"url": "https://g.example/send", "secret": "s" * 16},
                [{"secret": "t" * 16}, {"url": "https://h.example/send"}], {"url": "https://G.example/other"}),
    "sendgrid": ({"api_key": "SG.one", "webhook_public_key": KEY_ONE}, [{"webhook_public_key": KEY_TWO}],
                 {"api_key": "SG.two", "webhook_public_key": KEY_ONE_PEM}),
    "ses": ({**SES, "sns_topic_arn": TOPIC + "a"}, [{"sns_topic_arn": TOPIC + "b"}],
            {"access_key_id": "B" * 16}),
    "aliyun": (ALIYUN, [{"access_key_id": "LTAI5ttwo"}, {"callback_token": "b" * 32}],
               {"sign_name": "Other"}),
    "tencent": (TENCENT, [{"sdk_app_id": "1400007777"}, {"callback_token": "u" * 32}],
                {"secret_id": "AKIDtwo"}),
}  # fmt: skip


def build(name: str, config: dict[str, Any]) -> Any:
    cls = PROVIDERS[name]
    return cls.from_config(cls.Config.model_validate(config), CONTEXT)


@pytest.mark.parametrize("name", sorted(CASES))
def test_accounts_of_one_vendor_account_share_their_callbacks(name: str) -> None:
    base, other_accounts, same_account = CASES[name]
    scope = build(name, base).callback_scope()
    assert scope is not None
    assert build(name, {**base, **same_account}).callback_scope() == scope
    for other in other_accounts:
        assert build(name, {**base, **other}).callback_scope() != scope, other


def test_vendors_that_take_a_callback_url_with_each_message_share_none() -> None:
    twilio = {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32, "from_number": "+15005550006"}
    kannel = {
        "sendsms_url": "http://127.0.0.1:13013/cgi-bin/sendsms",
        "username": "u",
        "password": "p",
        "callback_token": "t" * 32,
    }
    assert build("twilio", twilio).callback_scope() is None
    assert build("kannel", kannel).callback_scope() is None
    assert build("sendgrid", {"api_key": "SG.one"}).callback_scope() is None  # no signed webhook: none at all
