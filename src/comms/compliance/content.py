"""What the law and the mailbox providers require IN a message, added at send time.

Email (marketing, and announcement as subscription mail):
  * ``List-Unsubscribe: <https://.../u/TOKEN>`` and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
    (RFC 2369, RFC 8058; Gmail and Yahoo bulk-sender rules), the HTTPS URI first and then, when the
    tenant set ``unsubscribe_mailto_domain``, ``<mailto:unsub+TOKEN@that domain>``; a ``List-Id`` per tenant;
  * a footer with the unsubscribe link and the tenant's postal address (CAN-SPAM 7704(a)(3),(5)),
    and for marketing the tenant's ad disclosure when it has one (7704(a)(5)(A)(i)).
SMS:
  * the tenant's signature as 【签名】 at the start of messages to China (carrier real-name rule);
  * on marketing, an opt-out instruction: "回T退订" to China, "Reply STOP to opt out" elsewhere,
    unless the tenant configured its own or the text already carries it (TCPA/CTIA, MIIT Order 31).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from comms.compliance.settings import TenantSettings
from comms.compliance.unsubscribe import UnsubscribeSigner, mailto_address, unsubscribe_url

SUBSCRIPTION_CATEGORIES = frozenset({"marketing", "announcement"})
DEFAULT_OPT_OUT = {"CN": "回T退订"}
CN_OPT_OUT_WORD = "退订"  # "unsubscribe": what a Chinese marketing SMS's opt-out must say
DEFAULT_OPT_OUT_OTHER = "Reply STOP to opt out"


@dataclass(frozen=True, slots=True)
class EmailExtras:
    headers: tuple[tuple[str, str], ...]
    text_footer: str
    html_footer: str


class MessageDecorator:
    def __init__(self, public_url: str, signer: UnsubscribeSigner) -> None:
        self.public_url = public_url
        self.signer = signer

    def email_extras(
        self, *, log_id: str, category: str, tenant_id: str, tenant_name: str, settings: TenantSettings
    ) -> EmailExtras:
        headers: list[tuple[str, str]] = [("Auto-Submitted", "auto-generated")]
        if category not in SUBSCRIPTION_CATEGORIES:
            return EmailExtras(tuple(headers), "", "")
        url = unsubscribe_url(self.public_url, self.signer.token(log_id))
        uris = f"<{url}>"
        if settings.unsubscribe_mailto_domain:
            mailbox = mailto_address(self.signer.mailto_token(log_id), settings.unsubscribe_mailto_domain)
            uris += f", <mailto:{mailbox}>"
        headers += [
            ("List-Unsubscribe", uris),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("List-Id", f"{_list_label(tenant_name)} <{tenant_id.replace('_', '-')}.{category}.comms>"),
        ]
        lines = []
        if category == "marketing" and settings.ad_disclosure:
            lines.append(settings.ad_disclosure)
        if settings.postal_address:
            lines.append(f"{tenant_name}, {settings.postal_address}")
        lines.append(f"Unsubscribe: {url}")
        text_footer = "\n\n--\n" + "\n".join(lines)
        html_lines = "<br>".join(_escape(line) for line in lines[:-1])
        html_footer = (
            f'<hr><p style="font-size:12px;color:#666">{html_lines}{"<br>" if html_lines else ""}'
            f'<a href="{_escape(url)}">Unsubscribe</a></p>'
        )
        return EmailExtras(tuple(headers), text_footer, html_footer)

    @staticmethod
    def sms_text(text: str, *, category: str, region: str | None, settings: TenantSettings) -> str:
        if region == "CN" and settings.sms_signature:
            signature = f"【{settings.sms_signature}】"
            if not text.startswith(signature):
                text = signature + text
        if category == "marketing":
            opt_out = settings.sms_opt_out_text or (DEFAULT_OPT_OUT.get(region or "", DEFAULT_OPT_OUT_OTHER))
            if region == "CN" and CN_OPT_OUT_WORD not in opt_out:
                # Chinese carriers want the way out in Chinese (MIIT Order 31): a tenant's own
                # English "Reply STOP" does not do there.
                opt_out = DEFAULT_OPT_OUT["CN"]
            # At the end, as the rules put it, and only taken as present when the text ends with
            # it: an opt-out text that also occurs inside the message ("Thanks") must not vanish.
            if not text.rstrip().endswith(opt_out):
                text = f"{text} {opt_out}" if region != "CN" else f"{text}{opt_out}"
        return text


def with_html_footer(html: str, footer: str) -> str:
    """Put the footer before ``</body>`` when there is one, else at the end."""
    if not footer:
        return html
    # Matched on the original text: lower() changes the length of some strings ("İ" becomes two
    # characters), so an index found in html.lower() can point into the middle of a tag.
    closing = list(_BODY_END.finditer(html))
    if not closing:
        return html + footer
    at = closing[-1].start()
    return html[:at] + footer + html[at:]


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def _list_label(name: str) -> str:
    """The List-Id phrase: ASCII only, so the header stays a plain structured field (RFC 2919); a
    non-ASCII phrase would make the whole header an encoded-word that hides the list id."""
    folded = unicodedata.normalize("NFKD", name)  # "Café" -> "Cafe" + a combining accent, dropped below
    cleaned = "".join(ch for ch in folded if ch.isascii() and (ch.isalnum() or ch in " -_."))
    return f'"{" ".join(cleaned.split()) or "comms"}"'


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
