"""Wireless-carrier mail domains (COMPLIANCE.md C10; 47 CFR 64.3100 under CAN-SPAM section 14).

Commercial email to an address at a domain on the FCC's Wireless Domain Names list reaches a
phone, and needs the recipient's express prior authorization: for comms, a marketing email there
needs an ``opted_in`` consent with basis ``opt_in`` or ``written``, whatever the tenant's region.

Built in: the email-to-SMS/MMS gateway domains of the major US carriers, as they appear on that
list. The FCC's list is longer and changes; an operator points ``COMMS_FCC_WIRELESS_DOMAINS_FILE``
at a copy of it (one domain per line; ``#`` comments) and those domains count too. A domain counts
with its sub-domains (``x.vtext.com``), never its parents (``att.net`` is no gateway).
"""

from __future__ import annotations

from pathlib import Path

BUILT_IN = frozenset(
    {
        "vtext.com",  # Verizon
        "vzwpix.com",
        "mypixmessages.com",
        "txt.att.net",  # AT&T
        "mms.att.net",
        "cingularme.com",
        "mobile.mycingular.com",
        "tmomail.net",  # T-Mobile
        "messaging.sprintpcs.com",  # Sprint
        "pm.sprint.com",
        "messaging.nextel.com",
        "page.nextel.com",
        "mymetropcs.com",  # MetroPCS
        "myboostmobile.com",  # Boost
        "sms.myboostmobile.com",
        "vmobl.com",  # Virgin Mobile
        "vmpix.com",
        "email.uscc.net",  # US Cellular
        "mms.uscc.net",
        "sms.cricketwireless.net",  # Cricket
        "mms.cricketwireless.net",
        "msg.fi.google.com",  # Google Fi
        "text.republicwireless.com",
        "message.ting.com",
        "message.alltel.com",  # Alltel
        "sms.alltelwireless.com",
        "mms.alltelwireless.com",
        "mmst5.tracfone.com",
        "cspire1.com",
        "qwestmp.com",
    }
)

_listed: frozenset[str] = BUILT_IN


def use_list_file(path: Path | None) -> int:
    """Add the domains of the operator's copy of the FCC list (None: the built-in ones only).
    Returns how many domains count now. Raises OSError or ValueError naming what is wrong."""
    global _listed
    if path is None:
        _listed = BUILT_IN
        return len(_listed)
    extra = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        domain = line.split("#", 1)[0].strip().lower().rstrip(".")
        if not domain:
            continue
        if " " in domain or "." not in domain or "@" in domain:
            raise ValueError(f"{path}:{number}: not a domain name: {line.strip()!r}")
        extra.add(domain)
    _listed = BUILT_IN | extra
    return len(_listed)


def is_wireless_domain(domain: str) -> bool:
    """Whether mail to ``domain`` (lower case) goes to a wireless device: it or a parent listed."""
    labels = domain.rstrip(".").split(".")
    return any(".".join(labels[i:]) in _listed for i in range(len(labels) - 1))


def is_wireless_address(address: str) -> bool:
    return is_wireless_domain(address.rpartition("@")[2].lower())


__all__ = ["BUILT_IN", "is_wireless_address", "is_wireless_domain", "use_list_file"]
