"""Replies to SMS: opt-out, help and opt-in keywords (TCPA, CTIA, MIIT Order 31, Aliyun).

* STOP, END, CANCEL, UNSUBSCRIBE, QUIT, OPT OUT, REVOKE, STOPALL (US/CTIA and FCC 24-24), and for
  China T, TD, N, R (Aliyun's 回T退订 and Huawei's 拒收请回复R), and 退订: suppress marketing SMS
  to that number for the tenant, at once, with ONE confirmation; a second STOP sends nothing.
* HELP, INFO: brand, support contact (the first email identity, else the postal address),
  frequency, "Msg&data rates may apply" and how to stop.
* START, UNSTOP, YES: lift an SMS-keyword opt-out (never a bounce or complaint) and confirm.

Matching is case-insensitive on the trimmed message after Unicode compatibility folding (NFKC:
the full-width letters a Chinese input method types are read as STOP or TD), with trailing full
stops and exclamation marks of either width (and the ideographic full stop) dropped and hyphens
read as spaces (OPT-OUT). HELP and START must be the whole message. An opt-out need not be: the
FCC's rule (47 CFR 64.1200(a)(10), in force since April 2025) takes consent back by "any reasonable
means", so a reply that starts with one of the opt-out words ("Stop please", "UNSUBSCRIBE ME",
"cancel my subscription") or says so in other common words ("please stop texting me", "remove me
from your list", "don't text me", 我要退订) opts out too. When in doubt the reply is taken for an
opt-out: it costs a marketing recipient, where a missed one costs a text sent against the law. The
single letters of the Chinese replies (T, TD, N, R) count alone only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance import service
from comms.compliance.settings import load_settings
from comms.models import Tenant


class Keyword(StrEnum):
    STOP = "stop"
    HELP = "help"
    START = "start"


_STOP = frozenset({"STOP", "END", "CANCEL", "UNSUBSCRIBE", "QUIT", "OPT OUT", "OPTOUT", "REVOKE", "STOPALL"})
_STOP_CN = frozenset({"T", "TD", "N", "R", "退订"})
_HELP = frozenset({"HELP", "INFO"})
_START = frozenset({"START", "UNSTOP", "YES"})
_SPACES = re.compile(r"\s+")
# A reply that starts with one of these words opts out, whatever follows ("STOP ALL", "Stop please").
_STOP_FIRST = frozenset({"STOP", "END", "CANCEL", "UNSUBSCRIBE", "QUIT", "REVOKE", "STOPALL", "OPTOUT"})
# Anywhere in a reply: the common ways of saying so in other words.
_STOP_PHRASES = re.compile(
    r"\b(?:OPT ME OUT|OPT OUT|OPTOUT|UNSUBSCRIBE|STOP (?:TEXTING|MESSAGING|SENDING|CONTACTING|CALLING|ALL)"
    r"|REMOVE ME|TAKE ME OFF|DO NOT (?:TEXT|MESSAGE|CONTACT|SEND)|DONT (?:TEXT|MESSAGE|CONTACT|SEND)"
    r"|NO MORE (?:TEXTS|MESSAGES|SMS))\b"
)
_STOP_CN_ANYWHERE = ("退订", "拒收")
_FIRST_WORD = re.compile(r"[A-Z]+")


def classify(text: str) -> Keyword | None:
    # NFKC folds the full-width exclamation mark to "!", but not the ideographic full stop.
    folded = unicodedata.normalize("NFKC", text).replace("-", " ")
    word = _SPACES.sub(" ", folded.strip().strip(".!\u3002").strip().upper())
    if word in _STOP or word in _STOP_CN:
        return Keyword.STOP
    if word in _HELP:
        return Keyword.HELP
    if word in _START:
        return Keyword.START
    return Keyword.STOP if _says_stop(word) else None


def _says_stop(upper: str) -> bool:
    """An opt-out in more words than the keyword (see the module's docstring)."""
    first = _FIRST_WORD.match(upper)
    if first is not None and first.group() in _STOP_FIRST:
        return True
    plain = upper.replace("'", "").replace("\u2019", "")  # DON'T (either apostrophe) -> DONT
    return _STOP_PHRASES.search(plain) is not None or any(w in upper for w in _STOP_CN_ANYWHERE)


@dataclass(frozen=True, slots=True)
class InboundResult:
    keyword: Keyword | None
    reply: str | None  # the one message to send back, if any
    changed: bool


def _brand(tenant: Tenant) -> str:
    signature = load_settings(tenant.settings).sms_signature
    return signature or tenant.name


async def handle_inbound_sms(
    session: AsyncSession, tenant: Tenant, from_number: str, text: str
) -> InboundResult:
    """Apply an inbound SMS from ``from_number`` (any format; the tenant's region applies)."""
    keyword = classify(text)
    if keyword is None:
        return InboundResult(None, None, False)
    settings = load_settings(tenant.settings)
    who = service.contact(tenant, "sms", from_number, settings.default_region, field="from")
    brand = _brand(tenant)
    if keyword is Keyword.STOP:
        changed = await service.suppress(session, tenant, who, "stop", "sms_keyword")
        reply = (
            f"{brand}: you are unsubscribed and will receive no more marketing messages. "
            "Reply START to resubscribe."
            if changed
            else None  # at most one confirmation (47 CFR 64.1200(a)(12))
        )
        return InboundResult(keyword, reply, changed)
    if keyword is Keyword.START:
        # Only what a keyword did: a YES or START (common replies to anything) must not lift an
        # unsubscribe link, a recorded objection (GDPR Art. 21), a bounce or a complaint.
        changed = await service.unsuppress(
            session, tenant, who, "sms_keyword", only_reasons=service.LIFTED_BY_KEYWORD
        )
        reply = (
            f"{brand}: you are subscribed again. Reply STOP to opt out, HELP for help." if changed else None
        )
        return InboundResult(keyword, reply, changed)
    reply = (
        f"{brand}: account and marketing messages, frequency varies.{_support(tenant)} "
        "Msg&data rates may apply. Reply STOP to opt out."
    )
    return InboundResult(keyword, reply, False)


def _support(tenant: Tenant) -> str:
    """CTIA wants a support contact in every HELP reply (and opt-in confirmation): the tenant's
    first email identity, else its postal address (an SMS-only tenant may have no email sender);
    with neither, the text says so rather than leaving it out silently."""
    settings = load_settings(tenant.settings)
    postal = " ".join((settings.postal_address or "").split()).rstrip(".")  # one line in an SMS
    support = next(iter(settings.email_senders()), None) or postal
    return f" Support: {support}." if support else " Support contact: not configured."


def opt_in_confirmation(tenant: Tenant) -> str:
    """The one message CTIA's Messaging Principles (5.1.2) want right after an opt-in to recurring
    messages: who, how often, the cost, and how to get help or stop."""
    return (
        f"{_brand(tenant)}: you are subscribed to marketing messages, frequency varies."
        f"{_support(tenant)} Msg&data rates may apply. Reply HELP for help, STOP to opt out."
    )
