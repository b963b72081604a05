"""What compliance adds to an email: the List-* headers and the footer (compliance/content.py)."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

from comms.compliance.content import MessageDecorator, with_html_footer
from comms.compliance.settings import TenantSettings
from comms.compliance.unsubscribe import UnsubscribeSigner


def test_the_html_footer_goes_before_the_closing_body_tag_whatever_the_text() -> None:
    # "İ".lower() is two characters: an index found in the lower-cased text pointed into the tag.
    page = "<html><body><h1>İNDİRİM İSTANBUL İZMİR</h1></body></html>"
    assert with_html_footer(page, "<hr>F") == "<html><body><h1>İNDİRİM İSTANBUL İZMİR</h1><hr>F</body></html>"
    assert with_html_footer("<BODY>a</BODY >", "F") == "<BODY>aF</BODY >"
    assert with_html_footer("<p>no body tag</p>", "F") == "<p>no body tag</p>F"
    assert with_html_footer("<body>x</body><p>late</p></body>", "F") == "<body>x</body><p>late</p>F</body>"


def test_the_list_id_stays_a_plain_structured_header_for_any_tenant_name() -> None:
    decorator = MessageDecorator("https://comms.example", UnsubscribeSigner("k" * 32))
    for name, phrase in (
        ("Café Münster", '"Cafe Munster"'),
        ("阿克米", '"comms"'),
        ("Acme  Inc.", '"Acme Inc."'),
    ):
        extras = decorator.email_extras(
            log_id="log_1",
            category="marketing",
            tenant_id="tnt_1",
            tenant_name=name,
            settings=TenantSettings(),
        )
        value = dict(extras.headers)["List-Id"]
        assert value == f"{phrase} <tnt-1.marketing.comms>" and value.isascii()
        parsed = BytesParser(policy=policy.default).parsebytes(f"List-Id: {value}\r\n\r\n".encode())
        assert "<tnt-1.marketing.comms>" in str(parsed["List-Id"])
