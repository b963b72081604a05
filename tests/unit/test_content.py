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


def test_a_marketing_sms_ends_with_its_opt_out_whatever_the_tenant_set() -> None:
    """The tenant's own opt-out text replaces the default, except on a Chinese number, where it must
    say 退订 (MIIT Order 31); it is taken as present only at the end of the text."""

    def marketing(text: str, region: str, **settings: object) -> str:
        return MessageDecorator.sms_text(
            text, category="marketing", region=region, settings=TenantSettings.model_validate(settings)
        )

    assert marketing("Sale", "US") == "Sale Reply STOP to opt out"
    assert marketing("Sale", "US", sms_opt_out_text="Text STOP to end") == "Sale Text STOP to end"
    custom = {"sms_opt_out_text": "Reply STOP to opt out", "sms_signature": "ACME"}
    assert marketing("Sale", "CN", **custom) == "\u3010ACME\u3011Sale\u56deT\u9000\u8ba2"
    assert marketing("Sale", "CN", sms_opt_out_text="\u56deTD\u9000\u8ba2") == "Sale\u56deTD\u9000\u8ba2"
    # "Thanks" inside the message is not the opt-out at its end
    assert marketing("Thanks for shopping", "US", sms_opt_out_text="Thanks") == "Thanks for shopping Thanks"
    assert marketing("Sale. Reply STOP to opt out", "US") == "Sale. Reply STOP to opt out"
    transactional = MessageDecorator.sms_text(
        "Code 1", category="transactional", region="US", settings=TenantSettings()
    )
    assert transactional == "Code 1"
