"""Our DKIM signatures, verified by dkimpy (the reference) over messages of every shape the
builder makes, and broken by any change to a signed header or to the body."""

from __future__ import annotations

import base64
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from comms.providers.email.dkim_signing import DkimSigner, relaxed_body, relaxed_header
from comms.providers.email.mime import EmailContent, build_email

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
RECORD = b"v=DKIM1; k=rsa; p=" + base64.b64encode(
    KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)
SIGNER = DkimSigner("acme.example", "s1", PEM)


def verifies(message: bytes) -> bool:
    return bool(dkim.verify(message, dnsfunc=lambda name, timeout=5: RECORD))


def signed_names(message: bytes) -> list[str]:
    header = message.split(b"\r\n\r\n", 1)[0].decode()
    found = re.search(r"h=([^;]+);", re.sub(r"\s+", "", header))
    assert found is not None
    return found.group(1).split(":")


SHAPES = {
    "plain": EmailContent("news@acme.example", "a@example.com", "Hello", "Hi there\n"),
    "long folded subject, display name, unsubscribe headers": EmailContent(
        "news@acme.example",
        "b@example.com",
        "Winter sale: " + "everything must go, " * 8 + "今天特价",
        "Text\n\n\n\n",  # trailing empty lines: simple body canonicalization drops them
        html="<p>Text</p>",
        from_name="ACME Ltd. (Sales)",
        extra_headers=(
            ("List-Unsubscribe", "<https://comms.test/u/abc>, <mailto:unsub+abc@acme.example>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("X-Spacing", "a   b\t\tc  "),
        ),
    ),
    "empty body": EmailContent("news@acme.example", "c@example.com", "Empty", ""),
    "non-ASCII address (SMTPUTF8)": EmailContent("news@acme.example", "josé@example.com", "Olá", "Olá\n"),
    "Chinese body (base64)": EmailContent("news@acme.example", "d@example.com", "通知", "您好" * 200),
}


@pytest.mark.parametrize("name", SHAPES)
def test_dkimpy_verifies_our_signature(name: str) -> None:
    message = SIGNER.sign(build_email(SHAPES[name]))
    assert verifies(message)
    names = signed_names(message)
    assert names[:5] == ["from", "to", "subject", "date", "message-id"]
    headers = message.split(b"\r\n\r\n", 1)[0]
    assert ("list-unsubscribe" in names) == (b"\r\nList-Unsubscribe:" in headers)
    assert all(len(line) <= 78 for line in headers.split(b"\r\n"))


def test_a_changed_header_or_body_breaks_it() -> None:
    message = SIGNER.sign(build_email(SHAPES["long folded subject, display name, unsubscribe headers"]))
    assert verifies(message)
    assert not verifies(message.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"X: y"))
    assert not verifies(message.replace(b"To: b@example.com", b"To: c@example.com"))
    assert not verifies(message.replace(b"<p>Text</p>", b"<p>Texts</p>"))
    # ...but what the relaxed/relaxed canonicalization allows does not: a relay that re-spaces a
    # header, trims the blanks at a line's end or adds empty lines at the end.
    assert verifies(message.replace(b"\r\nTo: b@example.com", b"\r\nTo:   b@example.com  "))
    assert verifies(message + b"\r\n\r\n")
    assert verifies(message.replace(b"<p>Text</p>", b"<p>Text</p>   "))
    assert verifies(message.replace(b"<p>Text</p>", b"<p>Text</p>\t \t"))


def test_canonicalization_rules() -> None:
    assert relaxed_header(b"Subject ", b" A  long\r\n\tsubject\t ") == b"subject:A long subject"
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b"x\r\n\r\n\r\n") == b"x\r\n"
    assert relaxed_body(b"a  b \t\r\n c\t\r\n") == b"a b\r\n c\r\n"


def test_only_rsa_keys() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="RSA"):
        DkimSigner("acme.example", "s1", other.decode())
